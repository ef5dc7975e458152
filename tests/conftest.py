from __future__ import annotations

import pytest

# Shared fixtures: the session's Kafka-protocol broker (tansu), its S3-protocol server (moto), and the
# tiny base with adapters that every engine backend's tests use.
pytest_plugins = ("tests.kafka_broker", "tests.s3_server", "tests.engine_fixtures", "tests.api_system")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
