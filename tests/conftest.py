from __future__ import annotations

import pytest

from tests.kafka_broker import kafka_bootstrap as kafka_bootstrap  # session broker for -m kafka
from tests.s3_server import moto_endpoint as moto_endpoint  # session S3-protocol server


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
