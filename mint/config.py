"""Which log to use: the embedded SQLite file under $MINT_HOME (default) or Kafka.

`--log` / `$MINT_LOG`: `sqlite` (default), `sqlite:///path/to/log.db`, or
`kafka://HOST:PORT[,HOST:PORT...][/TOPIC][?partitions=N]`.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from events.log import EventLog
from events.seal import Seal
from events.sqlite_log import SqliteLog
from mint.artifacts.local import LocalArtifactStore
from mint.artifacts.store import ArtifactStore
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
    seal: Seal | None = None  # Kafka: the cluster's key, which every process of one cluster shares

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
            seal = cluster_seal(home)
            return cls("kafka", bootstrap=url.netloc, topic=topic, partitions=partitions, seal=seal)
        raise ConfigError(f"log: {spec!r} is not sqlite, sqlite:///PATH or kafka://HOST:PORT[/TOPIC]")


def open_log(spec: LogSpec) -> EventLog:
    """The log `spec` names, to be entered with `async with` (that connects and, on exit, closes)."""
    if spec.kind == "sqlite":
        assert spec.path is not None
        return SqliteLog(spec.path, partitions=spec.partitions)
    from events.kafka_log import KafkaLog  # only Kafka deployments pay for aiokafka's import

    return KafkaLog(spec.bootstrap, topic=spec.topic, partitions=spec.partitions, seal=spec.seal)


def cluster_seal(home: Home) -> Seal:
    """The key MinT's processes seal their records with (events/seal.py): `$MINT_CLUSTER_KEY`, else
    `$MINT_HOME/cluster.key`, created (mode 0600) on first use. Processes on one Kafka topic must share
    it: a record sealed under another key counts as a producer's, so its decisions are refused."""
    secret = os.environ.get("MINT_CLUSTER_KEY")
    if secret:
        return Seal.from_secret(secret)
    path = home.root / "cluster.key"
    if not path.exists():
        home.root.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".cluster.key.{os.getpid()}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32) + "\n")
        try:
            os.link(draft, path)  # atomic and never overwrites: a process that got here first wins
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    secret = path.read_text().strip()
    if not secret:
        raise ConfigError(f"cluster key: {path} is empty (delete it to make a new one)")
    return Seal.from_secret(secret)


@dataclass(frozen=True)
class ArtifactSpec:
    """`--artifacts` / `$MINT_ARTIFACTS`: `local` (default, `$MINT_HOME/artifacts`), `file:///DIR`, or
    `s3://BUCKET[/PREFIX]` (credentials from the usual AWS chain; `$AWS_ENDPOINT_URL` for an
    S3-protocol server such as MinIO)."""

    kind: str  # local | s3
    path: Path | None = None
    bucket: str = ""
    prefix: str = ""
    endpoint_url: str | None = None

    @classmethod
    def parse(cls, spec: str | None, home: Home) -> ArtifactSpec:
        spec = spec or os.environ.get("MINT_ARTIFACTS") or "local"
        if spec == "local":
            return cls("local", path=home.artifacts)
        url = urlsplit(spec)
        if url.scheme == "file":
            return cls("local", path=Path(url.path))
        if url.scheme == "s3" and url.netloc:
            prefix = url.path.strip("/")
            return cls(
                "s3",
                bucket=url.netloc,
                prefix=f"{prefix}/" if prefix else "",
                endpoint_url=os.environ.get("AWS_ENDPOINT_URL"),
            )
        raise ConfigError(f"artifacts: {spec!r} is not local, file:///DIR or s3://BUCKET[/PREFIX]")


@asynccontextmanager
async def open_artifacts(spec: ArtifactSpec) -> AsyncIterator[ArtifactStore]:
    if spec.kind == "local":
        assert spec.path is not None
        yield LocalArtifactStore(spec.path)
        return
    from mint.artifacts.s3 import S3ArtifactStore  # only S3 deployments import aiobotocore

    async with S3ArtifactStore.connect(
        spec.bucket, prefix=spec.prefix, endpoint_url=spec.endpoint_url
    ) as store:
        yield store
