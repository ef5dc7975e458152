"""tinker-cookbook 0.6.1, unmodified, against the Tinker API on the tiny base under a hub alias.

deploy/install.sh builds .venv-cookbook (`pip install --no-deps tinker-cookbook==0.6.1` plus its
requirements); tests/tinker_clients/cookbook_recipes.py runs the recipes there as a subprocess
against a server started here on the real system. The only stand-ins are offline ones: the hub
tokenizer the cookbook asks for (`meta-llama/Llama-3.2-1B` → the tiny base's tokenizer, seeded in an
HF cache) and the recipes' datasets. The checkpoint lifecycle (TTL, expiry, deletion, signed
downloads) and base aliases are also checked route by route, without the cookbook.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import anyio
import pytest
from starlette.responses import Response

pytest.importorskip("torch", reason="needs the [train] extra (torch)")

from events.tinker import CheckpointDeleted, CheckpointExpirySet, CheckpointSaved
from events.training import RevisionExported
from mint.bases.aliases import add_aliases
from mint.bases.tiny import create_tiny_base
from mint.home import Home
from mint.tinker import routes
from mint.tinker.auth import Grant
from mint.tinker.checkpoints import CheckpointInfo, TinkerPath
from mint.tinker.endpoint import ANONYMOUS
from mint.tinker.wire import WireError
from tests.log_contract import read_all
from tests.test_tinker_routes import ACME, GLOBEX, _with_path, api_over, request
from tests.test_tinker_sdks import ROOT, tinker_server

pytestmark = pytest.mark.anyio
CLIENT = Path(__file__).parent / "tinker_clients" / "cookbook_recipes.py"
ALIAS = "meta-llama/Llama-3.2-1B"  # in the cookbook's model registry: the role_colon renderer
# Where the cookbook (and the SDK) look for a Llama 3 tokenizer, so gated repos are never needed.
HUB_TOKENIZER = "thinkingmachineslabinc/meta-llama-3-instruct-tokenizer"
TRAINER = Grant("tok-acme", "acme", frozenset({"trainer"}))


def seed_hub_tokenizer(hf_home: Path, base: Path) -> None:
    """The tiny base's tokenizer as the hub's HUB_TOKENIZER in an HF cache (what HF_HUB_OFFLINE reads)."""
    repo = hf_home / "hub" / f"models--{HUB_TOKENIZER.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        (snapshot / name).write_bytes((base / name).read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)


async def run_cookbook(url: str, key: str, workdir: Path, *args: str) -> dict[str, object]:
    python = ROOT / ".venv-cookbook" / "bin" / "python"
    if not python.is_file():
        pytest.fail(f"{python} is missing: deploy/install.sh creates the cookbook's environment")
    environment = {
        "PATH": os.environ["PATH"],
        "HOME": str(workdir),
        "HF_HOME": str(workdir / "hf"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TINKER_TELEMETRY": "0",
        "TINKER_BASE_URL": url,
        "TINKER_API_KEY": key,
    }
    with anyio.fail_after(400):
        done = await anyio.run_process(
            [str(python), str(CLIENT), str(workdir), ALIAS, *args], env=environment, check=False, cwd="/"
        )
    if done.returncode != 0:
        sys.stderr.write(done.stderr.decode()[-8000:])
        pytest.fail(f"the cookbook client failed (exit {done.returncode}); its stderr is above")
    report: dict[str, object] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return report


async def test_cookbook_recipes_run_unmodified(tmp_path: Path) -> None:
    """sl_loop (run, re-run, resumed from its first checkpoint), rl_loop, rolling checkpoints and
    weights.download, in one cookbook process (about 45 s here)."""
    home = Home(tmp_path / "home")
    async with tinker_server(home) as server:
        add_aliases(home.base("tiny"), [ALIAS])
        seed_hub_tokenizer(tmp_path / "work" / "hf", home.base("tiny"))
        key = server.tokens.issue("acme", ["trainer", "reader"]).secret
        report = await run_cookbook(server.url, key, tmp_path / "work")
        records = [stored.decode() for stored in await read_all(server.system.log)]
        downloaded_final = next(
            r
            for r in records
            if isinstance(r, CheckpointSaved) and r.path == report["sl_final"]["sampler_path"]  # type: ignore[index]
        )
        exported = next(
            r for r in records if isinstance(r, RevisionExported) and r.revision == downloaded_final.revision
        )
        artifact = await server.system.artifacts.read(exported.uri)

    nll = report["sl_nll"]
    assert isinstance(nll, list) and len(nll) == 3 and all(math.isfinite(v) for v in nll)
    checkpoints = report["sl_checkpoints"]
    assert {"weights/000001", "weights/000002", "weights/final", "sampler_weights/final"} <= set(checkpoints)  # type: ignore[arg-type]
    expires = report["sl_expires"]
    assert isinstance(expires, dict)
    assert expires["weights/000001"] is not None and expires["weights/final"] is None  # ttl_seconds honoured
    assert report["downloaded"] == ["adapter_config.json", "adapter_model.safetensors"]
    adapter = Path(str(report["adapter_dir"]))
    # The downloaded adapter is the exported one, byte for byte, and peft loads it onto the base.
    assert (adapter / "adapter_model.safetensors").read_bytes() == artifact
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(home.base("tiny"))
    loaded = PeftModel.from_pretrained(base, adapter)
    assert any("lora_A" in name for name, _ in loaded.named_parameters())
    # The download's temporary export was an external checkpoint, deleted again by the cookbook.
    external = [r for r in records if isinstance(r, CheckpointSaved) and r.kind == "external"]
    deleted = [r for r in records if isinstance(r, CheckpointDeleted)]
    assert len(external) == 1 and (external[0].path, "deleted") in [(d.path, d.reason) for d in deleted]

    # A re-run resumes from its final checkpoint (a run of its own) and saves `final` again.
    rerun = report["rerun_records"]
    assert isinstance(rerun, list) and [r["name"] for r in rerun][-2:] == ["final", "final"]
    assert rerun[-1]["state_path"] != rerun[-2]["state_path"]
    sampler_finals = [
        r for r in records if isinstance(r, CheckpointSaved) and r.path.endswith("/sampler_weights/final")
    ]
    assert len({r.revision for r in sampler_finals}) == len(sampler_finals) >= 3  # one revision per run
    # Started from the first checkpoint, a run trains on from there and saves its own.
    resumed = report["resumed_records"]
    assert isinstance(resumed, list) and [r["name"] for r in resumed] == [
        "000001",
        "000001",
        "000002",
        "final",
    ]
    assert resumed[0]["state_path"] != resumed[1]["state_path"]  # its first save is in its own run
    assert all(math.isfinite(v) for v in report["resumed_nll"])  # type: ignore[attr-defined]
    assert [r["name"] for r in report["rl_records"]] == ["000001", "final"]  # type: ignore[index]
    assert report["rl_batches"] == [0, 1]
    # Rolling checkpoints: each save deletes the previous one; finalize deletes the last.
    assert report["rolling_listed"] == [["weights/000001"], ["weights/000002"], []]
    assert report["run_metadata"] == {"renderer_name": "role_colon"}
    assert report["whoami_org"] == "tml:organization:acme"
    assert isinstance(report["gspo_loss"], float) and math.isfinite(report["gspo_loss"])
    assert "stable_reinforce" in str(report["stable_reinforce"]) and "not served" in str(
        report["stable_reinforce"]
    )


# -- route by route, without the cookbook ----------------------------------------------------------


def _checkpoint(
    api: routes.Api, path: TinkerPath, policy: str, expires_at: float | None, **files: str
) -> None:
    info = CheckpointInfo(
        path.model_id,
        "tiny",
        policy,
        8,
        32.0,
        ["q_proj"],
        False,
        time.time(),
        expires_at=expires_at,
        files=files,
    )
    api.service.checkpoints.describe(path, info)


def _checkpoint_request(path: TinkerPath, body: object = None) -> routes.Request:
    return _with_path(request(body), run_id=path.model_id, kind=path.kind, name=path.name)


async def test_checkpoint_ttl_expiry_and_deletion_are_facts(tmp_path: Path) -> None:
    async with api_over(Home(tmp_path)) as api:
        kept = TinkerPath("sess-a:train:0", "weights", "kept")
        short = TinkerPath("sess-a:train:0", "weights", "short")
        _checkpoint(api, kept, "acme/a", None)
        _checkpoint(api, short, "acme/a", time.time() + 3600)
        listed = await routes.run_checkpoints(api, _with_path(request(), run_id="sess-a:train:0"), ACME)
        by_id = {c["checkpoint_id"]: c["expires_at"] for c in listed["checkpoints"]}
        assert by_id["weights/kept"] is None and by_id["weights/short"] is not None
        # A time to live set anew, then the sweep at a time past it: both facts, and the files go.
        await routes.checkpoint_ttl(api, _checkpoint_request(kept, {"ttl_seconds": 60}), TRAINER)
        assert await api.service.weights.expire(time.time() + 30) == 0
        assert await api.service.weights.expire(time.time() + 7200) == 2
        assert not api.service.checkpoints.directory(short).exists()
        # Another tenant's checkpoint is as good as missing, to delete as to list.
        other = TinkerPath("sess-b:train:0", "sampler_weights", "mine")
        _checkpoint(api, other, "globex/b", None)
        with pytest.raises(WireError) as refused:
            await routes.delete_checkpoint(api, _checkpoint_request(other), TRAINER)
        assert refused.value.status == 404 and api.service.checkpoints.directory(other).exists()
        await routes.delete_checkpoint(
            api, _checkpoint_request(other), Grant("tok-g", "globex", frozenset({"trainer"}))
        )
        records = [stored.decode() for stored in await read_all(api.service.weights.log)]
    assert [type(r) for r in records] == [
        CheckpointExpirySet,
        CheckpointDeleted,
        CheckpointDeleted,
        CheckpointDeleted,
    ]
    assert [r.reason for r in records if isinstance(r, CheckpointDeleted)] == [
        "expired",
        "expired",
        "deleted",
    ]


async def test_external_weights_download_through_signed_urls_only(tmp_path: Path) -> None:
    async with api_over(Home(tmp_path)) as api:
        stored = await api.service.weights.artifacts.put(
            "tinker/acme/a/external_weights/x/adapter.bin", b"weights"
        )
        path = TinkerPath("sess-a:train:0", "external_weights", "x")
        _checkpoint(api, path, "acme/a", None, **{"adapter.bin": stored.key})
        made = _checkpoint_request(path)
        made.scope |= {"server": ("127.0.0.1", 8000), "scheme": "http"}
        signed = await routes.external_weights_urls(api, made, ACME)
        url = signed["urls"]["adapter.bin"]
        assert url.startswith("http://127.0.0.1:8000/api/v1/external_weights/download?")
        query = url.split("?", 1)[1]
        answered = await routes.download(api, request(query=query), ANONYMOUS)
        assert isinstance(answered, Response) and answered.body == b"weights"
        with pytest.raises(WireError) as forged:
            await routes.download(api, request(query=query.replace("adapter.bin", "other.bin")), ACME)
        assert forged.value.status == 403
        with pytest.raises(WireError):
            await routes.external_weights_urls(api, made, GLOBEX)  # not globex's
        await routes.delete_checkpoint(api, made, TRAINER)
        with pytest.raises(WireError) as gone:
            await routes.download(api, request(query=query), ACME)
        assert gone.value.status == 404  # a signed URL dies with its checkpoint


async def test_a_base_answers_to_its_aliases_and_an_unknown_name_lists_them(tmp_path: Path) -> None:
    home = Home(tmp_path)
    create_tiny_base(home.base("tiny"))
    add_aliases(home.base("tiny"), [ALIAS])
    async with api_over(home) as api:
        models = (await routes.capabilities(api, request(), ACME))["supported_models"]
        assert [(m["model_name"], m["base_id"]) for m in models] == [("tiny", "tiny"), (ALIAS, "tiny")]
        assert api.service.bases.resolve(ALIAS) == "tiny"
        with pytest.raises(WireError) as unknown:
            api.service.bases.resolve("Qwen/Qwen3-8B")
        assert (
            unknown.value.field == "base_model"
            and ALIAS in unknown.value.problem
            and "tiny" in unknown.value.problem
        )


def test_mint_base_create_lists_aliases_and_refuses_a_bad_one(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from mint.cli import cli

    runner = CliRunner()
    created = runner.invoke(cli, ["base", "create", "tiny", str(tmp_path / "tiny"), "--alias", ALIAS])
    assert created.exit_code == 0, created.output
    assert f"aliases: {ALIAS}" in created.output
    described = runner.invoke(cli, ["base", "info", str(tmp_path / "tiny"), "--json"])
    assert json.loads(described.output)["aliases"] == [ALIAS]
    refused = runner.invoke(cli, ["base", "create", "tiny", str(tmp_path / "other"), "--alias", "no-slash"])
    assert refused.exit_code == 2 and "'no-slash'" in refused.output
    assert not (tmp_path / "other").exists()  # refused before anything was built
