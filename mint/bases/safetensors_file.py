"""The safetensors file format, read and written without torch.

A safetensors file is an 8-byte little-endian header length, a JSON header (name -> dtype, shape, byte
range; plus an optional string map `__metadata__`), then the tensor bytes. Parsing the header ourselves
lets the control plane read a base's module shapes from a 500 MB file by reading a few kilobytes, and
lets adapters be written in one canonical byte layout, so that their sha256 is a content address.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Bytes per element of each dtype the format names.
DTYPE_SIZES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "U16": 2,
    "I16": 2,
    "F16": 2,
    "BF16": 2,
    "U32": 4,
    "I32": 4,
    "F32": 4,
    "U64": 8,
    "I64": 8,
    "F64": 8,
}
# The reference implementation refuses larger headers; so do we, before allocating them.
MAX_HEADER_BYTES = 100_000_000
METADATA_KEY = "__metadata__"


class FileProblem(ValueError):
    """A file refused as bad input: `path` is the file, `problem` says what is wrong with it."""

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem


class SafetensorsError(FileProblem):
    """A file that is not a well-formed safetensors file."""


def tensor_spec(
    path: Path, name: str, spec: object, error: type[FileProblem]
) -> tuple[str, tuple[int, ...], dict[str, Any]]:
    """(dtype, shape, the whole entry) of one tensor's entry in a header or index, or `error` naming
    the file and the tensor: the checks every layout that describes tensors in JSON shares."""
    where = f"tensor {name!r}"
    if not isinstance(spec, dict):
        raise error(path, f"{where}: entry is not a JSON object")
    dtype, shape = spec.get("dtype"), spec.get("shape")
    if dtype not in DTYPE_SIZES:
        raise error(path, f"{where}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise error(path, f"{where}: shape {shape!r} is not a list of non-negative integers")
    return str(dtype), tuple(shape), spec


@dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]
    begin: int  # byte range within the data section
    end: int


@dataclass(frozen=True)
class Header:
    metadata: dict[str, str]
    tensors: dict[str, TensorEntry]
    data_start: int  # file offset of the data section


@dataclass(frozen=True)
class RawTensor:
    """A tensor as the format stores it: dtype name, shape and little-endian bytes."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes

    def __post_init__(self) -> None:
        expected = byte_size(self.dtype, self.shape)
        if len(self.data) != expected:
            raise ValueError(f"{self.dtype}{list(self.shape)} needs {expected} bytes, got {len(self.data)}")


def byte_size(dtype: str, shape: tuple[int, ...]) -> int:
    return math.prod(shape) * DTYPE_SIZES[dtype]


def read_header(path: Path) -> Header:
    """The header alone: reads 8 + header-length bytes, whatever the size of the file."""
    try:
        with path.open("rb") as f:
            file_size = path.stat().st_size
            prefix = f.read(8)
            header_len = _header_length(path, prefix, file_size)
            return _parse(path, f.read(header_len), file_size)
    except OSError as exc:
        raise SafetensorsError(path, f"cannot read: {exc.strerror or exc}") from None


def read_tensors(path: Path) -> tuple[dict[str, str], dict[str, RawTensor]]:
    """Metadata and every tensor, from one read of the whole file."""
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise SafetensorsError(path, f"cannot read: {exc.strerror or exc}") from None
    header_len = _header_length(path, blob[:8], len(blob))
    header = _parse(path, blob[8 : 8 + header_len], len(blob))
    start = header.data_start
    tensors = {
        name: RawTensor(e.dtype, e.shape, blob[start + e.begin : start + e.end])
        for name, e in header.tensors.items()
    }
    return header.metadata, tensors


def encode(tensors: Mapping[str, RawTensor], metadata: Mapping[str, str]) -> bytes:
    """The canonical file for these tensors: names in sorted order, data packed in that order without
    gaps, header as compact sorted-key JSON padded with spaces to 8 bytes (so data starts aligned).
    The same tensors and metadata always give the same bytes."""
    header: dict[str, Any] = {METADATA_KEY: dict(metadata)} if metadata else {}
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        header[name] = {
            "dtype": t.dtype,
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(t.data)],
        }
        offset += len(t.data)
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    text += b" " * (-len(text) % 8)
    return b"".join([struct.pack("<Q", len(text)), text, *(tensors[n].data for n in sorted(tensors))])


def _header_length(path: Path, prefix: bytes, file_size: int) -> int:
    if len(prefix) < 8:
        raise SafetensorsError(path, f"{file_size} bytes is too short for a safetensors file")
    (header_len,) = struct.unpack("<Q", prefix)
    if header_len > MAX_HEADER_BYTES or 8 + header_len > file_size:
        raise SafetensorsError(
            path, f"header length {header_len} does not fit in a file of {file_size} bytes"
        )
    return int(header_len)


def _parse(path: Path, text: bytes, file_size: int) -> Header:
    try:
        raw = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SafetensorsError(path, f"header is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise SafetensorsError(path, "header is not a JSON object")
    metadata = raw.pop(METADATA_KEY, None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise SafetensorsError(path, f"{METADATA_KEY} must map strings to strings")
    tensors = {name: _entry(path, name, spec) for name, spec in raw.items()}
    data_start = 8 + len(text)
    expected_begin = 0
    for name, entry in sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end)):
        if entry.begin != expected_begin:
            raise SafetensorsError(
                path,
                f"tensor {name!r} starts at byte {entry.begin} of the data, expected {expected_begin}"
                " (tensors must cover the data section without gaps or overlaps)",
            )
        expected_begin = entry.end
    if data_start + expected_begin != file_size:
        raise SafetensorsError(
            path, f"tensors cover {expected_begin} data bytes but the file holds {file_size - data_start}"
        )
    return Header(metadata, tensors, data_start)


def _entry(path: Path, name: str, spec: object) -> TensorEntry:
    where = f"tensor {name!r}"
    dtype, shape, fields = tensor_spec(path, name, spec, SafetensorsError)
    offsets = fields.get("data_offsets")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(type(o) is int for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise SafetensorsError(path, f"{where}: data_offsets {offsets!r} is not a [begin, end] byte range")
    entry = TensorEntry(dtype, shape, offsets[0], offsets[1])
    if entry.end - entry.begin != byte_size(entry.dtype, entry.shape):
        raise SafetensorsError(
            path,
            f"{where}: {entry.dtype}{list(shape)} needs {byte_size(entry.dtype, entry.shape)} bytes"
            f" but data_offsets span {entry.end - entry.begin}",
        )
    return entry
