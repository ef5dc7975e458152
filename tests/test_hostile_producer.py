"""A hostile producer's attacks, replayed: forged decider facts through the door and straight onto
Kafka, names that cross tenants, and a run the trainer did not decide. Each was a hole once."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import anyio
import msgspec
import pytest
from aiokafka import AIOKafkaProducer
from starlette.applications import Starlette

from actors.system import System, running
from events import codec
from events.catalog import RevisionPromoted
from events.envelope import Record
from events.evaluation import EvaluationCompleted
from events.kafka_log import KafkaLog
from events.log import Encoded
from events.partitioning import partition_for
from events.schema import FACT_TYPES, PRODUCER_TYPES
from events.seal import Seal
from events.training import StepCompleted, TrainingStarted
from mint.auth.tokens import TokenStore
from mint.catalog.fold import CATALOG_FOLD
from mint.catalog.queries import Catalog
from mint.home import Home
from mint.projection.states import dead_letters_of
from replay.verify import verify
from tests.api_system import client_for
from tests.log_contract import read_all
from tests.records import exported, forged, register

pytestmark = pytest.mark.anyio

DECIDERS_FACTS = sorted(FACT_TYPES - PRODUCER_TYPES)
MINT = str(Path(sys.executable).with_name("mint"))


@pytest.mark.parametrize("type_name", DECIDERS_FACTS)
async def test_no_producer_appends_a_deciders_fact_whatever_its_role(
    type_name: str, bare_system: System, api_app: Starlette, token_store: TokenStore
) -> None:
    body = json.dumps({"type": type_name, "id": "forged-1", "key": "acme/a", "tenant": "acme"}).encode()
    for tenant, roles in (("acme", "producer"), ("acme", "admin"), ("_system", "admin")):
        answer = await client_for(api_app, token_store, tenant, roles).post("/v1/events", content=body)
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["param"] == "type" and "written only by MinT's" in error["message"]
    assert sum((await bare_system.log.end_offsets()).values()) == 0, "nothing was appended"


async def test_the_reported_attacks_are_refused_at_the_door(
    bare_system: System, api_app: Starlette, token_store: TokenStore
) -> None:
    globex = client_for(api_app, token_store, "globex", "producer")
    # globex's run naming acme's policy, as a fact (to be resumed by the trainer) ...
    started = TrainingStarted.create(
        run="globex/evil", policies=["globex/p"], base_id="tiny", algo="sft", task="sft-repeat:x", steps=2
    )
    as_fact = forged(started, policies=["acme/support"])
    refused = await globex.post("/v1/events", content=as_fact)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "type"
    # ... and acme's producer promoting a revision past its gate.
    acme = client_for(api_app, token_store, "acme", "producer")
    promoted = RevisionPromoted.create(policy="acme/support", revision="evil2")
    refused = await acme.post("/v1/events", content=codec.encode(promoted))
    assert refused.status_code == 400 and "catalog" in refused.json()["error"]["message"]
    assert sum((await bare_system.log.end_offsets()).values()) == 0


def _fresh_topic() -> str:
    return f"mint.hostile.{uuid.uuid4().hex[:8]}"


async def _send_raw(
    bootstrap: str, topic: str, partitions: int, messages: list[tuple[str, bytes, list[tuple[str, bytes]]]]
) -> None:
    """Write messages straight onto the topic, as a producer outside MinT would: no seal."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, acks="all")
    await producer.start()
    try:
        for key, value, headers in messages:
            await producer.send_and_wait(
                topic, value, key=key.encode(), partition=partition_for(key, partitions), headers=headers
            )
    finally:
        await producer.stop()


def _bare(type_name: str) -> bytes:
    """A forged record of `type_name`: its header alone (a fold refuses it on its type unread)."""
    return json.dumps({"type": type_name, "id": f"forged-{type_name}", "key": "acme/a"}).encode()


def _headers(record: Record) -> list[tuple[str, bytes]]:
    return [
        ("id", record.id.encode()),
        ("type", type(record).__name__.encode()),
        ("v", str(record.v).encode()),
    ]


