"""Compare two GGUF files and list, in words, everything that differs (``hqq2gguf diff``).

Used to check a conversion against llama.cpp's converter: tensor names and order, shapes, ggml types
and raw bytes; every metadata key with its value type and value (arrays element by element) and the
key order. Our own provenance keys (``hqq2gguf.*``) are left out. An empty list means the files are
equivalent.

The files are parsed here, from the GGUF v3 layout, rather than with ``gguf.GGUFReader``: the reader
builds numpy views per string and takes seconds on a 49k-token vocabulary, and a parser independent of
gguf-py (which also writes our files) is a better witness.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from gguf.quants import dequantize

from hqq2gguf import PROVENANCE_PREFIX
from hqq2gguf.read.gguf_header import validate_gguf_header

# general.quantized_by: we name ourselves on quantized outputs (Q8_0 and below); llama.cpp's converter
# writes no such key. An intended difference, documented in docs/metadata.md.
IGNORED_PREFIXES = (PROVENANCE_PREFIX, "general.quantized_by")
MAX_ELEMENT_DIFFS = 5

_SCALARS = {  # value type -> struct format (little endian)
    GGUFValueType.UINT8: "B", GGUFValueType.INT8: "b", GGUFValueType.UINT16: "H", GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I", GGUFValueType.INT32: "i", GGUFValueType.FLOAT32: "f", GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q", GGUFValueType.INT64: "q", GGUFValueType.FLOAT64: "d",
}


@dataclass(frozen=True)
class Field:
    types: tuple[GGUFValueType, ...]
    """(type,) for a scalar or string; (ARRAY, element type) for an array."""
    items: tuple[bytes, ...]
    """The raw bytes of the value, one entry per array element."""

    def value(self, index: int = 0) -> Any:
        kind = self.types[-1]
        raw = self.items[index]
        if kind == GGUFValueType.STRING:
            return raw.decode("utf-8", errors="backslashreplace")
        return struct.unpack("<" + _SCALARS[kind], raw)[0]

    def show(self, limit: int = 120) -> str:
        if self.types[0] == GGUFValueType.ARRAY:
            text = repr([self.value(i) for i in range(min(len(self.items), 20))])
            text = f"{text[:-1]}, ...] (len {len(self.items)})" if len(self.items) > 20 else text
        else:
            text = repr(self.value())
        text = text if len(text) <= limit else text[:limit] + "..."
        names = [t.name for t in self.types]
        return f"{text} ({names[0] if len(names) == 1 else f'{names[0]}[{names[1]}]'})"


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]
    """ggml order (ne0 first)."""
    qtype: GGMLQuantizationType
    data: np.ndarray
    """uint8, one row of blocks per line."""


class _Parser:
    def __init__(self, buf: bytes | mmap.mmap) -> None:
        self.buf, self.pos = buf, 0

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += size
        return value

    def raw(self, size: int) -> bytes:
        self.pos += size
        return bytes(self.buf[self.pos - size:self.pos])

    def string(self) -> bytes:
        return self.raw(self.unpack("Q"))

    def item(self, kind: GGUFValueType) -> bytes:
        return self.string() if kind == GGUFValueType.STRING else self.raw(struct.calcsize(_SCALARS[kind]))

    def field(self) -> Field:
        kind = GGUFValueType(self.unpack("I"))
        if kind != GGUFValueType.ARRAY:
            return Field((kind,), (self.item(kind),))
        elem, count = GGUFValueType(self.unpack("I")), self.unpack("Q")
        if elem == GGUFValueType.STRING:
            return Field((kind, elem), tuple(self.string() for _ in range(count)))
        size = struct.calcsize(_SCALARS[elem])
        block = self.raw(size * count)
        return Field((kind, elem), tuple(block[i:i + size] for i in range(0, len(block), size)))


def read_gguf(path: str | Path) -> tuple[dict[str, Field], list[Tensor]]:
    """Metadata (in file order) and tensors of a GGUF v2/v3 little-endian file (validated first: a corrupt
    file gives an InputError naming it, not a struct error)."""
    validate_gguf_header(Path(path))
    with open(path, "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    p = _Parser(buf)
    if p.raw(4) != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file")
    version, n_tensors, n_kv = p.unpack("I"), p.unpack("Q"), p.unpack("Q")
    if version not in (2, 3):
        raise ValueError(f"{path}: GGUF version {version} not supported")
    fields: dict[str, Field] = {}
    for _ in range(n_kv):
        key = p.string().decode("utf-8")
        fields[key] = p.field()
    infos = []
    for _ in range(n_tensors):
        name = p.string().decode("utf-8")
        shape = tuple(p.unpack("Q") for _ in range(p.unpack("I")))
        infos.append((name, shape, GGMLQuantizationType(p.unpack("I")), p.unpack("Q")))
    alignment = fields["general.alignment"].value() if "general.alignment" in fields else 32
    start = -(-p.pos // alignment) * alignment
    tensors = []
    for name, shape, qtype, offset in infos:
        block, type_size = GGML_QUANT_SIZES[qtype]
        row_bytes = shape[0] // block * type_size
        n_rows = int(np.prod(shape[1:], dtype=np.int64))
        data = np.frombuffer(buf, np.uint8, n_rows * row_bytes, start + offset).reshape(n_rows, row_bytes)
        tensors.append(Tensor(name, shape, qtype, data))
    return fields, tensors


def compare_gguf(
    actual: str | Path, expected: str | Path, *, ignored_prefixes: tuple[str, ...] = IGNORED_PREFIXES
) -> list[str]:
    """Differences of ``actual`` from ``expected`` as readable lines; empty when equivalent."""
    fields_a, tensors_a = read_gguf(actual)
    fields_e, tensors_e = read_gguf(expected)
    return _compare_fields(fields_a, fields_e, ignored_prefixes) + _compare_tensors(tensors_a, tensors_e)


def format_diffs(diffs: list[str], actual: str | Path, expected: str | Path) -> str:
    """One message for an assertion: which files, how many differences, each on its own line."""
    head = f"{len(diffs)} difference(s) between {actual} (actual) and {expected} (expected):"
    return "\n  ".join([head, *diffs])


# --- metadata ---------------------------------------------------------------------------------


def _compare_fields(actual: dict[str, Field], expected: dict[str, Field], ignored: tuple[str, ...]) -> list[str]:
    a = {k: f for k, f in actual.items() if not k.startswith(ignored)}
    e = {k: f for k, f in expected.items() if not k.startswith(ignored)}
    diffs = [f"metadata {k!r}: missing (expected {e[k].show()})" for k in e if k not in a]
    diffs += [f"metadata {k!r}: unexpected (= {a[k].show()})" for k in a if k not in e]
    for key in (k for k in e if k in a):
        diffs += _compare_field(key, a[key], e[key])
    common_a = [k for k in a if k in e]
    common_e = [k for k in e if k in a]
    if common_a != common_e:
        diffs.append("metadata key order differs " + _first_order_diff(common_a, common_e))
    return diffs


def _compare_field(key: str, a: Field, e: Field) -> list[str]:
    if a.types != e.types:
        return [f"metadata {key!r}: type {a.show()} != expected {e.show()}"]
    if a.items == e.items:
        return []
    if a.types[0] != GGUFValueType.ARRAY:
        return [f"metadata {key!r}: {a.show()} != expected {e.show()}"]
    if len(a.items) != len(e.items):
        return [f"metadata {key!r}: array length {len(a.items)} != expected {len(e.items)}"]
    bad = [i for i, (x, y) in enumerate(zip(a.items, e.items)) if x != y]
    shown = ", ".join(f"[{i}] {a.value(i)!r} != {e.value(i)!r}" for i in bad[:MAX_ELEMENT_DIFFS])
    more = f" (and {len(bad) - MAX_ELEMENT_DIFFS} more)" if len(bad) > MAX_ELEMENT_DIFFS else ""
    return [f"metadata {key!r}: {len(bad)} of {len(e.items)} elements differ: {shown}{more}"]


def _first_order_diff(actual: list[str], expected: list[str]) -> str:
    first = next(i for i, (x, y) in enumerate(zip(actual, expected)) if x != y)
    return f"from position {first}: actual {actual[first:first + 3]}..., expected {expected[first:first + 3]}..."


# --- tensors ----------------------------------------------------------------------------------


def _compare_tensors(actual: list[Tensor], expected: list[Tensor]) -> list[str]:
    a = {t.name: t for t in actual}
    e = {t.name: t for t in expected}
    diffs = [f"tensor {n!r}: missing" for n in e if n not in a]
    diffs += [f"tensor {n!r}: unexpected" for n in a if n not in e]
    for name in (n for n in e if n in a):
        diffs += _compare_tensor(a[name], e[name])
    order_a = [t.name for t in actual if t.name in e]
    order_e = [t.name for t in expected if t.name in a]
    if order_a != order_e:
        diffs.append("tensor order differs " + _first_order_diff(order_a, order_e))
    return diffs


def _compare_tensor(a: Tensor, e: Tensor) -> list[str]:
    diffs = []
    if a.qtype != e.qtype:
        diffs.append(f"tensor {a.name!r}: type {a.qtype.name} != expected {e.qtype.name}")
    if a.shape != e.shape:
        diffs.append(f"tensor {a.name!r}: shape {list(a.shape)} != expected {list(e.shape)} (ggml order)")
    if diffs or np.array_equal(a.data, e.data):
        return diffs
    return [f"tensor {a.name!r} ({e.qtype.name} {list(e.shape)}): data differs: {_describe_data_diff(a, e)}"]


def _describe_data_diff(a: Tensor, e: Tensor) -> str:
    try:
        fa = dequantize(a.data, a.qtype).astype(np.float64).ravel()
        fe = dequantize(e.data, e.qtype).astype(np.float64).ravel()
    except NotImplementedError as exc:  # a type gguf-py cannot decode
        return f"raw bytes differ ({exc})"
    bad = np.flatnonzero(~((fa == fe) | (np.isnan(fa) & np.isnan(fe))))
    if bad.size == 0:
        return "same decoded values, different bytes (e.g. -0.0 vs 0.0, NaN payloads, or Q8_0 scales)"
    err = np.abs(fa - fe)
    return (
        f"{bad.size} of {fe.size} values differ, max |diff| {np.nanmax(err):.3g} "
        f"(max |expected| {float(np.max(np.abs(fe))):.3g}), first at flat index {int(bad[0])}: "
        f"{fa[bad[0]]:.6g} != {fe[bad[0]]:.6g}"
    )
