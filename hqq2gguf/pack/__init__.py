"""Exact bit packing of solver fields into ggml block bytes, and back.

    fields --pack--> uint8 (n_blocks, type_size) --unpack--> fields --decode--> float32 (n_blocks, block)

One codec class per type (``Q4_K.pack(fields)``, ``Q4_K.unpack(blocks)``, ``Q4_K.decode(fields)``),
each with its byte layout diagram; :func:`pack`, :func:`unpack` and :func:`decode` dispatch on the
``GGMLQuantizationType``. ``decode`` reproduces ggml's ``dequantize_row_*`` bit for bit.
"""

from __future__ import annotations

import gguf
import numpy as np

from hqq2gguf.pack.base import BlockCodec, codec, codecs
from hqq2gguf.pack.fields import FieldError, Fields, KQuantFields, LegacyFields, same_fields
from hqq2gguf.pack.k_sub16 import Q2_K, Q3_K, Q6_K
from hqq2gguf.pack.k_sub32 import IQ4_XS, Q4_K, Q5_K
from hqq2gguf.pack.legacy import IQ4_NL, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0
from hqq2gguf.pack.ternary import TQ1_0, TQ2_0


def pack(qtype: gguf.GGMLQuantizationType, fields: Fields) -> np.ndarray:
    """Fields of n blocks -> uint8 (n, type_size). FieldError for invalid fields."""
    return codec(qtype).pack(fields)


def unpack(qtype: gguf.GGMLQuantizationType, blocks: np.ndarray) -> Fields:
    """uint8 blocks (n, type_size) -- or a (rows, row_bytes) tensor of whole blocks -- -> fields."""
    return codec(qtype).unpack(blocks)


def decode(qtype: gguf.GGMLQuantizationType, fields: Fields) -> np.ndarray:
    """Fields of n blocks -> float32 (n, block_size), bit-identical to ggml's dequantization."""
    return codec(qtype).decode(fields)


__all__ = [
    "BlockCodec", "FieldError", "Fields", "KQuantFields", "LegacyFields",
    "codec", "codecs", "decode", "pack", "same_fields", "unpack",
    "IQ4_NL", "IQ4_XS", "Q2_K", "Q3_K", "Q4_0", "Q4_1", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0",
    "TQ1_0", "TQ2_0",
]
