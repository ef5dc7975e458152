"""The artifact store's contract, written once (ArtifactStoreContract) and run on each backend: a local
directory, and S3 through aiobotocore against a real S3-protocol server (moto) on loopback."""

from __future__ import annotations

import hashlib
import io
import itertools
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.from_thread
import pytest

from mint.artifacts.keys import InvalidKey, adapter_key, check_key, embedded_sha256
from mint.artifacts.local import PARTIAL_DIR, LocalArtifactStore
from mint.artifacts.store import (
    ArtifactCorrupt,
    ArtifactExists,
    ArtifactMissing,
    ArtifactStore,
    StoredArtifact,
)

if TYPE_CHECKING:  # imported by the fixture, so a missing aiobotocore skips only the S3 tests
    from mint.artifacts.s3 import S3ArtifactStore

Tamper = Callable[[str, bytes], Awaitable[None]]  # overwrite an object's bytes behind the store's back
PART = 5 << 20  # the smallest S3 part size, so multi-part puts stay quick


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _addressed(data: bytes, policy: str = "acme/support-bot", revision: str = "r1") -> str:
    return adapter_key(policy, revision, _sha(data))


class FailingReader(io.RawIOBase):
    """A source that breaks after `fail_after` bytes, as a dying disk or a dropped upload stream would."""

    def __init__(self, data: bytes, fail_after: int) -> None:
        self._data = io.BytesIO(data)
        self._left = fail_after

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._left <= 0:
            raise OSError("source failed mid-read")
        n = self._data.readinto(buffer[: min(len(buffer), self._left)])
        self._left -= n
        return n


class StallingReader(io.RawIOBase):
    """A source that, at `stall_at` bytes, signals `stalled` and blocks its reading thread until `release`."""

    def __init__(self, data: bytes, stall_at: int, stalled: anyio.Event, release: threading.Event) -> None:
        self._data = io.BytesIO(data)
        self._stall_at = stall_at
        self._stalled = stalled
        self._release = release

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._data.tell() == self._stall_at and not self._release.is_set():
            anyio.from_thread.run_sync(self._stalled.set)
            self._release.wait()
        limit = self._stall_at - self._data.tell() if self._data.tell() < self._stall_at else len(buffer)
        return self._data.readinto(buffer[: min(len(buffer), limit)])


async def _cancel_mid_put(store: ArtifactStore, key: str) -> None:
    """Start a put of three parts' worth, cancel it once two parts are read (on S3: uploaded)."""
    stalled, release = anyio.Event(), threading.Event()
    reader = StallingReader(b"x" * (3 * PART), stall_at=2 * PART, stalled=stalled, release=release)
    async with anyio.create_task_group() as tg:
        tg.start_soon(store.put, key, reader)
        await stalled.wait()
        tg.cancel_scope.cancel()
        release.set()


