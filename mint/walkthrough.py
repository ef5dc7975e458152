"""The scripted session `mint up --walkthrough` runs: the control plane end to end, in plain words.

It registers policies, writes the facts a trainer and an evaluator would (under its own source, so an
audit never mistakes them for the real actors'), promotes, is refused, rolls back, retries a command
(the log refuses the duplicate) — all while the actors crash at random points and are restarted — then
checks that replaying the log rebuilds the live catalog exactly. `mint demo` does it all for real.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import msgspec

from actors.system import System
from events import codec
from events.catalog import Promote, RegisterPolicy, Rollback
from events.envelope import Record
from events.evaluation import EvaluationCompleted
from events.log import Encoded
from events.training import RevisionExported, StepCompleted, TrainingFinished, TrainingStarted
from mint.catalog.fold import CATALOG_FOLD
from mint.catalog.queries import Catalog
from mint.projection.states import dead_letters_of, projection_states
from replay.verify import Verdict, verify

Say = Callable[[str], None]
SOURCE = "walkthrough"
POLICIES = ("acme/support", "acme/search", "globex/triage")


def _export(policy: str, revision: str, parent: str | None, run: str) -> RevisionExported:
    return RevisionExported.create(
        source=SOURCE,
        policy=policy,
        revision=revision,
        base_id="tiny",
        uri=f"file://artifacts/{policy}/{revision}/adapter_model.safetensors",
        sha256=hashlib.sha256(f"{policy}@{revision}".encode()).hexdigest(),
        bytes=1_863_680,
        rank=8,
        alpha=16.0,
        targets=["q_proj", "v_proj"],
        parent=parent,
        run=run,
    )


def _evaluate(policy: str, revision: str, score: float, baseline: float | None) -> EvaluationCompleted:
    verdict = "pass" if baseline is None or score >= baseline - 0.01 else "fail"
    return EvaluationCompleted.create(
        source=SOURCE,
        policy=policy,
        revision=revision,
        suite="smoke",
        suite_version=1,
        score=score,
        verdict=verdict,
        baseline_score=baseline,
        delta=None if baseline is None else round(score - baseline, 4),
    )


def _training(run: str, policies: list[str], revision: str, parent: str | None) -> list[Record]:
    records: list[Record] = [
        TrainingStarted.create(
            source=SOURCE,
            run=run,
            policies=policies,
            base_id="tiny",
            algo="grpo",
            task="token:yes",
            steps=3,
        )
    ]
    for step in range(1, 4):
        for policy in policies:
            records.append(
                StepCompleted.create(
                    source=SOURCE,
                    run=run,
                    policy=policy,
                    step=step,
                    loss=1.0 / step,
                    reward_mean=0.2 * step,
                )
            )
    records += [_export(p, revision, parent, run) for p in policies]
    records.append(TrainingFinished.create(source=SOURCE, run=run, steps=3))
    return records


async def walkthrough(system: System, say: Say) -> Verdict:
    log = system.log
    say(f"1. Registering {len(POLICIES)} policies on base 'tiny': {', '.join(POLICIES)}")
    await log.append([RegisterPolicy.create(source=SOURCE, policy=p, base_id="tiny") for p in POLICIES])

    say("2. Two runs export r1 of every policy; the evaluator passes them; we promote all three")
    await log.append(_training("acme/run-1", ["acme/support", "acme/search"], "r1", None))
    await log.append(_training("globex/run-1", ["globex/triage"], "r1", None))
    await log.append([_evaluate(p, "r1", 0.61, None) for p in POLICIES])
    await log.append(
        [Promote.create(source=SOURCE, policy=p, revision="r1", reason="first release") for p in POLICIES]
    )

    say("3. A second run exports r2: support improves, search regresses; we try to promote both")
    await log.append(_training("acme/run-2", ["acme/support", "acme/search"], "r2", "r1"))
    await log.append(
        [_evaluate("acme/support", "r2", 0.74, 0.61), _evaluate("acme/search", "r2", 0.48, 0.61)]
    )
    await log.append(
        [
            Promote.create(source=SOURCE, policy=p, revision="r2", reason="weekly")
            for p in ("acme/support", "acme/search")
        ]
    )

    say("4. globex tries to promote an acme policy; an upstream producer retries a command")
    await _crossing_and_retried(system, say)
    await system.settle()
    _report(system, say)

    say("6. Replaying the whole log into a fresh projection and comparing digests with the live one")
    verdict = await verify(log, CATALOG_FOLD, system.home.catalog)
    state = "equal" if verdict.equal else "DIFFERENT"
    say(f"   replay {state}: {verdict.records} records, digest {verdict.live_digest[:16]}")
    return verdict


async def _crossing_and_retried(system: System, say: Say) -> None:
    own = Promote.create(source=SOURCE, policy="acme/support", revision="r1", tenant="acme")
    # Bytes no MinT process would make (they cross tenants), as a careless producer could write them.
    crossing = {**msgspec.json.decode(codec.encode(own)), "tenant": "globex"}
    raw = msgspec.json.encode(crossing)
    await system.log.append_encoded([msgspec.structs.replace(Encoded.of(own), raw=raw)])
    retried = Rollback.create(
        source="canary",
        policy="acme/support",
        reason="live error rate 4.1% > 2% threshold",
        evidence={"error_rate": 0.041, "threshold": 0.02},
    )
    await system.log.append([retried])
    (again,) = await system.log.append([retried])
    outcome = "refused as a duplicate" if again.duplicate else "appended again (folds skip it)"
    say(f"   the retry was {outcome}")


def _report(system: System, say: Say) -> None:
    catalog = Catalog(system.home.catalog)
    say("5. What the catalog says now:")
    for policy in POLICIES:
        row = catalog.policy(policy)
        assert row is not None
        say(f"   {policy:<15} serves {row.pointer}  (served so far: {' -> '.join(row.served)})")
    say("   refused commands, with their reasons:")
    for policy in POLICIES:
        for rejected in catalog.rejections(policy):
            say(f"   - {rejected.command_type} {policy}: {rejected.reason}")
    say("   records set aside (dead letters), with their reasons:")
    for actor, path in projection_states(system.home).items():
        for letter in dead_letters_of(path):
            say(f"   - {actor}: {letter.type} {letter.id}: {letter.reason}")
    say(f"   actor crashes injected and recovered from: {system.supervisor.restarts}")
    catalog.close()
