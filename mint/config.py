"""Which log to use: the embedded SQLite file under $MINT_HOME (default) or Kafka.

`--log` / `$MINT_LOG`: `sqlite` (default), `sqlite:///path/to/log.db`, or
`kafka://HOST:PORT[,HOST:PORT...][/TOPIC][?partitions=N]`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from events.log import EventLog
from events.sqlite_log import SqliteLog
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
    partitions: int | None = None  # None: the existing log's count, or the backend's default

    @classmethod
    def parse(cls, spec: str | None, home: Home) -> LogSpec:
        spec = spec or os.environ.get("MINT_LOG") or "sqlite"
        if spec == "sqlite":
            return cls("sqlite", path=home.log)
        url = urlsplit(spec)
        query = parse_qs(url.query)
        try:
            partitions = int(query["partitions"][0]) if "partitions" in query else None
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


def open_log(spec: LogSpec) -> EventLog:
    """The log `spec` names, to be entered with `async with` (that connects and, on exit, closes)."""
    if spec.kind == "sqlite":
        assert spec.path is not None
        return SqliteLog(spec.path, partitions=spec.partitions)
    from events.kafka_log import KafkaLog  # only Kafka deployments pay for aiokafka's import

    return KafkaLog(spec.bootstrap, topic=spec.topic, partitions=spec.partitions)
