"""The trainer actor end to end: StartTraining on the log -> steps -> adapter-only revisions in the
artifact store -> RevisionExported, with actors crashing at random points along the way."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import anyio
import pytest

torch = pytest.importorskip("torch", reason="needs the [train] extra (torch)")

from peft import PeftModel  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from actors.faults import Faults  # noqa: E402
from actors.runtime import Backoff  # noqa: E402
from actors.system import System, running  # noqa: E402
from events.catalog import RegisterPolicy  # noqa: E402
from events.sqlite_log import SqliteLog  # noqa: E402
from events.training import StartTraining, StepCompleted, TrainingStarted  # noqa: E402
from mint.adapters.peft_layout import read_peft  # noqa: E402
from mint.artifacts.keys import embedded_sha256  # noqa: E402
from mint.bases.info import read_base_info  # noqa: E402
from mint.bases.tiny import create_tiny_base  # noqa: E402
from mint.catalog.queries import Catalog  # noqa: E402
from mint.home import Home  # noqa: E402
from replay.audit import history  # noqa: E402
from tests.log_contract import read_all  # noqa: E402

pytestmark = pytest.mark.anyio
FAST = Backoff(first_s=0.001, max_s=0.01)
POLICIES = ["acme/a", "acme/b"]


def _home(tmp_path: Path) -> Home:
    home = Home(tmp_path / "home")
    create_tiny_base(home.base("tiny"), seed=0)
    return home


def _outcome(system: System, run: str) -> str | None:
    catalog = Catalog(system.home.catalog)
    try:
        found = catalog.run(run)
        if found is not None and found.status != "running":
            return found.status
        rejected = catalog.rejections(run)
        return f"rejected: {rejected[0].reason}" if rejected else None
    finally:
        catalog.close()


async def _train(system: System, run: str, steps: int, **config: object) -> None:
    await system.log.append([RegisterPolicy.create(policy=p, base_id="tiny") for p in POLICIES])
    await system.settle()  # the trainer decides against registrations it has seen
    await system.log.append(
        [
            StartTraining.create(
                run=run,
                policies=POLICIES,
                base_id="tiny",
                algo="grpo",
                task="token:the",
                steps=steps,
                config=config,
            )
        ]
    )
    with anyio.fail_after(240):
        await system.until(lambda: _outcome(system, run) is not None)
        await system.settle()
    assert _outcome(system, run) == "finished"


async def test_a_run_exports_adapter_only_revisions_through_crashes(tmp_path: Path) -> None:
    home = _home(tmp_path)
    async with (
        SqliteLog(home.log, partitions=4) as log,
        running(home, log, Faults(rate=0.1, seed=21), FAST) as system,
    ):
        await _train(system, "acme/run-1", steps=6, seed=3)
        stored = await read_all(log)
        steps = Counter((r.policy, r.step) for s in stored if isinstance(r := s.decode(), StepCompleted))
        assert steps == Counter({(p, n): 1 for p in POLICIES for n in range(1, 7)}), (
            "each step once, none lost"
        )
        catalog = Catalog(home.catalog)
        for policy in POLICIES:
            (revision,) = catalog.revisions(policy)
            assert revision.revision == "run-1" and revision.run == "acme/run-1" and revision.parent is None
            assert embedded_sha256(revision.uri) == revision.sha256
            weights = await system.artifacts.read(revision.uri)  # checked against the sha256 in its key
            assert len(weights) == revision.bytes
            assert revision.bytes < 0.2 * sum(
                f.stat().st_size for f in home.base("tiny").glob("*.safetensors")
            )
        recorded = {a.name: len(await history(log, a.name)) for a in system.actors}
        assert recorded["trainer"] > 0, "the trainer was crashed mid-run and resumed"
        assert sum(recorded.values()) == system.supervisor.restarts, "every restart is a fact"


async def test_an_exported_revision_reloads_into_a_fresh_base_with_the_same_logits(tmp_path: Path) -> None:
    home = _home(tmp_path)
    async with SqliteLog(home.log, partitions=2) as log, running(home, log, backoff=FAST) as system:
        await _train(system, "acme/run-2", steps=3, seed=5)
        revision = Catalog(home.catalog).revisions("acme/a")[0]
        adapter_dir = tmp_path / "adapter"
        adapter_dir.mkdir()
        await system.artifacts.get(revision.uri, adapter_dir / "adapter_model.safetensors")
    adapter = read_peft(adapter_dir, read_base_info(home.base("tiny")), expected_sha256=revision.sha256)
    (adapter_dir / "adapter_config.json").write_text(__import__("json").dumps(adapter.config.peft_json()))
    base = AutoModelForCausalLM.from_pretrained(home.base("tiny")).eval()
    ids = torch.tensor([[5, 17, 99, 3, 42, 7]])
    with torch.no_grad():
        plain = base(input_ids=ids).logits
        tuned = PeftModel.from_pretrained(base, adapter_dir).eval()(input_ids=ids).logits
    assert not torch.allclose(plain, tuned), "the adapter changes the base's output"
    # The same tensors, served the trainer's way, give the same logits.
    from mint.lora.multi import MultiLora
    from mint.training.checkpoint import latest

    fresh = AutoModelForCausalLM.from_pretrained(home.base("tiny")).eval()
    multi = MultiLora(fresh, list(adapter.config.target_modules))
    checkpoint_dir = latest(home.run_checkpoints("acme/run-2"))
    assert checkpoint_dir is not None
    from safetensors.torch import load_file

    multi.load(
        "a",
        load_file(str(checkpoint_dir / "acme__a.adapter.safetensors")),
        adapter.config.r,
        adapter.config.alpha,
    )
    with torch.no_grad(), multi.route(["a"]):
        ours = multi.model(input_ids=ids).logits
    torch.testing.assert_close(ours, tuned, rtol=1e-5, atol=1e-5)


async def test_revisions_go_to_s3_when_the_store_is_s3(tmp_path: Path, moto_endpoint: str) -> None:
    from mint.artifacts.s3 import S3ArtifactStore

    home = _home(tmp_path)
    async with (
        S3ArtifactStore.connect(
            "mint-trainer",
            prefix="prod/",
            endpoint_url=moto_endpoint,
            region="us-east-1",
            access_key="t",
            secret_key="t",
        ) as s3,
        SqliteLog(home.log, partitions=2) as log,
        running(home, log, backoff=FAST, artifacts=s3) as system,
    ):
        await s3.client.create_bucket(Bucket="mint-trainer")
        await _train(system, "acme/run-s3", steps=2, seed=1)
        uris = [r.uri for p in POLICIES for r in Catalog(home.catalog).revisions(p)]
        assert sorted(await s3.list("adapters/")) == sorted(uris)
        listed = await s3.client.list_objects_v2(Bucket="mint-trainer", Prefix="prod/adapters/acme/a/run-s3/")
        assert len(listed["Contents"]) == 1


async def test_a_run_that_cannot_go_on_fails_and_the_trainer_goes_on(tmp_path: Path) -> None:
    from actors.trainer import TrainerActor
    from events.training import TrainingFailed
    from mint.artifacts.local import LocalArtifactStore

    home = Home(tmp_path)  # no base installed: the run cannot open it
    started = TrainingStarted.create(
        source="trainer",
        run="acme/run-x",
        policies=["acme/a"],
        base_id="tiny",
        algo="sft",
        task="sft-repeat:yes",
        steps=2,
    )
    trainer = TrainerActor(home, LocalArtifactStore(home.artifacts))
    async with SqliteLog(home.log, partitions=1) as log:
        await log.append([started])
        async with anyio.create_task_group() as tg:
            await tg.start(trainer.run, log)
            with anyio.fail_after(60):
                while not (
                    failures := [
                        r for s in await read_all(log) if isinstance(r := s.decode(), TrainingFailed)
                    ]
                ):
                    await trainer.progress.changed()
            tg.cancel_scope.cancel()
    (failure,) = failures
    assert "tiny" in failure.reason and failure.epoch == 1, "failed under the lease it claimed"


async def test_the_trainer_resumes_only_the_runs_it_decided(tmp_path: Path) -> None:
    """A TrainingStarted no trainer decided (the walkthrough's script writes such runs) is in the
    trainer's state as running, but a restarted trainer does not take it up: it is not its run."""
    home = _home(tmp_path)
    foreign = TrainingStarted.create(
        source="walkthrough",
        run="acme/foreign",
        policies=["acme/a"],
        base_id="tiny",
        algo="sft",
        task="sft-repeat:hi",
        steps=2,
    )
    async with SqliteLog(home.log, partitions=2) as log:
        async with running(home, log, backoff=FAST) as system:
            await log.append([RegisterPolicy.create(policy="acme/a", base_id="tiny"), foreign])
            await system.settle()
        async with running(home, log, backoff=FAST) as system:  # a restart reopens the trainer's state
            own = StartTraining.create(
                run="acme/own", policies=["acme/a"], base_id="tiny", algo="sft", task="sft-repeat:hi", steps=1
            )
            await log.append([own])
            # Runs are trained one after another, in the order they were queued: a resumed foreign
            # run would have run first.
            with anyio.fail_after(120):
                await system.until(lambda: _outcome(system, "acme/own") is not None)
            assert _outcome(system, "acme/own") == "finished"
            assert Catalog(home.catalog).steps("acme/foreign") == []
