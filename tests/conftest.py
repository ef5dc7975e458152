from __future__ import annotations

import pytest

from tests.kafka_broker import kafka_bootstrap as kafka_bootstrap  # session broker for -m kafka


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
