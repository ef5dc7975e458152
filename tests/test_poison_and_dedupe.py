"""Poison records go to the dead-letter table and the actors go on; retried ids are skipped."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from actors.system import running
from events.catalog import RevisionPromoted
from events.dedupe import RECENT_IDS_PER_KEY
from events.log import Encoded, Stored
from events.sqlite_log import SqliteLog
from mint.catalog.fold import CATALOG_FOLD
from mint.catalog.queries import Catalog
from mint.home import Home
from mint.projection.store import ProjectionStore
from replay.verify import verify
from tests.records import exported, forged, register, registered


@pytest.mark.anyio
async def test_poison_records_are_dead_lettered_and_the_projector_goes_on(tmp_path: Path) -> None:
    home = Home(tmp_path)
    garbage = Encoded(
        id="bad-1", key="acme/a", type="RevisionPromoted", v=1, at_ms=0, raw=b'{"type":"RevisionPromoted"'
    )
    wrong_fields = Encoded.of(exported("acme/a", "r1"))
    wrong_fields = msgspec.structs.replace(
        wrong_fields, id="bad-2", raw=wrong_fields.raw.replace(b'"rank":8', b'"rank":"x"')
    )
    promoted = RevisionPromoted.create(policy="acme/a", revision="r1")
    # Valid shape, wrong tenant: the schema refuses it on read, so no fold ever sees it.
    foreign = Encoded.of(promoted)
    foreign = msgspec.structs.replace(foreign, raw=forged(promoted, tenant="globex"))
    async with SqliteLog(home.log, partitions=2) as log, running(home, log) as system:
        await log.append([register("acme/a")])
        await log.append_encoded([garbage, wrong_fields, foreign])
        await log.append([exported("acme/a", "r2")])
        await system.settle()
        catalog = Catalog(home.catalog)
        letters = {d.id: d.reason for d in catalog.dead_letters()}
        assert set(letters) == {"bad-1", "bad-2", foreign.id}
        assert "record" in letters["bad-1"]
        assert "$.rank" in letters["bad-2"]
        assert "key: 'acme/a' belongs to another tenant than 'globex'" in letters[foreign.id]
        assert [r.revision for r in catalog.revisions("acme/a")] == ["r2"], (
            "the actor went on past the poison"
        )
        assert catalog.resolve("acme/a") is None, "nothing of a poison record was applied"
        verdict = await verify(log, CATALOG_FOLD, home.catalog)
        assert verdict.equal, "dead letters rebuild the same way"


def _stored(record: object, offset: int) -> Stored:
    e = Encoded.of(record)  # type: ignore[arg-type]
    return Stored(0, offset, e.id, e.key, e.type, e.v, e.at_ms, e.raw)


def test_a_retried_id_within_the_window_is_skipped(tmp_path: Path) -> None:
    """On Kafka a producer retry appends the same id at a later offset. The store remembers the last
    RECENT_IDS_PER_KEY ids per key, across commits and reopenings, and skips the second copy."""
    store = ProjectionStore(tmp_path / "p.db", CATALOG_FOLD, dedupe=True)
    first = exported("acme/a", "r1")
    store.apply(_stored(registered("acme/a"), 0))
    store.apply(_stored(first, 1))
    store.commit()
    store.close()
    store = ProjectionStore(tmp_path / "p.db", CATALOG_FOLD, dedupe=True)
    others = [exported("acme/a", f"x{i}") for i in range(RECENT_IDS_PER_KEY - 2)]
    for i, other in enumerate(others):
        store.apply(_stored(other, 2 + i))
    assert store.apply(_stored(first, 2 + len(others))) is None, "the retry is skipped"
    store.commit()
    assert store.query("SELECT count(*) FROM revisions") == [(1 + len(others),)]
    store.close()


def test_a_record_below_the_checkpoint_is_skipped(tmp_path: Path) -> None:
    store = ProjectionStore(tmp_path / "p.db", CATALOG_FOLD, dedupe=False)
    assert store.apply(_stored(registered("acme/a"), 0)) is not None
    store.commit()
    assert store.apply(_stored(registered("acme/other"), 0)) is None, "offset 0 of partition 0 was applied"
