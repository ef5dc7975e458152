"""The protobuf half of the Tinker wire (package `tinker_public`), by hand.

tinker 0.38 sends `forward_backward` as a `ForwardBackwardRequest` and accepts only protobuf
`ForwardBackwardOutput` / `SampleResponse` results. Only those three messages are needed, so they are
coded here from the wire format (field numbers as in the SDK's `tinker_public_pb2`, which the tests'
SDK clients parse our bytes with) rather than pulling the SDK and its pydantic into the server.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from events.names import INT64_MAX
from mint.tinker.wire import (
    Datum,
    FloatArray,
    ForwardBackwardInput,
    RawTensor,
    Sequenced,
    WireError,
)

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5
MAX_VARINT_BYTES = 10  # a 64-bit value; protobuf never writes a longer one

DTYPES: dict[int, np.dtype[Any]] = {
    1: np.dtype("<f4"),
    2: np.dtype("<i8"),
    3: np.dtype("<i4"),
}  # FLOAT32, INT64, INT32
BFLOAT16 = 4
DTYPE_FLOAT32 = 1
STOP, LENGTH_LIMIT = 0, 1


# -- reading ---------------------------------------------------------------------------------------


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    for shift in range(0, 7 * MAX_VARINT_BYTES, 7):
        if pos >= len(buf):
            raise WireError("body", "truncated protobuf varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result & (1 << 64) - 1, pos
    raise WireError("body", f"a protobuf varint longer than {MAX_VARINT_BYTES} bytes")


def _int64(value: int) -> int:
    """A varint read as protobuf's int64 (two's complement)."""
    return value - (1 << 64) if value > INT64_MAX else value


def _text(value: bytes, field: str) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise WireError(field, "not UTF-8 text") from None


def _array(raw: bytes, dtype: np.dtype[Any] | str, field: str) -> np.ndarray:
    """Packed little-endian values, refused unless the bytes hold a whole number of them."""
    itemsize = np.dtype(dtype).itemsize
    if len(raw) % itemsize:
        raise WireError(field, f"{len(raw)} bytes is not a whole number of {itemsize}-byte values")
    return np.frombuffer(raw, dtype=dtype)


def _fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value): ints for varint and fixed fields, bytes for length-delimited ones."""
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        value: int | bytes
        if wire == VARINT:
            value, pos = _varint(buf, pos)
        elif wire in (FIXED64, FIXED32):
            size = 8 if wire == FIXED64 else 4
            if pos + size > len(buf):
                raise WireError("body", "truncated protobuf field")
            value, pos = int.from_bytes(buf[pos : pos + size], "little"), pos + size
        elif wire == LENGTH:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise WireError("body", "truncated protobuf field")
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise WireError("body", f"unsupported protobuf wire type {wire}")
        yield number, value


def _map_entry(buf: bytes, field: str) -> tuple[str, int | bytes]:
    key: str = ""
    value: int | bytes = b""
    for number, item in _fields(buf):
        if number == 1 and isinstance(item, bytes):
            key = _text(item, f"{field} key")
        elif number == 2:
            value = item
    return key, value


def _packed_int64(value: int | bytes) -> list[int]:
    if isinstance(value, int):
        return [_int64(value)]
    out, pos = [], 0
    while pos < len(value):
        item, pos = _varint(value, pos)
        out.append(_int64(item))
    return out


def _tensor(buf: bytes, field: str) -> RawTensor:
    dense = b""
    sparse: dict[int, bytes] = {}
    dtype = 0
    shape: list[int] = []
    for number, value in _fields(buf):
        if number == 1 and isinstance(value, bytes):
            dense = value
        elif number == 2 and isinstance(value, bytes):
            sparse = {n: v for n, v in _fields(value) if isinstance(v, bytes)}
        elif number == 3 and isinstance(value, int):
            dtype = value
        elif number == 4:
            shape += _packed_int64(value)
    data = sparse.get(1, dense)
    if dtype == BFLOAT16:
        values = (_array(data, "<u2", field).astype(np.uint32) << 16).view(np.float32)
    elif dtype in DTYPES:
        values = _array(data, DTYPES[dtype], field)
    else:
        raise WireError(f"{field}.dtype", f"unsupported tensor dtype {dtype}")
    if not sparse:
        return RawTensor(values, shape or None)
    return RawTensor(
        values,
        shape,
        _array(sparse.get(2, b""), "<i8", f"{field}.sparse_crow_indices"),
        _array(sparse.get(3, b""), "<i8", f"{field}.sparse_col_indices"),
    )


