"""Other names a base answers to: hub-style `ORG/NAME` names (`meta-llama/Llama-3.2-1B`) that clients
such as tinker-cookbook pass unchanged as the base model and pick their chat renderer from.

A base's aliases are listed in `aliases.json` in its directory (`mint base create|import … --alias`).
A base directory may also be named with a slash itself (`$MINT_HOME/bases/ORG/NAME/`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

ALIASES_FILE = "aliases.json"
ALIAS_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}/[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_ALIAS = re.compile(ALIAS_PATTERN)


class AliasError(ValueError):
    """A name that cannot be an alias, or an unreadable aliases file; the message says which."""


def check_alias(alias: str) -> str:
    if not _ALIAS.match(alias):
        raise AliasError(f"alias {alias!r}: must be ORG/NAME (letters, digits, '.', '_', '-')")
    return alias


def read_aliases(directory: Path) -> list[str]:
    """The aliases the base in `directory` lists (none without an aliases file)."""
    file = directory / ALIASES_FILE
    if not file.is_file():
        return []
    try:
        aliases = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AliasError(f"{file}: unreadable: {exc}") from None
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise AliasError(f"{file}: must be a JSON list of ORG/NAME strings")
    return [check_alias(a) for a in aliases]


def add_aliases(directory: Path, aliases: list[str]) -> list[str]:
    """List `aliases` for the base in `directory` beside those it has; returns them all. The file is
    replaced in one rename, so a reader never sees half of it."""
    merged = sorted({*read_aliases(directory), *(check_alias(a) for a in aliases)})
    staging = directory / f".{ALIASES_FILE}.partial"
    staging.write_text(json.dumps(merged, indent=2) + "\n")
    os.replace(staging, directory / ALIASES_FILE)
    return merged
