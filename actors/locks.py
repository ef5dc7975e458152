"""One process per actor per home: an actor's state file has a single writer.

Each actor holds an exclusive advisory lock on `$MINT_HOME/actors/<name>.lock` while it runs in this
process. A second `mint up` on the same home is refused with the name of the process that holds it,
and `mint train` knows to act as a client of the running one instead of starting actors itself.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from mint.home import Home


class ActorAlreadyRunning(RuntimeError):
    def __init__(self, name: str, path: Path, holder: str) -> None:
        super().__init__(f"actor {name!r} already runs on this home ({path}, held by pid {holder or '?'})")
        self.name = name


@contextmanager
def held_lock(path: Path, name: str) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ActorAlreadyRunning(
                name, path, os.pread(fd, 32, 0).decode(errors="replace").strip()
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextmanager
def actor_locks(home: Home, names: list[str]) -> Iterator[None]:
    with ExitStack() as stack:
        for name in names:
            stack.enter_context(held_lock(home.actors / f"{name}.lock", name))
        yield


def actor_runs(home: Home, name: str) -> bool:
    """Whether some process holds actor `name`'s lock on this home now."""
    path = home.actors / f"{name}.lock"
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also releases the probe's own lock
    return False
