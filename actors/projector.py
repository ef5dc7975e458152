"""The catalog projector: folds every fact into the catalog read model (`$MINT_HOME/projections`)."""

from __future__ import annotations

from actors.faults import NO_FAULTS, Faults
from actors.runtime import StoreActor
from mint.catalog.fold import CATALOG_FOLD
from mint.home import Home


class CatalogProjector(StoreActor):
    def __init__(self, home: Home, faults: Faults = NO_FAULTS) -> None:
        super().__init__("projector", CATALOG_FOLD, home.catalog, faults)
