"""Read a GGUF file's header with bounded reads: metadata values, tensor table, data spans, all validated.

Layout of a GGUF v2/v3 file (integers little-endian)::

    "GGUF" | u32 version | u64 n_tensors | u64 n_kv
    n_kv      x  string key | u32 value type | value
    n_tensors x  string name | u32 n_dims | n_dims x u64 ne | u32 ggml type | u64 offset
    padding to general.alignment (default 32) | tensor data (offsets relative to its start)

    string = u64 length | UTF-8 bytes          array = u32 item type | u64 count | items

gguf.GGUFReader trusts every count: a header claiming 2^60 KV pairs makes it loop, a string length past
the end of the file ends in a numpy reshape error, a duplicate key in a KeyError. Here every count and
length is checked against the bytes left in the file before it is used, so a hostile or truncated file
costs no memory and yields one line naming the file, the key or tensor, and the reason. It is also fast:
gguf.GGUFReader builds numpy views per array item and takes ~10 s on a 49k-token vocabulary (~30 s on
Qwen's 151k), this reads the same metadata in well under a second (:mod:`hqq2gguf.read.gguf_reader`).
"""

from __future__ import annotations

import itertools
import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from hqq2gguf.errors import InputError, UnsupportedError

V = gguf.GGUFValueType
SUPPORTED_VERSIONS = (2, 3)
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_ARRAY_DEPTH = 4  # arrays of arrays are legal; deeper nesting than this is not seen in real files
DEFAULT_ALIGNMENT = 32
ALIGNMENT_KEY = "general.alignment"
# Names gguf.GGUFReader uses for its own virtual fields: a real key with one of them would collide.
_RESERVED_KEYS = ("GGUF.version", "GGUF.tensor_count", "GGUF.kv_count")

_SCALAR_SIZES = {V.UINT8: 1, V.INT8: 1, V.UINT16: 2, V.INT16: 2, V.UINT32: 4, V.INT32: 4, V.FLOAT32: 4,
                 V.BOOL: 1, V.UINT64: 8, V.INT64: 8, V.FLOAT64: 8}
_NUMPY = {V.UINT8: "<u1", V.INT8: "<i1", V.UINT16: "<u2", V.INT16: "<i2", V.UINT32: "<u4", V.INT32: "<i4",
          V.FLOAT32: "<f4", V.BOOL: "?", V.UINT64: "<u8", V.INT64: "<i8", V.FLOAT64: "<f8"}
_MIN_VALUE_BYTES = 1  # the smallest value: a u8/i8/bool
_MIN_KV_BYTES = 8 + 4 + _MIN_VALUE_BYTES  # key length, value type, value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # name length, n_dims, type, offset
_HEADER_BYTES = 4 + 4 + 8 + 8


@dataclass(frozen=True)
class GgufTensorSpan:
    name: str
    qtype: gguf.GGMLQuantizationType
    shape: tuple[int, ...]  # ggml order, ne0 first
    begin: int  # absolute file offset of the first data byte
    nbytes: int


@dataclass(frozen=True)
class GgufField:
    """One metadata pair, as gguf.GGUFReader describes it: ``types`` is ``[type]`` for a scalar or string and
    ``[ARRAY, item type, ...]`` for an array (the first item's types; just ``[ARRAY]`` when empty); ``value``
    is the Python value, an array's items flattened into one list (GGUFReader's ``contents()``)."""

    name: str
    types: tuple[gguf.GGUFValueType, ...]
    value: Any

    def contents(self) -> Any:
        return self.value


@dataclass(frozen=True)
class GgufLayout:
    version: int
    n_kv: int
    alignment: int
    data_start: int
    tensors: tuple[GgufTensorSpan, ...]
    fields: tuple[GgufField, ...] = ()


class _Cursor:
    """Bounded little-endian reads from a read-only buffer; every read checks the bytes left."""

    def __init__(self, buf: mmap.mmap | bytes, size: int, path: Path) -> None:
        self.buf, self.size, self.path, self.pos = buf, size, path, 0

    def fail(self, reason: str, tensor: str | None = None) -> InputError:
        return InputError(reason, file=self.path, tensor=tensor)

    def take(self, n: int, what: str) -> int:
        """Advance over ``n`` bytes; return where they start."""
        if n > self.size - self.pos:
            raise self.fail(f"truncated GGUF: {what} needs {n} bytes at offset {self.pos}, "
                            f"the file has {self.size}")
        start, self.pos = self.pos, self.pos + n
        return start

    def u32(self, what: str) -> int:
        return struct.unpack_from("<I", self.buf, self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return struct.unpack_from("<Q", self.buf, self.take(8, what))[0]

    def string(self, what: str) -> str:
        n = self.u64(f"{what} length")
        start = self.take(n, what)
        try:
            return bytes(self.buf[start:start + n]).decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.fail(f"{what} at offset {start} is not valid UTF-8") from e

    def count(self, what: str, min_item_bytes: int) -> int:
        """A u64 count of items of at least ``min_item_bytes`` each, checked against the bytes left."""
        n = self.u64(what)
        room = (self.size - self.pos) // max(min_item_bytes, 1)
        if n > room:
            raise self.fail(f"header claims {n} {what} but the {self.size - self.pos} bytes left in the "
                            f"file hold at most {room}: corrupt or truncated")
        return n


def validate_gguf_header(path: Path) -> GgufLayout:
    """Check a GGUF file's header and tensor table completely; raise InputError on the first problem."""
    try:
        size = os.stat(path).st_size
        if size < _HEADER_BYTES:
            raise InputError(f"truncated GGUF: {size} bytes, shorter than the {_HEADER_BYTES}-byte header",
                             file=path)
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(_Cursor(buf, size, path))
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror or e}", file=path) from e