def _datum(buf: bytes, index: int) -> Datum:
    tokens: list[int] = []
    inputs: dict[str, RawTensor] = {}
    field = f"data[{index}]"
    for number, value in _fields(buf):
        if not isinstance(value, bytes):
            continue
        if number == 1:
            for kind, chunk in _fields(value):
                if kind != 1 or not isinstance(chunk, bytes):
                    raise WireError(f"{field}.model_input", "only encoded_text chunks are supported")
                for field_number, raw in _fields(chunk):
                    if field_number == 1 and isinstance(raw, bytes):
                        tokens += _array(raw, "<i4", f"{field}.model_input").tolist()
        elif number == 2:
            name, tensor = _map_entry(value, f"{field}.loss_fn_inputs")
            if isinstance(tensor, bytes):
                inputs[name] = _tensor(tensor, f"{field}.loss_fn_inputs.{name}")
    return Datum.checked(tokens, inputs, index)


def request_ids(body: bytes) -> tuple[str, int] | None:
    """(model_id, seq_id) of a ForwardBackwardRequest whose batch may be malformed, or None."""
    model_id, seq_id = "", 0
    try:
        for number, value in _fields(body):
            if number == 1 and isinstance(value, bytes):
                model_id = value.decode()
            elif number == 2 and isinstance(value, int):
                seq_id = _int64(value)
    except (WireError, UnicodeDecodeError):
        pass
    return (model_id, seq_id) if model_id and seq_id >= 1 else None


def decode_forward_backward(body: bytes) -> Sequenced[ForwardBackwardInput]:
    """A `ForwardBackwardRequest`: the model, its seq_id, and the batch (`forward_only` included)."""
    model_id, seq_id, loss_fn, forward_only = "", 0, "", False
    data: list[Datum] = []
    config: dict[str, float] = {}
    for number, value in _fields(body):
        if number == 1 and isinstance(value, bytes):
            model_id = _text(value, "model_id")
        elif number == 2 and isinstance(value, int):
            seq_id = _int64(value)
        elif number == 3 and isinstance(value, bytes):
            data.append(_datum(value, len(data)))
        elif number == 4 and isinstance(value, bytes):
            loss_fn = _text(value, "loss_fn")
        elif number == 5 and isinstance(value, bytes):
            key, raw = _map_entry(value, "loss_fn_config")
            if not isinstance(raw, int) or raw >> 64:  # a double is a fixed64 on the wire
                raise WireError(f"loss_fn_config.{key}", "expected a number")
            config[key] = struct.unpack("<d", raw.to_bytes(8, "little"))[0]
        elif number == 6 and isinstance(value, int):
            forward_only = bool(value)
    if not model_id:
        raise WireError("model_id", "required")
    if seq_id < 1:
        raise WireError("seq_id", f"must be in 1..{INT64_MAX}, got {seq_id}")
    work = ForwardBackwardInput(data, loss_fn, config, forward_only)
    work.check()
    return Sequenced(model_id, seq_id, work)


# -- writing ---------------------------------------------------------------------------------------


def _put_varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, value: bytes) -> bytes:
    return _put_varint(number << 3 | LENGTH) + _put_varint(len(value)) + value


def _int_field(number: int, value: int) -> bytes:
    return _put_varint(number << 3 | VARINT) + _put_varint(value) if value else b""


def _double_entry(key: str, value: float) -> bytes:
    return _field(1, key.encode()) + _put_varint(2 << 3 | FIXED64) + struct.pack("<d", value)


def _batched(arrays: Sequence[FloatArray]) -> bytes:
    """A `BatchedTensor` of float32 per-datum vectors: the data concatenated, int64 byte offsets."""
    parts = [np.asarray(a, dtype="<f4") for a in arrays]
    offsets = np.cumsum([0] + [p.nbytes for p in parts]).astype("<i8")
    return (
        _field(1, b"".join(p.tobytes() for p in parts))
        + _field(2, offsets.tobytes())
        + _int_field(3, DTYPE_FLOAT32)
    )


def encode_forward_backward(
    outputs: Sequence[Mapping[str, FloatArray]], metrics: Mapping[str, float]
) -> bytes:
    """A `ForwardBackwardOutput` holding one `ArrayRecord` with a field per output name."""
    names = list(outputs[0]) if outputs else []
    record = _field(1, b"ArrayRecord")
    for name in names:
        record += _field(2, _field(1, name.encode()) + _field(2, _batched([o[name] for o in outputs])))
    record += _int_field(3, len(outputs))
    body = _field(1, b"ArrayRecord") + _field(2, record)
    for key, value in metrics.items():
        body += _field(3, _double_entry(key, value))
    return body


def encode_sample(
    sequences: Sequence[tuple[Sequence[int], Sequence[float], bool]],
    prompt_logprobs: Sequence[float] | None,
) -> bytes:
    """A `SampleResponse`: per sequence (tokens, logprobs, stopped); prompt logprobs with NaN for none."""
    body = b""
    for tokens, logprobs, stopped in sequences:
        sequence = _int_field(1, STOP if stopped else LENGTH_LIMIT)
        sequence += _field(2, np.asarray(tokens, dtype="<i4").tobytes())
        sequence += _field(3, np.asarray(logprobs, dtype="<f4").tobytes())
        body += _field(1, sequence)
    if prompt_logprobs is not None:
        body += _field(2, np.asarray(prompt_logprobs, dtype="<f4").tobytes())
    return body
