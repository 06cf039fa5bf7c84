"""Super-blocks of 8 sub-blocks of 32 elements: Q4_K, Q5_K, IQ4_XS.

Sub-block i covers elements 32i..32i+31. Q4_K/Q5_K share the nibble plane ``qs[128]``: byte 32c + l
holds element 64c + l (low nibble) and 64c + 32 + l (high nibble); IQ4_XS uses the legacy order per
sub-block instead (byte 16i + j: element 32i + j low, 32i + 16 + j high).
"""

from __future__ import annotations

import gguf
import numpy as np

from hqq2gguf.pack.base import BlockCodec
from hqq2gguf.pack.fields import (
    KQuantFields, f32, fp16_at, fp16_bytes, nibbles, pack_bit_planes, split_nibbles, unpack_bit_planes,
)
from hqq2gguf.qtypes import KVALUES_IQ4NL

Q = gguf.GGMLQuantizationType
_KVALUES = np.array(KVALUES_IQ4NL, dtype=np.float32)


def _pack_scale_min_k4(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """8 six-bit scales + 8 six-bit mins -> 12 bytes (ggml's ``get_scale_min_k4`` read backwards).

        byte 0..3 : sc[j]   | (sc[j+4] >> 4) << 6         j = 0..3
        byte 4..7 : mn[j]   | (mn[j+4] >> 4) << 6
        byte 8..11: (sc[j+4] & 15) | (mn[j+4] & 15) << 4
    """
    lo_sc = sc[:, :4] | (sc[:, 4:] >> 4) << 6
    lo_mn = mn[:, :4] | (mn[:, 4:] >> 4) << 6
    return np.concatenate([lo_sc.astype(np.uint8), lo_mn.astype(np.uint8), nibbles(sc[:, 4:], mn[:, 4:])], axis=1)


def _unpack_scale_min_k4(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """12 bytes -> (sc, mn), each (n, 8) in 0..63."""
    lo, hi = split_nibbles(s[:, 8:12])
    sc = np.concatenate([s[:, :4] & 63, lo | (s[:, :4] >> 6) << 4], axis=1)
    mn = np.concatenate([s[:, 4:8] & 63, hi | (s[:, 4:8] >> 6) << 4], axis=1)
    return sc, mn


def _pack_k_nibbles(u: np.ndarray) -> np.ndarray:
    """(n, 256) values (low 4 bits used) -> qs (n, 128) in Q4_K order."""
    g = u.reshape(-1, 4, 2, 32)  # [c, low/high, l]
    return nibbles(g[:, :, 0], g[:, :, 1]).reshape(-1, 128)


def _unpack_k_nibbles(qs: np.ndarray) -> np.ndarray:
    lo, hi = split_nibbles(qs.reshape(-1, 4, 1, 32))
    return np.concatenate([lo, hi], axis=2).reshape(-1, 256)


def _affine_decode(f: KQuantFields) -> np.ndarray:
    """ggml: d1 = d*sc, m1 = dmin*mn, x = d1*q - m1 (float32, in that order)."""
    dl = f32(f.d)[:, None] * f32(f.sc)
    ml = f32(f.dmin)[:, None] * f32(f.mn)
    y = dl[:, :, None] * f32(f.q).reshape(-1, 8, 32) - ml[:, :, None]
    return y.reshape(-1, 256)


class Q4_K(BlockCodec, qtype=Q.Q4_K):
    """
    byte 0      2      4             16                                   144
         +------+------+-------------+------------------------------------+
         | d    | dmin | scales[12]  | qs[128]                            |
         +------+------+-------------+------------------------------------+
    scales: 6-bit sc[8] and mn[8], see _pack_scale_min_k4;  qs: see module doc, q in 0..15
    x[e] = (d*sc[i]) * q[e] - (dmin*mn[i]),  i = e // 32
    """

    @classmethod
    def _pack(cls, f: KQuantFields) -> np.ndarray:
        return np.concatenate([fp16_bytes(f.d), fp16_bytes(f.dmin), _pack_scale_min_k4(f.sc, f.mn),
                               _pack_k_nibbles(f.q)], axis=1)

    @classmethod
    def _unpack(cls, b: np.ndarray) -> KQuantFields:
        sc, mn = _unpack_scale_min_k4(b[:, 4:16])
        return KQuantFields(fp16_at(b, 0), fp16_at(b, 2), sc.astype(np.int8), mn.astype(np.int8),
                            _unpack_k_nibbles(b[:, 16:]).astype(np.int8))

    @classmethod
    def _decode(cls, f: KQuantFields) -> np.ndarray:
        return _affine_decode(f)


class Q5_K(BlockCodec, qtype=Q.Q5_K):
    """
    byte 0      2      4             16           48                        176
         +------+------+-------------+------------+-------------------------+
         | d    | dmin | scales[12]  | qh[32]     | qs[128]                 |
         +------+------+-------------+------------+-------------------------+
    scales as Q4_K; qs = low 4 bits of q in Q4_K order; qh[e % 32] bit e // 32 = q[e] >> 4
    x[e] = (d*sc[i]) * q[e] - (dmin*mn[i]),  i = e // 32,  q in 0..31
    """

    @classmethod
    def _pack(cls, f: KQuantFields) -> np.ndarray:
        return np.concatenate([fp16_bytes(f.d), fp16_bytes(f.dmin), _pack_scale_min_k4(f.sc, f.mn),
                               pack_bit_planes(f.q >> 4), _pack_k_nibbles(f.q)], axis=1)

    @classmethod
    def _unpack(cls, b: np.ndarray) -> KQuantFields:
        sc, mn = _unpack_scale_min_k4(b[:, 4:16])
        q = _unpack_k_nibbles(b[:, 48:]) | unpack_bit_planes(b[:, 16:48]) << 4
        return KQuantFields(fp16_at(b, 0), fp16_at(b, 2), sc.astype(np.int8), mn.astype(np.int8),
                            q.astype(np.int8))

    @classmethod
    def _decode(cls, f: KQuantFields) -> np.ndarray:
        return _affine_decode(f)


class IQ4_XS(BlockCodec, qtype=Q.IQ4_XS):
    """
    byte 0      2             4             8                                   136
         +------+-------------+-------------+-----------------------------------+
         | d    | scales_h    | scales_l[4] | qs[128]                           |
         +------+-------------+-------------+-----------------------------------+
    ls = sc + 32 (6 bits):  scales_l[i/2] nibble i%2 = ls[i] & 15,  scales_h (u16) bits 2i..2i+1 = ls[i] >> 4
    qs[16i + j] = q[32i + j] | q[32i + 16 + j] << 4      (q: index into kvalues_iq4nl)
    x[e] = (d*sc[i]) * kvalues_iq4nl[q[e]],  i = e // 32,  sc in -32..31
    """

    @classmethod
    def _pack(cls, f: KQuantFields) -> np.ndarray:
        ls = f.sc + 32
        scales_h = ((ls >> 4) << (2 * np.arange(8))).sum(axis=1).astype("<u2").view(np.uint8).reshape(-1, 2)
        scales_l = nibbles(ls[:, 0::2], ls[:, 1::2])
        g = f.q.reshape(-1, 8, 2, 16)  # [i, low/high, j]
        qs = nibbles(g[:, :, 0], g[:, :, 1]).reshape(-1, 128)
        return np.concatenate([fp16_bytes(f.d), scales_h, scales_l, qs], axis=1)

    @classmethod
    def _unpack(cls, b: np.ndarray) -> KQuantFields:
        scales_h = np.ascontiguousarray(b[:, 2:4]).view("<u2").astype(np.int32)  # (n, 1)
        lo, hi = split_nibbles(b[:, 4:8])
        ls = np.stack([lo, hi], axis=2).reshape(-1, 8) | ((scales_h >> (2 * np.arange(8))) & 3) << 4
        qlo, qhi = split_nibbles(b[:, 8:].reshape(-1, 8, 1, 16))
        q = np.concatenate([qlo, qhi], axis=2).reshape(-1, 256)
        return KQuantFields(fp16_at(b, 0), None, ls.astype(np.int8) - 32, None, q.astype(np.int8))

    @classmethod
    def _decode(cls, f: KQuantFields) -> np.ndarray:
        dl = f32(f.d)[:, None] * f32(f.sc)
        return (dl[:, :, None] * _KVALUES[f.q].reshape(-1, 8, 32)).reshape(-1, 256)
