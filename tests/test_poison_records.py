"""Records that cannot stop the system: an out-of-range field, bytes that are not a record, a record
that raises in a fold or in a decider. Each ends in a dead letter with every actor live, later records
projected, and `mint replay verify` equal; a stuck actor is reported, not hidden."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import msgspec
import pytest
from starlette.applications import Starlette

from actors.locks import actor_locks
from actors.runtime import StoreActor
from actors.system import System, running
from events.catalog import RegisterPolicy
from events.envelope import Record
from events.log import Encoded, Stored
from events.sqlite_log import SqliteLog
from events.training import StartTraining, TrainingStarted
from mint.auth.tokens import TokenStore
from mint.catalog.fold import CATALOG_FOLD
from mint.catalog.queries import Catalog
from mint.home import Home
from mint.projection.states import dead_letters_of
from mint.projection.store import Fold, ProjectionStore, Rows
from tests.api_system import client_for
from tests.log_contract import read_all
from tests.records import forged, register, registered

pytestmark = pytest.mark.anyio
MINT = str(Path(sys.executable).with_name("mint"))


def _start(run: str = "acme/run", steps: int = 2) -> StartTraining:
    return StartTraining.create(
        run=run, policies=["acme/a"], base_id="tiny", algo="sft", task="sft-repeat:hi", steps=steps
    )


async def test_out_of_range_integers_are_refused_at_the_door_naming_the_field(
    bare_system: System, api_app: Starlette, token_store: TokenStore
) -> None:
    acme = client_for(api_app, token_store, "acme", "producer")
    for body, field in [
        (forged(_start(), steps=10**30), "steps"),
        (forged(_start(), steps=0), "steps"),
        (forged(register("acme/a"), watch={"min_requests": 2**64}), "watch.min_requests"),
        (b"[" * 60_000, "body"),  # nested deeper than any decoder's stack
    ]:
        answer = await acme.post("/v1/commands", content=body)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["param"] == field, answer.json()
    assert sum((await bare_system.log.end_offsets()).values()) == 0


def _raw(record: Record, **changes: object) -> Encoded:
    """`record` as the log would hold it, with fields changed past the schema (no door saw it)."""
    return msgspec.structs.replace(Encoded.of(record), raw=forged(record, **changes))


async def test_poison_on_the_log_is_set_aside_and_every_actor_goes_on(tmp_path: Path) -> None:
    home = Home(tmp_path)
    huge_command = _start("acme/huge")
    huge_fact = TrainingStarted.create(
        run="acme/huge2", policies=["acme/a"], base_id="tiny", algo="sft", task="sft-repeat:hi", steps=2
    )
    later = register("globex/b")
    async with SqliteLog(home.log, partitions=2) as log, running(home, log) as system:
        await log.append([register("acme/a")])
        await log.append_encoded([_raw(huge_command, steps=10**30), _raw(huge_fact, steps=10**30)])
        not_json = Encoded(
            id="not-json", key="acme/a", type="RegisterPolicy", v=1, at_ms=0, raw=b"\xff\xfe\x00"
        )
        await log.append_encoded([not_json])
        await log.append([later])
        with anyio.fail_after(60):
            await system.until(lambda: Catalog(home.catalog).policy("globex/b") is not None)
            await system.settle()
        assert not [s for s in await read_all(log) if s.type == "ActorRestarted"], "no actor crashed"
        trainer = {d.id: d.reason for d in dead_letters_of(home.actor_state("trainer"))}
        assert "Expected `int` <= 1000000 - at `$.steps`" in trainer[huge_command.id]
        projector = {d.id: d.reason for d in Catalog(home.catalog).dead_letters()}
        assert "$.steps" in projector[huge_fact.id]
        assert "not-json" in {d.id for d in dead_letters_of(home.actor_state("catalog"))}
        # The tools, as a user runs them, while the actors are live.
        letters = await anyio.run_process([MINT, "catalog", "dead-letters", "--home", str(tmp_path)])
        lines = letters.stdout.decode().splitlines()
        assert any(line.startswith("trainer ") and huge_command.id in line for line in lines), lines
        assert any(line.startswith("projector ") and huge_fact.id in line for line in lines), lines
        verify = await anyio.run_process([MINT, "replay", "verify", "--home", str(tmp_path)], check=False)
        assert verify.returncode == 0, verify.stdout.decode() + verify.stderr.decode()
        assert "records were set aside as dead letters" in verify.stdout.decode()


def _stored(record: Record, offset: int) -> Stored:
    e = Encoded.of(record)
    return Stored(0, offset, e.id, e.key, e.type, e.v, e.at_ms, e.raw)


def test_a_record_that_raises_in_a_fold_is_a_dead_letter_and_the_next_one_folds(tmp_path: Path) -> None:
    poison = registered("acme/poison")

    def policy_registered(fact: Record, rows: Rows) -> None:
        if fact.id == poison.id:
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        CATALOG_FOLD.handlers["PolicyRegistered"](fact, rows)

    fold = Fold(
        "catalog", CATALOG_FOLD.tables, {**CATALOG_FOLD.handlers, "PolicyRegistered": policy_registered}
    )
    store = ProjectionStore(tmp_path / "p.db", fold)
    assert store.apply(_stored(poison, 0)) is None
    assert store.apply(_stored(registered("acme/next"), 1)) is not None
    store.commit()
    (letter,) = dead_letters_of(tmp_path / "p.db")
    assert letter.id == poison.id and "OverflowError: Python int too large" in letter.reason
    assert store.query("SELECT policy FROM policies") == [("acme/next",)], "nothing of the poison stayed"
    assert store.position == {0: 2}
    store.close()


class _Breaks(StoreActor):
    """A decider with a fault of its own on one command."""

    decode_types = frozenset({"RegisterPolicy"})

    def __init__(self, path: Path, breaks_on: str) -> None:
        super().__init__("breaks", CATALOG_FOLD, path)
        self.breaks_on = breaks_on

    def on_record(self, record: Record, store: ProjectionStore) -> list[Record]:
        if record.id == self.breaks_on:
            raise KeyError("a field the decider did not expect")
        assert isinstance(record, RegisterPolicy)
        return [registered(record.policy, id=f"{record.id}/0")]


def test_a_command_that_breaks_its_decider_is_set_aside_and_the_next_is_decided(tmp_path: Path) -> None:
    bad, good = register("acme/bad"), register("acme/good")
    actor = _Breaks(tmp_path / "breaks.db", bad.id)
    store = ProjectionStore(tmp_path / "breaks.db", CATALOG_FOLD, decode_types=actor.decode_types)
    batch = actor.handle([_stored(bad, 0), _stored(good, 1)], store)
    assert [type(f).__name__ for f in batch.decided] == ["PolicyRegistered"]
    store.commit()
    (letter,) = dead_letters_of(tmp_path / "breaks.db")
    assert letter.id == bad.id and "deciding RegisterPolicy failed: KeyError" in letter.reason
    store.close()


async def test_replay_verify_reports_an_actor_stuck_behind_the_log(tmp_path: Path) -> None:
    home = Home(tmp_path)
    async with SqliteLog(home.log, partitions=2) as log:
        await log.append([register("acme/a"), register("acme/b")])
    ProjectionStore(home.catalog, CATALOG_FOLD).commit()  # a projection that never got past offset 0
    with actor_locks(home, ["projector"]):  # ... of a projector that is running
        verify = await anyio.run_process(
            [MINT, "replay", "verify", "--wait", "0.5", "--home", str(tmp_path)], check=False
        )
    out = verify.stdout.decode()
    assert verify.returncode == 1, out
    assert "STUCK: actor projector is 2 records behind the log's end" in out
    assert "OK: replay equals live over 0 records" in out, "the digests alone would have hidden it"
