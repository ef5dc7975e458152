"""JSON codec for records: encode, decode with upcasting, and errors that name the record and field."""

from __future__ import annotations

import re
from typing import Annotated, Any, TypeVar

import msgspec

from events.envelope import Record
from events.schema import BY_NAME, CURRENT_VERSION, AnyRecord
from events.upcasting import UpcastError, upcast

RecordT = TypeVar("RecordT", bound=Record)


class UnknownRecord(msgspec.Struct, frozen=True, gc=False):
    """A record whose type this build does not know: the log and replay tools keep it, folds skip it."""

    type: str
    v: int
    id: str
    key: str
    raw: bytes


class RecordError(ValueError):
    """A record that does not decode or validate. The message names the record and the field."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message

    @property
    def field(self) -> str | None:
        return field_of(self.message)


_AT_PATH = re.compile(r"at `\$\.([^`]+)`")
_MISSING = re.compile(r"(?:missing required|unknown) field `([^`]+)`")
_NAMED = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*): ")


def field_of(message: str) -> str | None:
    """The field a validation message names: msgspec's `at `$.path`` or `missing required field`,
    or our own `field: why` prefix; None when it names none (the record as a whole is wrong)."""
    path, missing = _AT_PATH.search(message), _MISSING.search(message)
    if path or missing:
        return ".".join(m.group(1) for m in (path, missing) if m)
    named = _NAMED.search(message)
    return named.group(1) if named else None


class _Header(msgspec.Struct):
    type: str
    # absent means current: the published schema gives `v` that default
    v: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None
    id: str = ""
    key: str = ""


_encoder = msgspec.json.Encoder()
_header_decoder = msgspec.json.Decoder(_Header)
_decoders = {name: msgspec.json.Decoder(cls) for name, cls in BY_NAME.items()}


def encode(record: Record) -> bytes:
    return _encoder.encode(record)


def _where(header: _Header | None) -> str:
    if header is None:
        return "record"
    ident = f" {header.id!r}" if header.id else ""
    return f"record{ident} ({header.type})"


# Bytes that are not a record: not JSON, nested deeper than the decoder's stack allows, or the wrong shape.
_UNDECODABLE = (msgspec.DecodeError, RecursionError)


def _read_header(raw: bytes) -> _Header:
    try:
        return _header_decoder.decode(raw)
    except _UNDECODABLE as exc:
        raise RecordError("record", _why(exc)) from None


def _why(exc: BaseException) -> str:
    return "nested too deeply to decode" if isinstance(exc, RecursionError) else str(exc)


def read_header(raw: bytes) -> tuple[str, int, str, str]:
    """(type, v, id, key) of an encoded record, without validating the rest."""
    header = _read_header(raw)
    return header.type, _version(header), header.id, header.key


def _version(header: _Header) -> int:
    return header.v if header.v is not None else CURRENT_VERSION.get(header.type, 1)


def decode(raw: bytes, type_name: str | None = None, version: int | None = None) -> Record | UnknownRecord:
    """Decode stored bytes. `type_name`/`version` come from the log's headers when it has them (the
    fast path: one typed decode). Unknown types come back as UnknownRecord; invalid ones raise."""
    header: _Header | None = None
    if type_name is None or version is None:
        header = _read_header(raw)
        type_name, version = header.type, _version(header)
    cls = BY_NAME.get(type_name)
    if cls is None:
        header = header or _read_header(raw)
        return UnknownRecord(type=type_name, v=version, id=header.id, key=header.key, raw=raw)
    try:
        if version == CURRENT_VERSION[type_name]:
            record: Record = _decoders[type_name].decode(raw)
            return record
        fields: dict[str, Any] = msgspec.json.decode(raw)
        lifted = upcast(cls, fields, version, CURRENT_VERSION[type_name])
        upcasted: Record = msgspec.convert(lifted, cls)
        return upcasted
    except (*_UNDECODABLE, UpcastError) as exc:
        raise RecordError(_where(header or _safe_header(raw)), _why(exc)) from None


def validate(raw: bytes) -> Record:
    """Decode a record from an upstream producer: unknown types are refused here, not kept."""
    header = _safe_header(raw)
    record = decode(raw)
    if isinstance(record, UnknownRecord):
        known = ", ".join(sorted(BY_NAME))
        raise RecordError(_where(header), f"type: unknown record type {record.type!r} (known: {known})")
    return record


def checked(record: RecordT) -> RecordT:
    """`record` as a reader would decode it: building a Struct in this process does not check the
    schema's constraints (ranges, patterns), decoding does. A record made from user input passes
    through here before it is appended, so what its deciders would refuse as poison is refused now."""
    validate(encode(record))
    return record


def _safe_header(raw: bytes) -> _Header | None:
    try:
        return _header_decoder.decode(raw)
    except _UNDECODABLE:
        return None


# Re-exported for readers that want the union type.
__all__ = [
    "AnyRecord",
    "RecordError",
    "UnknownRecord",
    "checked",
    "decode",
    "encode",
    "read_header",
    "validate",
]
