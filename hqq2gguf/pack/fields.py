"""The fields of ggml blocks, as the solver chooses them, and the byte helpers every packer shares.

Arrays run over many blocks at once: axis 0 is the block index (a whole tensor, row-major), so a
tensor of shape (rows, cols) has ``rows * cols // block_size`` blocks. Integer fields come out of
``unpack`` as int8 (every range fits); ``pack`` accepts any integer dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, fields as dc_fields

import numpy as np

from hqq2gguf.errors import Hqq2GgufError
from hqq2gguf.qtypes import Kind, QuantSpec


class FieldError(Hqq2GgufError, ValueError):
    """Block fields that no ggml block can hold (wrong shape or dtype, code out of range, non-finite scale)."""


@dataclass(frozen=True, eq=False)
class LegacyFields:
    """One fp16 scale per block: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, TQ1_0, TQ2_0.

    x = d*q (+ m): ``d`` and ``m`` float16 (n_blocks,), ``m`` None for symmetric types;
    ``q`` integer (n_blocks, block_size): the level (or IQ4_NL codebook index).
    """

    d: np.ndarray
    m: np.ndarray | None
    q: np.ndarray


@dataclass(frozen=True, eq=False)
class KQuantFields:
    """Super-block of sub-blocks: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS.

    x = (d*sc)*q - dmin*mn per sub-block: ``d``/``dmin`` float16 (n_blocks,), ``sc``/``mn`` integer
    (n_blocks, n_sub), ``q`` integer (n_blocks, 256); ``dmin`` and ``mn`` None for symmetric types.
    """

    d: np.ndarray
    dmin: np.ndarray | None
    sc: np.ndarray
    mn: np.ndarray | None
    q: np.ndarray


Fields = LegacyFields | KQuantFields


def same_fields(a: Fields, b: Fields) -> bool:
    """Bit-exact equality (fp16 compared by bit pattern, so -0.0 != 0.0 and NaNs are compared too)."""
    if type(a) is not type(b):
        return False
    for f in dc_fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if x is None or y is None:
            if x is not y:
                return False
            continue
        if x.shape != y.shape:
            return False
        if x.dtype == np.float16 or y.dtype == np.float16:
            if x.dtype != y.dtype or not np.array_equal(x.view(np.uint16), y.view(np.uint16)):
                return False
        elif not np.array_equal(x, y):
            return False
    return True


# ---------------------------------------------------------------- validation (before packing)

def _check_fp16(spec: QuantSpec, name: str, a: object, n: int | None) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.dtype != np.float16 or a.ndim != 1:
        raise FieldError(f"{spec.name}: {name} must be a 1-D float16 array, got {_describe(a)}")
    if n is not None and a.shape[0] != n:
        raise FieldError(f"{spec.name}: {name} has {a.shape[0]} blocks, d has {n}")
    if not np.isfinite(a).all():
        raise FieldError(f"{spec.name}: {name} holds {int((~np.isfinite(a)).sum())} non-finite value(s)")
    return a


def _check_int(spec: QuantSpec, name: str, a: object, shape: tuple[int, int], lo: int, hi: int) -> np.ndarray:
    if not isinstance(a, np.ndarray) or not np.issubdtype(a.dtype, np.integer):
        raise FieldError(f"{spec.name}: {name} must be an integer array, got {_describe(a)}")
    if a.shape != shape:
        raise FieldError(f"{spec.name}: {name} has shape {a.shape}, expected {shape}")
    if a.size and (a.min() < lo or a.max() > hi):
        raise FieldError(f"{spec.name}: {name} must lie in [{lo}, {hi}], got [{a.min()}, {a.max()}]")
    return a.astype(np.int32)


def _check_presence(spec: QuantSpec, name: str, a: object, wanted: bool) -> None:
    if wanted and a is None:
        raise FieldError(f"{spec.name} is affine: {name} is required")
    if not wanted and a is not None:
        raise FieldError(f"{spec.name} is symmetric: {name} must be None")


def checked_legacy(spec: QuantSpec, f: object) -> LegacyFields:
    """``f`` validated against ``spec``, with int32 codes (ready for bit arithmetic)."""
    if spec.kind is not Kind.BLOCK or not isinstance(f, LegacyFields):
        raise FieldError(f"{spec.name} takes LegacyFields, got {type(f).__name__}")
    d = _check_fp16(spec, "d", f.d, None)
    n = d.shape[0]
    _check_presence(spec, "m", f.m, spec.affine)
    m = None if f.m is None else _check_fp16(spec, "m", f.m, n)
    q = _check_int(spec, "q", f.q, (n, spec.block_size), spec.qmin, spec.qmax)
    return LegacyFields(d, m, q)


def checked_kquant(spec: QuantSpec, f: object) -> KQuantFields:
    """``f`` validated against ``spec``, with int32 integers (ready for bit arithmetic)."""
    if spec.kind is not Kind.SUPER or not isinstance(f, KQuantFields):
        raise FieldError(f"{spec.name} takes KQuantFields, got {type(f).__name__}")
    d = _check_fp16(spec, "d", f.d, None)
    n = d.shape[0]
    _check_presence(spec, "dmin", f.dmin, spec.affine)
    _check_presence(spec, "mn", f.mn, spec.affine)
    dmin = None if f.dmin is None else _check_fp16(spec, "dmin", f.dmin, n)
    sc = _check_int(spec, "sc", f.sc, (n, spec.n_sub), *spec.sc_range)
    mn = None if f.mn is None else _check_int(spec, "mn", f.mn, (n, spec.n_sub), *spec.mn_range)
    q = _check_int(spec, "q", f.q, (n, spec.block_size), spec.qmin, spec.qmax)
    return KQuantFields(d, dmin, sc, mn, q)


def checked_blocks(spec: QuantSpec, blocks: object) -> np.ndarray:
    """``blocks`` as uint8 (n_blocks, type_size); a flat or (rows, row_bytes) buffer is reshaped."""
    if not isinstance(blocks, np.ndarray) or blocks.dtype != np.uint8:
        raise FieldError(f"{spec.name}: blocks must be a uint8 array, got {_describe(blocks)}")
    if blocks.size % spec.type_size:
        raise FieldError(f"{spec.name}: {blocks.size} bytes is not a whole number of "
                         f"{spec.type_size}-byte blocks")
    return np.ascontiguousarray(blocks).reshape(-1, spec.type_size)


def _describe(a: object) -> str:
    if isinstance(a, np.ndarray):
        return f"{a.dtype} array of shape {a.shape}"
    return type(a).__name__


# ---------------------------------------------------------------- byte helpers

def fp16_bytes(a: np.ndarray) -> np.ndarray:
    """float16 (n,) -> uint8 (n, 2), little-endian, bit pattern preserved."""
    return a.astype("<f2").view(np.uint8).reshape(-1, 2)


def fp16_at(blocks: np.ndarray, offset: int) -> np.ndarray:
    """The little-endian fp16 at byte ``offset`` of every block, as float16 (n,)."""
    return np.ascontiguousarray(blocks[:, offset:offset + 2]).view("<f2")[:, 0].astype(np.float16)


def nibbles(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Two arrays of 4-bit values -> one byte each: ``lo | hi << 4``."""
    return ((lo & 0xF) | ((hi & 0xF) << 4)).astype(np.uint8)


def split_nibbles(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`nibbles`: (low nibble, high nibble)."""
    return b & 0xF, b >> 4


def f32(a: np.ndarray) -> np.ndarray:
    """As float32 (exact for fp16 and for the small integers of ggml blocks)."""
    return a.astype(np.float32)


def pack_bit_planes(bits: np.ndarray) -> np.ndarray:
    """(n, 256) single bits -> (n, 32): element e in byte e % 32, bit e // 32 (Q3_K hmask, Q5_K qh)."""
    return np.packbits(bits.astype(np.uint8).reshape(-1, 8, 32), axis=1, bitorder="little").reshape(-1, 32)


def unpack_bit_planes(b: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_bit_planes`: (n, 32) -> (n, 256) bits."""
    return np.unpackbits(b[:, None, :], axis=1, bitorder="little").reshape(-1, 256)
