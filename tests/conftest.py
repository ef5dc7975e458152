from __future__ import annotations

import pytest

# Shared fixtures: the session's Kafka-protocol broker (tansu), its S3-protocol server (moto), and the
# tiny base with adapters that every engine backend's tests use.
pytest_plugins = ("tests.kafka_broker", "tests.s3_server", "tests.engine_fixtures", "tests.api_system")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _positions_in_tmp(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # The CLI remembers the positions of its writes (mint/commands/positions.py) in the user's state
    # directory; a test's CLI calls remember them in its own temporary directory instead. A test that
    # sets MINT_POSITION_FILE itself overrides this.
    monkeypatch.setenv("MINT_POSITION_FILE", str(tmp_path_factory.mktemp("state") / "positions.json"))
