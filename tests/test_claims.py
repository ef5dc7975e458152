"""The fence in every fold (events/claims.py, mint/projection/store.py): a fact of an epoch older than
its fence's latest claim on its partition does not count, whoever reads it; a claim that lost a race
does not move the fence; a zombie's copy of a fact does not hide the rightful owner's."""

from __future__ import annotations

from pathlib import Path

import msgspec

from events.claims import PartitionClaimed, claim_key
from events.envelope import Record
from events.log import Encoded, Stored
from events.partitioning import partition_for
from mint.catalog.fold import CATALOG_FOLD
from mint.projection.store import DEAD_LETTERS, FENCED, ProjectionStore
from tests.records import exported, registered

PARTITIONS = 8


def claim(partition: int, epoch: int, replica: str = "catalog-1") -> PartitionClaimed:
    return PartitionClaimed.create(
        key=claim_key("catalog", partition, PARTITIONS),
        source="catalog",
        actor="catalog",
        partition=partition,
        replica=replica,
        epoch=epoch,
    )


class Partition:
    """One partition of a log, as a reader gets it: records at consecutive offsets."""

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self.offset = 0

    def at(self, record: Record, partition: int | None = None) -> Stored:
        e = Encoded.of(record)
        stored = Stored(
            partition if partition is not None else self.partition,
            self.offset,
            e.id,
            e.key,
            e.type,
            e.v,
            e.at_ms,
            e.raw,
        )
        self.offset += 1
        return stored


def by(epoch: int, record: Record) -> Record:
    return msgspec.structs.replace(record, epoch=epoch, source="catalog")


def test_claim_keys_land_on_the_partition_they_name() -> None:
    for p in range(PARTITIONS):
        assert partition_for(claim_key("catalog", p, PARTITIONS), PARTITIONS) == p


def test_a_fact_of_an_older_epoch_than_the_latest_claim_is_fenced(tmp_path: Path) -> None:
    policy = "acme/a"
    log = Partition(partition_for(policy, PARTITIONS))
    store = ProjectionStore(tmp_path / "p.db", CATALOG_FOLD)
    store.apply(log.at(claim(log.partition, 1)))
    assert store.apply(log.at(by(1, registered(policy)))) is not None, "the owner's epoch counts"
    store.apply(log.at(claim(log.partition, 2, "catalog-2")))
    zombie = by(1, exported(policy, "r1"))
    assert store.apply(log.at(zombie)) is None, "a zombie's decision after the new claim does not count"
    store.commit()
    assert store.query("SELECT count(*) FROM revisions") == [(0,)]
    fenced = [FENCED.from_data(data) for (data,) in store.query("SELECT data FROM _fenced")]
    assert [(f.id, f.epoch, f.latest) for f in fenced] == [(zombie.id, 1, 2)]
    # The rightful owner decides the same thing (same derived id): its copy counts.
    assert store.apply(log.at(by(2, zombie))) is not None
    store.commit()
    assert store.query("SELECT count(*) FROM revisions") == [(1,)]


def test_a_claim_that_loses_a_race_does_not_move_the_fence(tmp_path: Path) -> None:
    log = Partition(3)
    store = ProjectionStore(tmp_path / "p.db", CATALOG_FOLD)
    first = claim(3, 2, "catalog-1")
    store.apply(log.at(first))
    store.apply(log.at(claim(3, 2, "catalog-2")))  # the same epoch, later: it does not count
    store.apply(log.at(claim(3, 1, "catalog-3")))  # an older epoch: neither
    latest = store.claim_of("actor:catalog", 3)
    assert latest is not None and (latest.claim, latest.epoch, latest.replica) == (first.id, 2, "catalog-1")


def test_a_claim_on_another_partition_than_its_own_is_a_dead_letter(tmp_path: Path) -> None:
    store = ProjectionStore(tmp_path / "p.db", CATALOG_FOLD)
    store.apply(Partition(5).at(claim(3, 1), partition=5))
    store.commit()
    assert store.claim_of("actor:catalog", 5) is None and store.claim_of("actor:catalog", 3) is None
    (letter,) = [DEAD_LETTERS.from_data(data) for (data,) in store.query("SELECT data FROM dead_letters")]
    assert letter.reason.startswith("partition: claims 3 but sits on 5")


def test_unfenced_facts_count_whatever_the_claims(tmp_path: Path) -> None:
    """Epoch 0 is the embedded system's, and other actors' fences are their own."""
    policy = "acme/a"
    log = Partition(partition_for(policy, PARTITIONS))
    store = ProjectionStore(tmp_path / "p.db", CATALOG_FOLD)
    store.apply(log.at(claim(log.partition, 5)))
    assert store.apply(log.at(registered(policy))) is not None
    trainer = msgspec.structs.replace(exported(policy, "r1"), epoch=1, source="trainer")
    assert store.apply(log.at(trainer)) is not None, "the catalog's claims do not fence the trainer"


def test_a_deciders_own_fact_fenced_on_its_way_back_stays_pending(tmp_path: Path) -> None:
    """A zombie folded its decision at once (see your own writes); the log's copy, fenced, must not
    confirm it: it stays pending, so a replica holding it knows the log does not count it."""
    policy = "acme/a"
    log = Partition(partition_for(policy, PARTITIONS))
    store = ProjectionStore(tmp_path / "p.db", CATALOG_FOLD, decode_types=["RegisterPolicy"])
    store.apply(log.at(claim(log.partition, 1)))
    decided = by(1, registered(policy))
    store.apply_own(decided)
    store.apply(log.at(claim(log.partition, 2, "catalog-2")))
    store.apply(log.at(decided))
    assert store.own_pending(decided.id), "its copy does not count, so it is not confirmed"
    confirmed = by(2, decided)
    store.apply(log.at(confirmed))
    assert not store.own_pending(decided.id), "the owner's copy confirms it"
