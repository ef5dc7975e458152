"""Which log to use: the embedded SQLite file under $MINT_HOME (default) or Kafka.

`--log` / `$MINT_LOG`: `sqlite` (default), `sqlite:///path/to/log.db`, or
`kafka://HOST:PORT[,HOST:PORT...][/TOPIC][?partitions=N]`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from events.log import EventLog
from events.sqlite_log import DEFAULT_PARTITIONS, SqliteLog
from mint.home import Home

DEFAULT_TOPIC = "mint.records"


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class LogSpec:
    kind: str  # sqlite | kafka
    path: Path | None = None
    bootstrap: str = ""
    topic: str = DEFAULT_TOPIC
    partitions: int = DEFAULT_PARTITIONS

    @classmethod
    def parse(cls, spec: str | None, home: Home) -> LogSpec:
        spec = spec or os.environ.get("MINT_LOG") or "sqlite"
        if spec == "sqlite":
            return cls("sqlite", path=home.log)
        url = urlsplit(spec)
        query = parse_qs(url.query)
        try:
            partitions = int(query.get("partitions", [str(DEFAULT_PARTITIONS)])[0])
        except ValueError:
            raise ConfigError(f"log: partitions must be an integer in {spec!r}") from None
        if url.scheme == "sqlite":
            return cls("sqlite", path=Path(url.path), partitions=partitions)
        if url.scheme == "kafka":
            if not url.netloc:
                raise ConfigError(f"log: {spec!r} names no broker (kafka://HOST:PORT[/TOPIC])")
            topic = url.path.strip("/") or DEFAULT_TOPIC
            return cls("kafka", bootstrap=url.netloc, topic=topic, partitions=partitions)
        raise ConfigError(f"log: {spec!r} is not sqlite, sqlite:///PATH or kafka://HOST:PORT[/TOPIC]")


@asynccontextmanager
async def open_log(spec: LogSpec) -> AsyncIterator[EventLog]:
    if spec.kind == "sqlite":
        assert spec.path is not None
        async with SqliteLog(spec.path, partitions=spec.partitions) as log:
            yield log
        return
    from events.kafka_log import KafkaLog  # only Kafka deployments pay for aiokafka's import

    kafka = KafkaLog(spec.bootstrap, topic=spec.topic, partitions=spec.partitions)
    await kafka.start()
    try:
        yield kafka
    finally:
        await kafka.aclose()
