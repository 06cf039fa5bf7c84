"""K-quant super-blocks of 16 sub-blocks of 16 elements: Q2_K, Q3_K, Q6_K.

Sub-block i covers elements 16i..16i+15 (natural order) in all three types.
Q2_K and Q3_K share the 2-bit plane ``qs[64]``: element 128h + 32s + l (h < 2, s < 4, l < 32) sits in
byte 32h + l, bits 2s..2s+1.
"""

from __future__ import annotations

import gguf
import numpy as np

from hqq2gguf.pack.base import BlockCodec
from hqq2gguf.pack.fields import (
    KQuantFields, f32, fp16_at, fp16_bytes, nibbles, pack_bit_planes, split_nibbles, unpack_bit_planes,
)

Q = gguf.GGMLQuantizationType
_SHIFT4 = np.array([0, 2, 4, 6], dtype=np.uint8)


def _pack_2bit(u: np.ndarray) -> np.ndarray:
    """(n, 256) values 0..3 -> qs (n, 64)."""
    g = u.reshape(-1, 2, 4, 32)
    return (g[:, :, 0] | g[:, :, 1] << 2 | g[:, :, 2] << 4 | g[:, :, 3] << 6).reshape(-1, 64).astype(np.uint8)


def _unpack_2bit(qs: np.ndarray) -> np.ndarray:
    """qs (n, 64) -> (n, 256) values 0..3."""
    return ((qs.reshape(-1, 2, 1, 32) >> _SHIFT4[:, None]) & 3).reshape(-1, 256)


