"""Ternary 256-element blocks (BitNet b1.58 / TriLM): TQ1_0 and TQ2_0, x = q*d with q in {-1, 0, 1}.

Both store the trit t = q + 1 in {0, 1, 2} and the scale d (fp16) *after* the codes.
"""

from __future__ import annotations

import gguf
import numpy as np

from hqq2gguf.pack.base import BlockCodec
from hqq2gguf.pack.fields import LegacyFields, f32, fp16_at, fp16_bytes

Q = gguf.GGMLQuantizationType

# TQ1_0 groups: (first element, bytes, trits per byte). Byte m of a group holds elements
# first + m + k*bytes for k = 0..trits-1, the first one in the most significant trit.
_TQ1_GROUPS = ((0, 32, 5), (160, 16, 5), (240, 4, 4))
_POW3 = np.array([1, 3, 9, 27, 81], dtype=np.int32)


def _tq1_pack_group(t: np.ndarray, first: int, nbytes: int, trits: int) -> np.ndarray:
    """(n, 256) trits -> (n, nbytes): v = base-3 number of the byte's trits (5 trits; 4 padded by one
    zero trit at the bottom), stored as ceil(v * 256 / 243) so that a byte times 3^k keeps trit k on top."""
    g = t[:, first:first + nbytes * trits].reshape(-1, trits, nbytes)
    v = np.einsum("nkm,k->nm", g, _POW3[:trits][::-1]) * (3 ** (5 - trits))
    return ((v * 256 + 242) // 243).astype(np.uint8)


def _tq1_unpack_group(b: np.ndarray, trits: int) -> np.ndarray:
    """(n, nbytes) -> (n, trits*nbytes) trits, as ggml decodes: ((b * 3^k mod 256) * 3) >> 8."""
    shifted = (b[:, None, :].astype(np.int32) * _POW3[:trits, None]) & 0xFF
    return ((shifted * 3) >> 8).reshape(b.shape[0], trits * b.shape[1])


class TQ1_0(BlockCodec, qtype=Q.TQ1_0):
    """
    byte 0                        32             48     52     54
         +------------------------+--------------+------+------+
         | qs[0:32]               | qs[32:48]    | qh[4]| d    |     x[e] = q[e] * d,  q in -1..1
         +------------------------+--------------+------+------+
    t = q + 1 (base-3 digit), bytes = ceil(v * 256 / 243), v the base-3 number of the byte's trits:
      qs[m]      m < 32: elements       m + 32k, k = 0..4   (k = 0 the most significant trit)
      qs[32+m]   m < 16: elements 160 + m + 16k, k = 0..4
      qh[j]      j < 4:  elements 240 + j +  4k, k = 0..3, then one zero trit (v multiplied by 3)
    """

    @classmethod
    def _pack(cls, f: LegacyFields) -> np.ndarray:
        t = f.q + 1
        parts = [_tq1_pack_group(t, *g) for g in _TQ1_GROUPS]
        return np.concatenate([*parts, fp16_bytes(f.d)], axis=1)

    @classmethod
    def _unpack(cls, b: np.ndarray) -> LegacyFields:
        parts, at = [], 0
        for _, nbytes, trits in _TQ1_GROUPS:
            parts.append(_tq1_unpack_group(b[:, at:at + nbytes], trits))
            at += nbytes
        return LegacyFields(fp16_at(b, at), None, np.concatenate(parts, axis=1).astype(np.int8) - 1)

    @classmethod
    def _decode(cls, f: LegacyFields) -> np.ndarray:
        return f32(f.q) * f32(f.d)[:, None]


class TQ2_0(BlockCodec, qtype=Q.TQ2_0):
    """
    byte 0                                        64     66
         +----------------------------------------+------+
         | qs[64]                                 | d    |     x[e] = q[e] * d,  q in -1..1
         +----------------------------------------+------+
    qs[32h + m] bits 2k..2k+1 = q[128h + 32k + m] + 1      h = 0..1, k = 0..3, m = 0..31
    """

    @classmethod
    def _pack(cls, f: LegacyFields) -> np.ndarray:
        t = (f.q + 1).reshape(-1, 2, 4, 32)
        qs = t[:, :, 0] | t[:, :, 1] << 2 | t[:, :, 2] << 4 | t[:, :, 3] << 6
        return np.concatenate([qs.reshape(-1, 64).astype(np.uint8), fp16_bytes(f.d)], axis=1)

    @classmethod
    def _unpack(cls, b: np.ndarray) -> LegacyFields:
        qs = b[:, :64].reshape(-1, 2, 1, 32)
        t = (qs >> np.array([0, 2, 4, 6], dtype=np.uint8)[:, None]) & 3
        return LegacyFields(fp16_at(b, 64), None, t.reshape(-1, 256).astype(np.int8) - 1)

    @classmethod
    def _decode(cls, f: LegacyFields) -> np.ndarray:
        return f32(f.q) * f32(f.d)[:, None]
