"""32-element blocks with one fp16 scale (and maybe an fp16 min): Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL.

Shared nibble layout (``qs``, 16 bytes): byte j holds element j in its low nibble and element j+16 in
its high nibble. Q5_* add ``qh``, a little-endian uint32 whose bit i is the 5th bit of element i.
"""

from __future__ import annotations

import gguf
import numpy as np

from hqq2gguf.pack.base import BlockCodec
from hqq2gguf.pack.fields import LegacyFields, f32, fp16_at, fp16_bytes, nibbles, split_nibbles
from hqq2gguf.qtypes import KVALUES_IQ4NL

Q = gguf.GGMLQuantizationType
_KVALUES = np.array(KVALUES_IQ4NL, dtype=np.float32)


def _pack_nibbles(u: np.ndarray) -> np.ndarray:
    """(n, 32) values 0..15 (or low nibbles of 0..31) -> qs (n, 16)."""
    return nibbles(u[:, :16], u[:, 16:])


def _unpack_nibbles(qs: np.ndarray) -> np.ndarray:
    """qs (n, 16) -> (n, 32) values 0..15."""
    lo, hi = split_nibbles(qs)
    return np.concatenate([lo, hi], axis=1)


def _pack_qh(u: np.ndarray) -> np.ndarray:
    """(n, 32) values 0..31 -> qh (n, 4): bit i of the little-endian uint32 = bit 4 of element i."""
    return np.packbits((u >> 4).astype(np.uint8), axis=1, bitorder="little")


def _unpack_qh(qh: np.ndarray) -> np.ndarray:
    """qh (n, 4) -> (n, 32) fifth bits, 0 or 16."""
    return np.unpackbits(qh, axis=1, bitorder="little") << 4


def _scaled(f: LegacyFields, levels: np.ndarray) -> np.ndarray:
    """ggml: ``x*d`` then ``+ m``, in float32 (x an int converted exactly)."""
    y = levels * f32(f.d)[:, None]
    return y if f.m is None else y + f32(f.m)[:, None]


class Q4_0(BlockCodec, qtype=Q.Q4_0):
    """
    byte 0      2                       18
         +------+-----------------------+
         | d    | qs[16]                |     x[j] = d * q[j],  q in -8..7
         +------+-----------------------+
    qs[j] = (q[j] + 8) | (q[j+16] + 8) << 4      j = 0..15
    """

    @classmethod
    def _pack(cls, f: LegacyFields) -> np.ndarray:
        return np.concatenate([fp16_bytes(f.d), _pack_nibbles(f.q + 8)], axis=1)

    @classmethod
    def _unpack(cls, b: np.ndarray) -> LegacyFields:
        return LegacyFields(fp16_at(b, 0), None, (_unpack_nibbles(b[:, 2:]).astype(np.int8) - 8))

    @classmethod
    def _decode(cls, f: LegacyFields) -> np.ndarray:
        return _scaled(f, f32(f.q))


class Q4_1(BlockCodec, qtype=Q.Q4_1):
    """
    byte 0      2      4                       20
         +------+------+-----------------------+
         | d    | m    | qs[16]                |     x[j] = d * q[j] + m,  q in 0..15
         +------+------+-----------------------+
    qs[j] = q[j] | q[j+16] << 4
    """

    @classmethod
    def _pack(cls, f: LegacyFields) -> np.ndarray:
        return np.concatenate([fp16_bytes(f.d), fp16_bytes(f.m), _pack_nibbles(f.q)], axis=1)

    @classmethod
    def _unpack(cls, b: np.ndarray) -> LegacyFields:
        return LegacyFields(fp16_at(b, 0), fp16_at(b, 2), _unpack_nibbles(b[:, 4:]).astype(np.int8))

    @classmethod
    def _decode(cls, f: LegacyFields) -> np.ndarray:
        return _scaled(f, f32(f.q))