@pytest.mark.kafka
async def test_forgeries_written_straight_onto_kafka_are_dead_letters_and_commands_still_count(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    home = Home(tmp_path)
    topic = _fresh_topic()
    export = exported("acme/a", "r1")
    evaluation = EvaluationCompleted.create(
        policy="acme/a", revision="r1", suite="smoke", suite_version=1, score=1.0, verdict="pass"
    )
    promotion = RevisionPromoted.create(policy="acme/a", revision="r1")
    misplaced = register("acme/c")
    later = register("globex/b")
    step = StepCompleted.create(run="globex/run", policy="globex/p1", step=1, loss=0.5)
    async with KafkaLog(kafka_bootstrap, topic=topic, partitions=4) as log, running(home, log) as system:
        await log.append([register("acme/a")])
        await system.settle()
        await _send_raw(
            kafka_bootstrap,
            topic,
            log.partitions,
            [
                ("acme/a", codec.encode(export), _headers(export)),  # a producer's fact: welcome
                ("acme/a", codec.encode(evaluation), _headers(evaluation)),  # the evaluator's: forged
                ("acme/a", codec.encode(promotion), _headers(promotion)),  # the catalog's: forged
                ("acme/a", b"\xff\xfe\x00garbage", []),  # not a record at all
                ("acme/zzz", codec.encode(misplaced), []),  # keyed apart from its record
                ("globex/b", codec.encode(later), []),  # another tenant's command, after all that
            ],
        )
        # Every other fact a decider owns, forged the same way (the fold refuses it on its type alone).
        every = [t for t in DECIDERS_FACTS if t in CATALOG_FOLD.handlers]
        await _send_raw(
            kafka_bootstrap,
            topic,
            log.partitions,
            [
                ("acme/a", json.dumps({"type": t, "id": f"forged-{t}", "key": "acme/a"}).encode(), [])
                for t in every
            ],
        )
        # Sealed (appended by MinT) but crossing tenants: globex's step inside acme's run.
        crossing = msgspec.structs.replace(Encoded.of(step), raw=forged(step, run="acme/run"))
        await log.append_encoded([crossing])
        with anyio.fail_after(60):
            await system.until(lambda: Catalog(home.catalog).policy("globex/b") is not None)
            await system.settle()
        catalog = Catalog(home.catalog)
        assert [r.revision for r in catalog.revisions("acme/a")] == ["r1"]
        assert catalog.revisions("acme/a")[0].eval_verdict is None, "the forged evaluation did not count"
        assert catalog.resolve("acme/a") is None, "the forged promotion did not move the pointer"
        assert catalog.policy("acme/c") is None
        letters = {d.id: d.reason for d in catalog.dead_letters()}
        assert "unsealed" in letters[evaluation.id] and "evaluator" in letters[evaluation.id]
        assert "unsealed" in letters[promotion.id] and "catalog" in letters[promotion.id]
        # Commands are the catalog actor's to decode, so it is the one that sets this aside.
        decider = {d.id: d.reason for d in dead_letters_of(home.actor_state("catalog"))}
        assert "key: the message key 'acme/zzz'" in decider[misplaced.id]
        assert "run: 'acme/run' belongs to another tenant than 'globex'" in letters[step.id]
        assert all("unsealed" in letters[f"forged-{t}"] for t in every), "every forged fact is set aside"
        (garbage,) = [reason for ident, reason in letters.items() if ident.startswith(f"{topic}[")]
        assert garbage.startswith("not a record:")
        restarts = [s for s in await read_all(log) if s.type == "ActorRestarted" and s.sealed]
        assert not restarts, "no actor crashed"
        verdict = await verify(log, CATALOG_FOLD, home.catalog)
        assert verdict.equal, verdict.diffs
    log_url = f"kafka://{kafka_bootstrap}/{topic}"
    tail = await anyio.run_process(
        [MINT, "events", "tail", "-n", "50", "--home", str(tmp_path), "--log", log_url], check=False
    )
    assert tail.returncode == 0, tail.stderr.decode()
    output = tail.stdout.decode()
    assert "UNDECODABLE" in output and "RegisterPolicy" in output


@pytest.mark.kafka
async def test_a_seal_counts_only_under_the_same_cluster_key(kafka_bootstrap: str) -> None:
    topic = _fresh_topic()
    ours, theirs = Seal.from_secret("our cluster"), Seal.from_secret("another cluster")
    async with KafkaLog(kafka_bootstrap, topic=topic, partitions=2, seal=ours) as writer:
        await writer.append([register("acme/a")])
    async with KafkaLog(kafka_bootstrap, topic=topic, seal=ours) as same:
        assert [s.sealed for s in await read_all(same)] == [True]
    async with KafkaLog(kafka_bootstrap, topic=topic, seal=theirs) as other:
        assert [s.sealed for s in await read_all(other)] == [False]
