"""The disk tier over a real local artifact store: a cached copy that rotted is dropped and fetched from
the store again, and only a store copy that fails its check is an error."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mint.adapters.peft_layout import CONFIG_FILE, WEIGHTS_FILE, read_peft
from mint.artifacts.keys import adapter_key
from mint.artifacts.local import LocalArtifactStore
from mint.artifacts.store import ArtifactCorrupt
from mint.bases.info import read_base_info
from mint.serving.fetch import AdapterFetcher
from tests.engine_fixtures import make_adapter

pytestmark = pytest.mark.anyio


async def _stored(base_dir: Path, tmp_path: Path) -> tuple[AdapterFetcher, str, str]:
    """An adapter exported into a local store; a fetcher over it; the store key and the sha256."""
    adapter = make_adapter(base_dir, tmp_path / "exported", "acme/a@r1", seed=3)
    store = LocalArtifactStore(tmp_path / "artifacts")
    key = adapter_key("acme/a", "r1", adapter.sha256)
    await store.put(key, adapter.directory / WEIGHTS_FILE)
    return AdapterFetcher(store, tmp_path / "cache"), key, adapter.sha256


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # in the tensor data: the header still parses, the sha256 no longer matches
    path.write_bytes(bytes(data))


async def test_a_corrupt_cached_copy_is_dropped_and_fetched_from_the_store(
    base_dir: Path, tmp_path: Path
) -> None:
    fetcher, key, sha256 = await _stored(base_dir, tmp_path)
    assert (await fetcher.fetch("acme/a@r1", key, sha256, 4)).source == "store"
    assert (await fetcher.fetch("acme/a@r1", key, sha256, 4)).source == "disk"
    cached = fetcher.directory(sha256) / WEIGHTS_FILE
    _flip_last_byte(cached)

    again = await fetcher.fetch("acme/a@r1", key, sha256, 4)
    assert again.source == "store", "the rotten copy was not handed out"
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == sha256
    read_peft(again.adapter.directory, read_base_info(base_dir), expected_sha256=sha256)  # an engine's check
    assert (await fetcher.fetch("acme/a@r1", key, sha256, 4)).source == "disk", "fetched once, then cached"
    assert sorted(p.name for p in fetcher.cache.iterdir()) == [sha256], "nothing of the bad copy is left"


async def test_a_cached_config_that_disagrees_with_its_weights_is_fetched_again(
    base_dir: Path, tmp_path: Path
) -> None:
    fetcher, key, sha256 = await _stored(base_dir, tmp_path)
    await fetcher.fetch("acme/a@r1", key, sha256, 4)
    config = fetcher.directory(sha256) / CONFIG_FILE
    written = config.read_text()
    config.write_text(written.replace('"r": 4', '"r": 8'))

    assert (await fetcher.fetch("acme/a@r1", key, sha256, 4)).source == "store"
    assert config.read_text() == written


async def test_only_a_corrupt_store_copy_fails_the_fetch(base_dir: Path, tmp_path: Path) -> None:
    fetcher, key, sha256 = await _stored(base_dir, tmp_path)
    await fetcher.fetch("acme/a@r1", key, sha256, 4)
    _flip_last_byte(fetcher.directory(sha256) / WEIGHTS_FILE)
    _flip_last_byte(tmp_path / "artifacts" / key)

    with pytest.raises(ArtifactCorrupt, match="does not match"):
        await fetcher.fetch("acme/a@r1", key, sha256, 4)
    assert list(fetcher.cache.iterdir()) == [], "neither the bad cached copy nor a partial download is left"
