"""The packed layout: one contiguous little-endian buffer (adapter.data) and a small JSON index
(adapter.index.json) of name -> dtype, shape, offset, for loads that are one read plus views.

Each tensor starts on a 64-byte boundary, so every view is aligned for any dtype and SIMD loads. The
index carries the config, the adapter's content address (sha256 of its canonical PEFT file, so packing
never changes an adapter's identity) and the sha256 of the buffer (so a load can check its bytes without
re-encoding anything). Converting PEFT <-> packed copies bytes only, so the round trip is bit-exact.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mint.adapters.adapter import Adapter, AdapterError, LoraConfig
from mint.adapters.peft_layout import adapter_sha256, refuse_pickle_files
from mint.adapters.validate import check_against_base, check_structure
from mint.bases.info import BaseInfo
from mint.bases.safetensors_file import RawTensor, byte_size, tensor_spec
from mint.bases.staging import staged_directory

INDEX_FILE = "adapter.index.json"
DATA_FILE = "adapter.data"
FORMAT = "mint-packed-lora/1"
ALIGNMENT = 64


@dataclass(frozen=True)
class PackedEntry:
    dtype: str
    shape: tuple[int, ...]
    offset: int

    @property
    def nbytes(self) -> int:
        return byte_size(self.dtype, self.shape)


@dataclass(frozen=True)
class PackedIndex:
    config: LoraConfig
    sha256: str  # the adapter's content address (its canonical PEFT file)
    data_sha256: str  # of adapter.data
    data_bytes: int
    tensors: dict[str, PackedEntry]


def write_packed(directory: Path, adapter: Adapter) -> PackedIndex:
    """Write the adapter into `directory` (absent or empty), all or nothing."""
    directory = Path(directory)
    check_structure(adapter.config, adapter.tensors, directory / INDEX_FILE)
    entries: dict[str, PackedEntry] = {}
    chunks: list[bytes] = []
    offset = 0
    for name in sorted(adapter.tensors):
        tensor = adapter.tensors[name]
        padding = -offset % ALIGNMENT
        chunks.append(bytes(padding))
        offset += padding
        entries[name] = PackedEntry(tensor.dtype, tensor.shape, offset)
        chunks.append(tensor.data)
        offset += len(tensor.data)
    data = b"".join(chunks)
    index = PackedIndex(
        adapter.config, adapter_sha256(adapter), hashlib.sha256(data).hexdigest(), len(data), entries
    )
    with staged_directory(directory) as staging:
        (staging / DATA_FILE).write_bytes(data)
        (staging / INDEX_FILE).write_text(json.dumps(_index_json(index), indent=1) + "\n")
    return index


def read_packed(directory: Path, base: BaseInfo | None = None) -> Adapter:
    """Read and check a packed adapter (e.g. to convert it back to PEFT): buffer hash, structure, fit to
    `base` if given, and that the tensors still have the content address the index claims."""
    directory = Path(directory)
    index = read_packed_index(directory, base)
    try:
        data = (directory / DATA_FILE).read_bytes()
    except OSError as exc:
        raise AdapterError(directory / DATA_FILE, f"unreadable: {exc.strerror or exc}") from None
    check_data(directory, index, data)
    tensors = {
        name: RawTensor(e.dtype, e.shape, data[e.offset : e.offset + e.nbytes])
        for name, e in index.tensors.items()
    }
    adapter = Adapter(index.config, tensors)
    if (actual := adapter_sha256(adapter)) != index.sha256:
        raise AdapterError(
            directory / INDEX_FILE,
            f"sha256 {index.sha256} in the index, but the tensors' content address is {actual}",
        )
    return adapter


def read_packed_index(directory: Path, base: BaseInfo | None = None) -> PackedIndex:
    """The index, checked on its own (layout, structure, fit to `base`) before any tensor data is read."""
    refuse_pickle_files(directory)
    path = directory / INDEX_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise AdapterError(path, "missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(path, f"unreadable: {exc}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise AdapterError(path, f"not a packed adapter index (expected format {FORMAT!r})")
    config = LoraConfig.from_json(raw.get("config"), path)
    data_bytes = raw.get("data_bytes")
    if type(data_bytes) is not int or data_bytes < 0:
        raise AdapterError(path, f"field 'data_bytes' must be a non-negative integer, got {data_bytes!r}")
    sha256, data_sha256 = raw.get("sha256"), raw.get("data_sha256")
    for field, value in (("sha256", sha256), ("data_sha256", data_sha256)):
        if not isinstance(value, str):
            raise AdapterError(path, f"field {field!r} must be a sha256 hex string, got {value!r}")
    tensors_raw = raw.get("tensors")
    if not isinstance(tensors_raw, dict):
        raise AdapterError(path, "field 'tensors' must be an object")
    entries = {name: _entry(path, name, spec, data_bytes) for name, spec in tensors_raw.items()}
    previous_end, previous = 0, ""
    for name, entry in sorted(entries.items(), key=lambda item: item[1].offset):
        if entry.offset < previous_end:
            raise AdapterError(path, f"tensor {name!r} overlaps tensor {previous!r}")
        previous_end, previous = entry.offset + entry.nbytes, name
    check_structure(config, entries, path)
    if base is not None:
        check_against_base(config, entries, base, path)
    return PackedIndex(config, str(sha256), str(data_sha256), data_bytes, entries)


def check_data(directory: Path, index: PackedIndex, data: bytes | bytearray) -> None:
    path = directory / DATA_FILE
    if len(data) != index.data_bytes:
        raise AdapterError(path, f"holds {len(data)} bytes, the index says {index.data_bytes}")
    if (actual := hashlib.sha256(data).hexdigest()) != index.data_sha256:
        raise AdapterError(
            path, f"sha256 {actual} does not match the index's data_sha256 {index.data_sha256}"
        )


def _entry(path: Path, name: str, spec: object, data_bytes: int) -> PackedEntry:
    where = f"tensor {name!r}"
    dtype, shape, fields = tensor_spec(path, name, spec, AdapterError)
    offset = fields.get("offset")
    if type(offset) is not int or offset < 0 or offset % ALIGNMENT:
        raise AdapterError(path, f"{where}: offset {offset!r} is not a {ALIGNMENT}-byte aligned byte offset")
    entry = PackedEntry(dtype, shape, offset)
    if entry.offset + entry.nbytes > data_bytes:
        raise AdapterError(
            path, f"{where}: bytes {offset}..{offset + entry.nbytes} run past data_bytes {data_bytes}"
        )
    return entry


def _index_json(index: PackedIndex) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "config": index.config.as_json(),
        "sha256": index.sha256,
        "data_sha256": index.data_sha256,
        "data_bytes": index.data_bytes,
        "tensors": {
            name: {"dtype": e.dtype, "shape": list(e.shape), "offset": e.offset}
            for name, e in index.tensors.items()
        },
    }