def _per_sub(dl: np.ndarray, q: np.ndarray, n_sub: int = 16) -> np.ndarray:
    """dl (n, n_sub) times the codes of each sub-block, in float32 -> (n, n_sub, block/n_sub)."""
    return dl[:, :, None] * f32(q).reshape(q.shape[0], n_sub, q.shape[1] // n_sub)


class Q2_K(BlockCodec, qtype=Q.Q2_K):
    """
    byte 0               16                              80     82     84
         +---------------+-------------------------------+------+------+
         | scales[16]    | qs[64]                        | d    | dmin |
         +---------------+-------------------------------+------+------+
    scales[i] = sc[i] | mn[i] << 4                        (4-bit sc, 4-bit mn)
    qs: 2-bit plane of q (see module doc)                 q in 0..3
    x[e] = (d*sc[i]) * q[e] - (dmin*mn[i]),  i = e // 16
    """

    @classmethod
    def _pack(cls, f: KQuantFields) -> np.ndarray:
        return np.concatenate([nibbles(f.sc, f.mn), _pack_2bit(f.q), fp16_bytes(f.d), fp16_bytes(f.dmin)], axis=1)

    @classmethod
    def _unpack(cls, b: np.ndarray) -> KQuantFields:
        sc, mn = split_nibbles(b[:, :16])
        q = _unpack_2bit(b[:, 16:80])
        return KQuantFields(fp16_at(b, 80), fp16_at(b, 82), sc.astype(np.int8), mn.astype(np.int8),
                            q.astype(np.int8))

    @classmethod
    def _decode(cls, f: KQuantFields) -> np.ndarray:
        dl = f32(f.d)[:, None] * f32(f.sc)
        ml = f32(f.dmin)[:, None] * f32(f.mn)
        return (_per_sub(dl, f.q) - ml[:, :, None]).reshape(-1, 256)


class Q3_K(BlockCodec, qtype=Q.Q3_K):
    """
    byte 0            32                     96            108    110
         +------------+----------------------+-------------+------+
         | hmask[32]  | qs[64]               | scales[12]  | d    |
         +------------+----------------------+-------------+------+
    u = q + 4 (0..7): qs = 2-bit plane of u & 3 (see module doc); hmask[e % 32] bit e // 32 = u >> 2
      (ggml reads it backwards: a *cleared* hmask bit subtracts 4)
    s = sc + 32 (6 bits, 16 of them in 12 bytes):
      scales[j]     j < 8:  low nibble = s[j] & 15, high nibble = s[j+8] & 15
      scales[8 + j] j < 4:  bits 2k..2k+1 = s[4k + j] >> 4              k = 0..3
    x[e] = (d*sc[i]) * q[e],  i = e // 16,  sc in -32..31, q in -4..3
    """

    @classmethod
    def _pack(cls, f: KQuantFields) -> np.ndarray:
        u, s = f.q + 4, f.sc + 32
        hi = (s >> 4).reshape(-1, 4, 4)  # [k, j] = s[4k + j] >> 4
        top = hi[:, 0] | hi[:, 1] << 2 | hi[:, 2] << 4 | hi[:, 3] << 6
        scales = np.concatenate([nibbles(s[:, :8], s[:, 8:]), top.astype(np.uint8)], axis=1)
        return np.concatenate([pack_bit_planes(u >> 2), _pack_2bit(u & 3), scales, fp16_bytes(f.d)], axis=1)

    @classmethod
    def _unpack(cls, b: np.ndarray) -> KQuantFields:
        u = _unpack_2bit(b[:, 32:96]) | unpack_bit_planes(b[:, :32]) << 2
        lo, hi = split_nibbles(b[:, 96:104])
        top = (b[:, 104:108].reshape(-1, 1, 4) >> _SHIFT4[:, None]) & 3  # [k, j]
        s = np.concatenate([lo, hi], axis=1) | top.reshape(-1, 16) << 4
        return KQuantFields(fp16_at(b, 108), None, s.astype(np.int8) - 32, None, u.astype(np.int8) - 4)

    @classmethod
    def _decode(cls, f: KQuantFields) -> np.ndarray:
        return _per_sub(f32(f.d)[:, None] * f32(f.sc), f.q).reshape(-1, 256)


class Q6_K(BlockCodec, qtype=Q.Q6_K):
    """
    byte 0                     128              192          208    210
         +---------------------+----------------+------------+------+
         | ql[128]             | qh[64]         | scales[16] | d    |
         +---------------------+----------------+------------+------+
    u = q + 32 (0..63); per half h (elements 128h..128h+127), l < 32, g = 0..3 for element 128h+32g+l:
      ql[64h + l]      low nibble: u(g=0) & 15    high nibble: u(g=2) & 15
      ql[64h + 32 + l] low nibble: u(g=1) & 15    high nibble: u(g=3) & 15
      qh[32h + l]      bits 2g..2g+1 = u(g) >> 4
    scales[i] int8;  x[e] = (d*sc[i]) * q[e],  i = e // 16,  q in -32..31
    """

    @classmethod
    def _pack(cls, f: KQuantFields) -> np.ndarray:
        u = (f.q + 32).reshape(-1, 2, 4, 32)  # [h, g, l]
        ql = np.concatenate([nibbles(u[:, :, 0], u[:, :, 2]), nibbles(u[:, :, 1], u[:, :, 3])], axis=2)
        hi = u >> 4
        qh = (hi[:, :, 0] | hi[:, :, 1] << 2 | hi[:, :, 2] << 4 | hi[:, :, 3] << 6).astype(np.uint8)
        sc = f.sc.astype(np.int8).view(np.uint8)
        return np.concatenate([ql.reshape(-1, 128), qh.reshape(-1, 64), sc, fp16_bytes(f.d)], axis=1)

    @classmethod
    def _unpack(cls, b: np.ndarray) -> KQuantFields:
        ql = b[:, :128].reshape(-1, 2, 2, 32)  # [h, first/second 32 bytes, l]
        lo, hi = split_nibbles(ql)
        low4 = np.stack([lo[:, :, 0], lo[:, :, 1], hi[:, :, 0], hi[:, :, 1]], axis=2)  # [h, g, l]
        top2 = (b[:, 128:192].reshape(-1, 2, 1, 32) >> _SHIFT4[:, None]) & 3
        u = (low4 | top2 << 4).reshape(-1, 256)
        sc = b[:, 192:208].view(np.int8).copy()
        return KQuantFields(fp16_at(b, 208), None, sc, None, u.astype(np.int8) - 32)

    @classmethod
    def _decode(cls, f: KQuantFields) -> np.ndarray:
        return _per_sub(f32(f.d)[:, None] * f32(f.sc), f.q).reshape(-1, 256)
