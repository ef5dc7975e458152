"""A home holds every tenant's data, so no other local user may read it: after a real start (the log,
tokens, the first admin token, projections, actor state, the adapter cache) every directory is 0700
and every file 0600, SQLite's -wal and -shm included; a home made 0755/0644 before is tightened when
it is opened, and nothing outside the paths MinT keeps is touched."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from actors.runtime import Backoff
from actors.system import running
from events.sqlite_log import SqliteLog
from mint.auth.tokens import TokenStore, issue_first_admin
from mint.catalog.queries import Catalog
from mint.home import Home
from tests.records import exported, register

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """Start from the umask most systems give (files 0644): the home, not the caller, makes it private."""
    before = os.umask(0o022)
    yield
    os.umask(before)


def _modes(root: Path) -> dict[str, int]:
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for here, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            path = Path(here) / name
            found[path.relative_to(root).as_posix()] = stat.S_IMODE(path.lstat().st_mode)
    return found


def _too_open(modes: dict[str, int]) -> dict[str, str]:
    return {path: oct(mode) for path, mode in modes.items() if mode & 0o077}


async def test_a_started_home_is_its_owners_alone(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    async with (
        SqliteLog(home.log, partitions=2) as log,
        running(home, log, backoff=Backoff(0.001, 0.01)) as system,
    ):
        tokens = TokenStore(home.tokens)
        assert issue_first_admin(tokens, home.admin_token) is not None
        tokens.issue("acme", "reader")
        await log.append([register("acme/a"), exported("acme/a", "r1")])
        with anyio.fail_after(30):
            await system.until(lambda: Catalog(home.catalog).policy("acme/a") is not None)
        modes = _modes(home.root)  # while running: the -wal and -shm files exist now
        tokens.close()
    for expected in (
        "log.db",
        "log.db-wal",
        "tokens.db",
        "tokens.db-wal",
        "admin.token",
        "projections/catalog.db",
    ):
        assert expected in modes, f"{expected} was not created; the test checks too little"
    assert any(p.startswith("actors/") and p.endswith(".db") for p in modes)
    assert _too_open(modes) == {}
    assert {m for p, m in modes.items() if (home.root / p).is_dir()} == {0o700}


def test_a_token_store_is_private_outside_a_home_too(tmp_path: Path) -> None:
    with TokenStore(tmp_path / "tokens.db") as store:
        store.issue("acme", "reader")
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes["tokens.db"] == 0o600 and modes["tokens.db-wal"] == 0o600


def test_an_open_home_is_tightened_and_nothing_else_is_touched(tmp_path: Path) -> None:
    root = tmp_path / "home"
    kept = [
        "log.db",
        "log.db-wal",
        "tokens.db",
        "admin.token",
        "projections/catalog.db",
        "actors/projector.db",
        "artifacts/adapters/acme/a/r1/x/adapter_model.safetensors",
        "cache/adapters/abc/adapter_config.json",
        "tinker/jwt.key",
    ]
    for name in [*kept, "notes.txt", "shared/readme.md"]:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        path.write_text("x")
        path.chmod(0o644)
    for directory in (p for p in root.rglob("*") if p.is_dir()):
        directory.chmod(0o755)
    root.chmod(0o755)

    Home(root)
    modes = _modes(root)
    assert _too_open(modes) == {
        "notes.txt": "0o644",
        "shared": "0o755",
        "shared/readme.md": "0o644",
    }, "every path MinT keeps is private; what else lives there is not MinT's to change"
    assert modes["."] == 0o700 and all(modes[name] == 0o600 for name in kept)


async def test_artifacts_cache_and_bases_are_private(tmp_path: Path) -> None:
    from mint.adapters.peft_layout import WEIGHTS_FILE
    from mint.artifacts.keys import adapter_key
    from mint.artifacts.local import LocalArtifactStore
    from mint.bases.tiny import create_tiny_base
    from mint.serving.fetch import AdapterFetcher
    from tests.engine_fixtures import make_adapter

    home = Home(tmp_path / "home")
    create_tiny_base(home.base("tiny"), seed=0)
    adapter = make_adapter(home.base("tiny"), home.cache / "exports", "acme/a@r1", seed=1)
    store = LocalArtifactStore(home.artifacts)
    key = adapter_key("acme/a", "r1", adapter.sha256)
    await store.put(key, adapter.directory / WEIGHTS_FILE)
    fetched = await AdapterFetcher(store, home.cache / "adapters").fetch("acme/a@r1", key, adapter.sha256, 4)
    assert fetched.source == "store"
    modes = _modes(home.root)
    assert f"artifacts/{key}" in modes and any(p.startswith("bases/tiny/") for p in modes)
    assert _too_open(modes) == {}