def _parse(cur: _Cursor) -> GgufLayout:
    start = cur.take(4, "magic")
    magic = bytes(cur.buf[start:start + 4])
    if magic != b"GGUF":
        raise cur.fail(f"not a GGUF file (magic {magic!r}, expected b'GGUF')")
    version = cur.u32("version")
    if version & 0xFFFF == 0 and version >> 16:  # the file was written big-endian
        raise UnsupportedError("big-endian GGUF files are not supported", file=cur.path)
    if version not in SUPPORTED_VERSIONS:
        raise UnsupportedError(f"GGUF version {version} is not supported (only versions "
                               f"{' and '.join(map(str, SUPPORTED_VERSIONS))})", file=cur.path)
    n_tensors = cur.u64("tensor count")
    n_kv = cur.count("metadata key/value pairs", _MIN_KV_BYTES)
    fields = _parse_kv(cur, n_kv)
    alignment = _alignment(cur, fields)
    room = (cur.size - cur.pos) // _MIN_TENSOR_INFO_BYTES
    if n_tensors > room:
        raise cur.fail(f"header claims {n_tensors} tensors but the {cur.size - cur.pos} bytes left in the "
                       f"file hold at most {room} tensor descriptions: corrupt or truncated")
    infos = [_parse_tensor_info(cur, i) for i in range(n_tensors)]
    data_start = -(-cur.pos // alignment) * alignment
    spans = tuple(_check_data(cur, info, data_start, alignment) for info in _unique(cur, infos))
    _check_overlaps(cur, spans)
    return GgufLayout(version, n_kv, alignment, data_start, spans, tuple(fields))


def _parse_kv(cur: _Cursor, n_kv: int) -> list[GgufField]:
    """Every metadata pair, in file order, values read."""
    seen: set[str] = set(_RESERVED_KEYS)
    fields = []
    for _ in range(n_kv):
        key = cur.string("metadata key")
        if key in seen:
            raise cur.fail(f"metadata key {key!r} appears twice" if key not in _RESERVED_KEYS
                           else f"metadata key {key!r} is reserved")
        seen.add(key)
        vtype = _value_type(cur, cur.u32(f"type of {key!r}"), key)
        types, value = _read_value(cur, vtype, key, depth=0)
        fields.append(GgufField(key, types, value))
    return fields


def _alignment(cur: _Cursor, fields: list[GgufField]) -> int:
    """general.alignment (validated) or the default."""
    field = next((f for f in fields if f.name == ALIGNMENT_KEY), None)
    if field is None:
        return DEFAULT_ALIGNMENT
    if field.types != (V.UINT32,):
        raise cur.fail(f"{ALIGNMENT_KEY} has type {field.types[0].name}, expected UINT32")
    if field.value == 0 or field.value & (field.value - 1):
        raise cur.fail(f"{ALIGNMENT_KEY} is {field.value}, not a power of two")
    return field.value


def _value_type(cur: _Cursor, raw: int, key: str) -> gguf.GGUFValueType:
    try:
        return V(raw)
    except ValueError:
        raise cur.fail(f"metadata key {key!r} has unknown value type {raw}") from None


def _read_value(cur: _Cursor, vtype: gguf.GGUFValueType, key: str,
                depth: int) -> tuple[tuple[gguf.GGUFValueType, ...], Any]:
    if vtype in _SCALAR_SIZES:
        start = cur.take(_SCALAR_SIZES[vtype], f"value of {key!r}")
        return (vtype,), np.frombuffer(cur.buf, _NUMPY[vtype], 1, start).tolist()[0]
    if vtype == V.STRING:
        return (vtype,), _decode(cur, _read_bytes(cur, f"string value of {key!r}"), key)
    if depth >= MAX_ARRAY_DEPTH:
        raise cur.fail(f"metadata key {key!r} nests arrays deeper than {MAX_ARRAY_DEPTH}")
    item = _value_type(cur, cur.u32(f"array item type of {key!r}"), key)
    min_item = _SCALAR_SIZES.get(item, 8 if item == V.STRING else 4 + 8)
    n = cur.count(f"items in array {key!r}", min_item)
    if item in _SCALAR_SIZES:
        start = cur.take(n * _SCALAR_SIZES[item], f"array {key!r}")
        return (vtype, item) if n else (vtype,), np.frombuffer(cur.buf, _NUMPY[item], n, start).tolist()
    if item == V.STRING:
        return (vtype, item) if n else (vtype,), [_decode(cur, b, key) for b in _string_items(cur, n, key)]
    types: tuple[gguf.GGUFValueType, ...] = (vtype,)
    values: list[Any] = []
    for i in range(n):  # arrays of arrays: flattened, as gguf.GGUFReader's contents() gives them
        item_types, value = _read_value(cur, item, key, depth + 1)
        types = (vtype, *item_types) if i == 0 else types
        values += value
    return types, values


def _read_bytes(cur: _Cursor, what: str) -> bytes:
    n = cur.u64(f"length of {what}")
    start = cur.take(n, what)
    return bytes(cur.buf[start:start + n])


def _string_items(cur: _Cursor, n: int, key: str) -> list[bytes]:
    """``n`` length-prefixed strings (a vocabulary: the hot loop, kept free of method calls)."""
    buf, pos, size, out = cur.buf, cur.pos, cur.size, []
    unpack = struct.Struct("<Q").unpack_from
    for i in range(n):
        if pos + 8 > size:
            cur.pos = pos
            raise cur.fail(f"truncated GGUF: item {i} of array {key!r} at offset {pos} runs past the end")
        (length,) = unpack(buf, pos)
        pos += 8
        if length > size - pos:
            raise cur.fail(f"truncated GGUF: item {i} of array {key!r} needs {length} bytes at offset {pos}, "
                           f"the file has {size}")
        out.append(buf[pos:pos + length])
        pos += length
    cur.pos = pos
    return out


def _decode(cur: _Cursor, raw: bytes, key: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise cur.fail(f"a string of metadata key {key!r} is not valid UTF-8 (byte {e.start})") from None


@dataclass(frozen=True)
class _TensorInfo:
    name: str
    shape: tuple[int, ...]
    raw_type: int
    offset: int


def _parse_tensor_info(cur: _Cursor, index: int) -> _TensorInfo:
    name = cur.string(f"name of tensor #{index}")
    n_dims = cur.u32(f"dimension count of {name!r}")
    if n_dims > MAX_DIMS:
        raise cur.fail(f"{n_dims} dimensions (ggml allows at most {MAX_DIMS})", tensor=name)
    shape = tuple(cur.u64(f"shape of {name!r}") for _ in range(n_dims))
    raw_type = cur.u32(f"type of {name!r}")
    return _TensorInfo(name, shape, raw_type, cur.u64(f"data offset of {name!r}"))


def _unique(cur: _Cursor, infos: list[_TensorInfo]) -> list[_TensorInfo]:
    seen: set[str] = set()
    for info in infos:
        if info.name in seen:
            raise cur.fail("tensor name appears twice", tensor=info.name)
        seen.add(info.name)
    return infos


def _check_data(cur: _Cursor, info: _TensorInfo, data_start: int, alignment: int) -> GgufTensorSpan:
    try:
        qtype = gguf.GGMLQuantizationType(info.raw_type)
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError):
        raise cur.fail(f"unknown ggml type {info.raw_type}", tensor=info.name) from None
    ne0 = info.shape[0] if info.shape else 1
    if ne0 % block:
        raise cur.fail(f"row length {ne0} is not a multiple of {qtype.name}'s block size {block}",
                       tensor=info.name)
    nbytes = math.prod(info.shape[1:]) * (ne0 // block) * type_size
    if info.offset % alignment:
        raise cur.fail(f"tensor data offset {info.offset} is not a multiple of the alignment {alignment}",
                       tensor=info.name)
    begin = data_start + info.offset
    if begin + nbytes > cur.size:
        raise cur.fail(f"tensor data [{begin}, {begin + nbytes}) lies beyond the end of the file "
                       f"({cur.size} bytes): truncated", tensor=info.name)
    return GgufTensorSpan(info.name, qtype, info.shape, begin, nbytes)


def _check_overlaps(cur: _Cursor, spans: tuple[GgufTensorSpan, ...]) -> None:
    ordered = sorted((s for s in spans if s.nbytes), key=lambda s: s.begin)
    for prev, span in itertools.pairwise(ordered):
        if span.begin < prev.begin + prev.nbytes:
            raise cur.fail(f"tensor data overlaps that of {prev.name!r}", tensor=span.name)