@pytest.mark.anyio
class ArtifactStoreContract:
    """Subclasses provide the fixtures `store` (an empty store) and `tamper`."""

    async def test_put_then_read_get_exists(self, store: ArtifactStore, tmp_path: Path) -> None:
        data = b"adapter bytes " * 1000
        key = _addressed(data)
        assert not await store.exists(key)
        stored = await store.put(key, data)
        assert stored == StoredArtifact(key, _sha(data), len(data))
        assert await store.exists(key)
        assert await store.read(key) == data
        dest = await store.get(key, tmp_path / "down" / "adapter_model.safetensors")
        assert dest.read_bytes() == data
        assert [p.name for p in dest.parent.iterdir()] == [dest.name], "no temporary file left beside it"

    async def test_sources_bytes_path_and_stream(self, store: ArtifactStore, tmp_path: Path) -> None:
        data = bytes(range(256)) * 300
        (tmp_path / "source").write_bytes(data)
        await store.put("from/bytes", data)
        await store.put("from/path", tmp_path / "source")
        await store.put("from/stream", io.BytesIO(data))
        assert {await store.read(k) for k in await store.list("from/")} == {data}

    async def test_keys_are_write_once(self, store: ArtifactStore) -> None:
        await store.put("runs/acme/r1/state.bin", b"first")
        with pytest.raises(ArtifactExists) as caught:
            await store.put("runs/acme/r1/state.bin", b"second")
        assert caught.value.key == "runs/acme/r1/state.bin"
        assert "'runs/acme/r1/state.bin'" in str(caught.value) and "write-once" in str(caught.value)
        assert await store.read("runs/acme/r1/state.bin") == b"first"

    async def test_putting_identical_bytes_again_is_a_no_op(self, store: ArtifactStore) -> None:
        data = b"same" * 100
        key = _addressed(data)
        first = await store.put(key, data)
        assert await store.put(key, io.BytesIO(data)) == first
        assert await store.list() == [key]

    async def test_a_missing_key_is_an_error_naming_it(self, store: ArtifactStore, tmp_path: Path) -> None:
        key = _addressed(b"never stored")
        for call in (store.read(key), store.get(key, tmp_path / "dest")):
            with pytest.raises(ArtifactMissing) as caught:
                await call
            assert caught.value.key == key and repr(key) in str(caught.value)
        assert not (tmp_path / "dest").exists()
        assert not await store.exists(key)

    async def test_corrupt_objects_are_refused_on_read(
        self, store: ArtifactStore, tamper: Tamper, tmp_path: Path
    ) -> None:
        data = b"the real adapter" * 64
        key = _addressed(data)
        await store.put(key, data)
        await tamper(key, b"the real adapteR" + data[16:])
        with pytest.raises(ArtifactCorrupt) as caught:
            await store.read(key)
        assert caught.value.key == key
        assert f"does not match {_sha(data)} (the sha256 the key embeds)" in str(caught.value)
        dest = tmp_path / "dest" / "adapter_model.safetensors"
        dest.parent.mkdir()
        with pytest.raises(ArtifactCorrupt, match=repr(key)):
            await store.get(key, dest)
        assert list(dest.parent.iterdir()) == [], "a failed get leaves no file, partial or whole"

    async def test_verify_checks_keys_without_an_embedded_sha(
        self, store: ArtifactStore, tmp_path: Path
    ) -> None:
        await store.put("plain/key", b"content")
        assert await store.read("plain/key", verify=_sha(b"content")) == b"content"
        with pytest.raises(ArtifactCorrupt, match="the sha256 to verify"):
            await store.read("plain/key", verify=_sha(b"other"))
        with pytest.raises(ArtifactCorrupt):
            await store.get("plain/key", tmp_path / "dest", verify=_sha(b"other"))
        assert not (tmp_path / "dest").exists()

    async def test_content_that_does_not_match_its_key_is_never_stored(self, store: ArtifactStore) -> None:
        key = _addressed(b"what the key says")
        with pytest.raises(ArtifactCorrupt, match=repr(key)):
            await store.put(key, b"something else")
        assert not await store.exists(key)
        assert await store.list() == []

    async def test_an_interrupted_put_leaves_nothing_visible(self, store: ArtifactStore) -> None:
        data = bytes(range(256)) * (
            (2 * PART + PART // 2) // 256
        )  # S3 uploads two parts, then the read fails
        with pytest.raises(OSError, match="source failed mid-read"):
            await store.put("big/object", FailingReader(data, fail_after=2 * PART + 1000))
        assert not await store.exists("big/object")
        assert await store.list() == []
        stored = await store.put("big/object", data)
        assert stored.size == len(data)
        assert await store.read("big/object", verify=_sha(data)) == data

    async def test_a_cancelled_put_leaves_nothing_visible(self, store: ArtifactStore) -> None:
        await _cancel_mid_put(store, "cancelled/object")
        assert not await store.exists("cancelled/object")
        assert await store.list() == []

    async def test_list_by_prefix(self, store: ArtifactStore) -> None:
        keys = [
            "adapters/acme/bot/r1/x.safetensors",
            "adapters/acme/bot/r2/x.safetensors",
            "adapters/acme/bottle/r1/x.safetensors",
            "adapters/beta/bot/r1/x.safetensors",
            "runs/acme/bot/state",
        ]
        for key in reversed(keys):
            await store.put(key, key.encode())
        assert await store.list() == keys
        assert await store.list("adapters/acme/") == keys[:3]
        assert await store.list("adapters/acme/bot/") == keys[:2]
        assert await store.list("adapters/acme/bot") == keys[:3], "a prefix is a string prefix"
        assert await store.list("adapters/gamma/") == []

    async def test_invalid_keys_are_refused(self, store: ArtifactStore) -> None:
        for key in ("", "/abs", "a//b", "../up", "a/../b", ".hidden/x", "a/b/", "sp ace"):
            with pytest.raises(InvalidKey):
                await store.put(key, b"x")


class TestLocalArtifactStore(ArtifactStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> LocalArtifactStore:
        return LocalArtifactStore(tmp_path / "artifacts")

    @pytest.fixture
    def tamper(self, store: LocalArtifactStore) -> Tamper:
        async def overwrite(key: str, data: bytes) -> None:
            (store.root / key).write_bytes(data)

        return overwrite

    async def test_racing_puts_of_one_key_have_one_winner(self, store: ArtifactStore) -> None:
        """Local only: S3 decides conditional writes atomically, but moto (the test server) checks
        If-None-Match and then writes without a lock, so it cannot show this."""
        outcomes: list[str] = []

        async def put(data: bytes) -> None:
            try:
                await store.put("race/key", data)
                outcomes.append("stored")
            except ArtifactExists:
                outcomes.append("refused")

        async with anyio.create_task_group() as tg:
            for n in range(4):
                tg.start_soon(put, f"writer {n}".encode())
        assert sorted(outcomes) == ["refused", "refused", "refused", "stored"]
        assert (await store.read("race/key")).startswith(b"writer ")

    async def test_leftovers_of_a_crash_stay_out_of_sight(self, store: LocalArtifactStore) -> None:
        await store.put("a/b", b"1")
        (store.root / PARTIAL_DIR / ".b.crashed.partial").write_bytes(b"half")
        assert await store.list() == ["a/b"]


# --- S3 through a real S3-protocol server ------------------------------------------------------------------


_buckets = itertools.count()


class TestS3ArtifactStore(ArtifactStoreContract):
    @pytest.fixture
    async def store(self, moto_endpoint: str) -> AsyncIterator[S3ArtifactStore]:
        s3 = pytest.importorskip("mint.artifacts.s3", reason="the S3 tests need aiobotocore (the test extra)")

        bucket = f"mint-test-{next(_buckets)}"
        async with s3.S3ArtifactStore.connect(
            bucket,
            prefix="store/",
            endpoint_url=moto_endpoint,
            region="us-east-1",
            access_key="test",
            secret_key="test",
            part_size=PART,
        ) as store:
            await store.client.create_bucket(Bucket=bucket)
            yield store

    @pytest.fixture
    def tamper(self, store: S3ArtifactStore) -> Tamper:
        async def overwrite(key: str, data: bytes) -> None:
            await store.client.put_object(Bucket=store.bucket, Key=store.prefix + key, Body=data)

        return overwrite

    async def test_a_failed_or_cancelled_multipart_put_leaves_no_parts_behind(
        self, store: S3ArtifactStore
    ) -> None:
        with pytest.raises(OSError):
            await store.put("failed", FailingReader(b"y" * (3 * PART), fail_after=2 * PART + 1))
        await _cancel_mid_put(store, "cancelled")
        uploads = await store.client.list_multipart_uploads(Bucket=store.bucket)
        assert uploads.get("Uploads", []) == []

    async def test_objects_live_under_the_prefix(self, store: S3ArtifactStore) -> None:
        await store.put("k", b"v")
        listed = await store.client.list_objects_v2(Bucket=store.bucket)
        assert [o["Key"] for o in listed["Contents"]] == ["store/k"]


# --- keys ----------------------------------------------------------------------------------------------


def test_adapter_keys_embed_the_sha256() -> None:
    sha = _sha(b"weights")
    key = adapter_key("acme/support-bot", "r7", sha)
    assert key == f"adapters/acme/support-bot/r7/{sha}/adapter_model.safetensors"
    assert embedded_sha256(key) == sha
    assert embedded_sha256("adapters/acme/support-bot/r7/adapter_model.safetensors") is None
    with pytest.raises(ValueError, match="not 64 lowercase hex digits"):
        adapter_key("acme/bot", "r1", sha.upper())
    assert check_key("_system/engines/e1@3=ok+x") == "_system/engines/e1@3=ok+x"
