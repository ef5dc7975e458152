"""The catalog actor: the single writer of catalog facts. It keeps its own copy of the catalog fold as
decision state, folds its own facts into it the moment it decides them, and answers each catalog
command with facts or a CommandRejected — and each passed evaluation of an auto-promoted policy with
its promotion."""

from __future__ import annotations

from actors.faults import NO_FAULTS, Faults
from actors.runtime import StoreActor
from events.envelope import Command, Record
from mint.catalog.decide import DECIDERS, REACTIONS, decide, react
from mint.catalog.fold import CATALOG_FOLD
from mint.home import Home
from mint.projection.store import ProjectionStore


class CatalogActor(StoreActor):
    decode_types = frozenset(DECIDERS)

    def __init__(self, home: Home, faults: Faults = NO_FAULTS) -> None:
        super().__init__("catalog", CATALOG_FOLD, home.actor_state("catalog"), faults)

    def on_record(self, record: Record, store: ProjectionStore) -> list[Record]:
        if isinstance(record, Command) and type(record).__name__ in DECIDERS:
            return list(decide(record, store.rows))
        if type(record).__name__ in REACTIONS:
            return list(react(record, store.rows))
        return []