class Q5_0(BlockCodec, qtype=Q.Q5_0):
    """
    byte 0      2           6                       22
         +------+-----------+-----------------------+
         | d    | qh (u32)  | qs[16]                |     x[j] = d * q[j],  q in -16..15
         +------+-----------+-----------------------+
    u = q + 16:  qs[j] = (u[j] & 15) | (u[j+16] & 15) << 4,   qh bit i = u[i] >> 4
    """

    @classmethod
    def _pack(cls, f: LegacyFields) -> np.ndarray:
        u = f.q + 16
        return np.concatenate([fp16_bytes(f.d), _pack_qh(u), _pack_nibbles(u)], axis=1)

    @classmethod
    def _unpack(cls, b: np.ndarray) -> LegacyFields:
        u = _unpack_nibbles(b[:, 6:]) | _unpack_qh(b[:, 2:6])
        return LegacyFields(fp16_at(b, 0), None, u.astype(np.int8) - 16)

    @classmethod
    def _decode(cls, f: LegacyFields) -> np.ndarray:
        return _scaled(f, f32(f.q))


class Q5_1(BlockCodec, qtype=Q.Q5_1):
    """
    byte 0      2      4           8                       24
         +------+------+-----------+-----------------------+
         | d    | m    | qh (u32)  | qs[16]                |     x[j] = d * q[j] + m,  q in 0..31
         +------+------+-----------+-----------------------+
    qs[j] = (q[j] & 15) | (q[j+16] & 15) << 4,   qh bit i = q[i] >> 4
    """

    @classmethod
    def _pack(cls, f: LegacyFields) -> np.ndarray:
        return np.concatenate([fp16_bytes(f.d), fp16_bytes(f.m), _pack_qh(f.q), _pack_nibbles(f.q)], axis=1)

    @classmethod
    def _unpack(cls, b: np.ndarray) -> LegacyFields:
        q = _unpack_nibbles(b[:, 8:]) | _unpack_qh(b[:, 4:8])
        return LegacyFields(fp16_at(b, 0), fp16_at(b, 2), q.astype(np.int8))

    @classmethod
    def _decode(cls, f: LegacyFields) -> np.ndarray:
        return _scaled(f, f32(f.q))


class Q8_0(BlockCodec, qtype=Q.Q8_0):
    """
    byte 0      2                                       34
         +------+---------------------------------------+
         | d    | qs[32] (int8)                         |     x[j] = q[j] * d,  q in -128..127
         +------+---------------------------------------+
    """

    @classmethod
    def _pack(cls, f: LegacyFields) -> np.ndarray:
        return np.concatenate([fp16_bytes(f.d), f.q.astype(np.int8).view(np.uint8)], axis=1)

    @classmethod
    def _unpack(cls, b: np.ndarray) -> LegacyFields:
        return LegacyFields(fp16_at(b, 0), None, b[:, 2:].view(np.int8).copy())

    @classmethod
    def _decode(cls, f: LegacyFields) -> np.ndarray:
        return _scaled(f, f32(f.q))


class IQ4_NL(BlockCodec, qtype=Q.IQ4_NL):
    """
    byte 0      2                       18
         +------+-----------------------+
         | d    | qs[16]                |     x[j] = d * kvalues_iq4nl[q[j]],  q in 0..15
         +------+-----------------------+
    qs[j] = q[j] | q[j+16] << 4                  (q is an index into the codebook)
    """

    @classmethod
    def _pack(cls, f: LegacyFields) -> np.ndarray:
        return np.concatenate([fp16_bytes(f.d), _pack_nibbles(f.q)], axis=1)

    @classmethod
    def _unpack(cls, b: np.ndarray) -> LegacyFields:
        return LegacyFields(fp16_at(b, 0), None, _unpack_nibbles(b[:, 2:]).astype(np.int8))

    @classmethod
    def _decode(cls, f: LegacyFields) -> np.ndarray:
        return _scaled(f, _KVALUES[f.q])
