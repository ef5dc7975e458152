"""Upcasting: lifting a stored record's fields from its version to the current one.

Stored bytes are never rewritten. On read, a record older than its class's current version is decoded
to a plain mapping and passed through the class's `upcast_vN_vM` static methods in turn (M = N + 1),
then validated as the current type.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from events.envelope import Record

Fields = dict[str, Any]


class UpcastError(ValueError):
    pass


def upcast(cls: type[Record], fields: Fields, stored_version: int, current_version: int) -> Fields:
    name = cls.__name__
    if stored_version > current_version:
        raise UpcastError(
            f"v: version {stored_version} of {name} is newer than this build knows ({current_version})"
        )
    for version in range(stored_version, current_version):
        step: Callable[[Fields], Fields] | None = getattr(cls, f"upcast_v{version}_v{version + 1}", None)
        if step is None:
            raise UpcastError(f"v: no upcaster for {name} v{version} -> v{version + 1}")
        fields = step(fields)
    fields["v"] = current_version
    return fields
