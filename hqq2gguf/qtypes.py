"""The target GGUF types, declared once as data: what a block holds and how it dequantizes.

Each entry says what the solver may choose for one block (code range, sub-scale and min bit widths)
and how the fields map back to floats (``dequant``). Byte sizes are derived from the bit widths and
checked against ``gguf.GGML_QUANT_SIZES`` (tests/test_qtypes.py), so the table cannot drift from ggml.

Conventions shared with :mod:`hqq2gguf.pack`:

* ``q`` is the integer *level* as it enters the formula (Q4_0: -8..7, Q4_1: 0..15, Q3_K: -4..3),
  not the stored offset-binary nibble; for codebook types (IQ4_*) it is the index into ``codebook``.
* ``d`` (and ``m``/``dmin``) are fp16; sub-scales ``sc`` and mins ``mn`` are small integers.
* ``block_size`` elements per block (a super-block for K-quants), ``sub_block`` elements per sub-scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import gguf

from hqq2gguf.errors import UnsupportedError

Q = gguf.GGMLQuantizationType
QK_K = 256

#: llama.cpp's ``kvalues_iq4nl`` (ggml-common.h): the 16 levels of IQ4_NL and IQ4_XS.
KVALUES_IQ4NL: tuple[int, ...] = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)


class Kind(str, Enum):
    """How a type stores its values."""

    FLOAT = "float"
    """Pass-through: one IEEE value per element (F32, F16, BF16); no codes, no scales."""
    BLOCK = "block"
    """One fp16 scale (and maybe an fp16 min) per block: Q4_0..Q8_0, IQ4_NL, TQ1_0, TQ2_0."""
    SUPER = "super"
    """K-quant super-block: fp16 super-scale(s) times integer sub-scales/mins per sub-block."""


@dataclass(frozen=True)
class QuantSpec:
    """One GGUF block type as the solver sees it."""

    qtype: gguf.GGMLQuantizationType
    kind: Kind
    block_size: int  # elements per block (super-block for K-quants)
    code_bytes: int  # bytes holding the codes of one block (for FLOAT: the bytes of one element)
    fp16_scales: int = 0  # fp16 fields per block: d, or d+m / d+dmin
    sub_block: int = 0  # elements per sub-scale (SUPER only)
    sub_scale_bits: int = 0
    sub_scale_signed: bool = False  # Q3_K/IQ4_XS store sc+32; Q6_K an int8
    min_bits: int = 0  # bits of each sub-block min (Q2_K/Q4_K/Q5_K)
    qmin: int = 0  # code range, inclusive
    qmax: int = 0
    codebook: tuple[int, ...] | None = None  # levels indexed by q (IQ4_*)
    dequant: str = ""  # the ggml formula, evaluated left to right in float32

    @property
    def name(self) -> str:
        return self.qtype.name

    @property
    def affine(self) -> bool:
        """True when the block has a min (x = d*q + m, or d*sc*q - dmin*mn)."""
        return self.fp16_scales == 2

    @property
    def n_sub(self) -> int:
        """Sub-blocks per block (0 without sub-scales)."""
        return self.block_size // self.sub_block if self.sub_block else 0

    @property
    def type_size(self) -> int:
        """Bytes per block: fp16 scales + packed sub-scales/mins + packed codes."""
        return 2 * self.fp16_scales + self.n_sub * (self.sub_scale_bits + self.min_bits) // 8 + self.code_bytes

    @property
    def bpw(self) -> float:
        return 8 * self.type_size / self.block_size

    @property
    def sc_range(self) -> tuple[int, int]:
        """Inclusive range of the integer sub-scales."""
        if self.sub_scale_signed:
            return -(1 << (self.sub_scale_bits - 1)), (1 << (self.sub_scale_bits - 1)) - 1
        return 0, (1 << self.sub_scale_bits) - 1

    @property
    def mn_range(self) -> tuple[int, int]:
        """Inclusive range of the integer sub-block mins."""
        return 0, (1 << self.min_bits) - 1


def _block(qtype: Q, code_bits: int, qmin: int, qmax: int, dequant: str, *, affine: bool = False,
           block: int = 32, codebook: tuple[int, ...] | None = None) -> QuantSpec:
    return QuantSpec(qtype, Kind.BLOCK, block, block * code_bits // 8, 2 if affine else 1,
                     qmin=qmin, qmax=qmax, codebook=codebook, dequant=dequant)


def _super(qtype: Q, code_bits: int, qmin: int, qmax: int, dequant: str, *, sub_block: int, sc_bits: int,
           sc_signed: bool = False, min_bits: int = 0, codebook: tuple[int, ...] | None = None) -> QuantSpec:
    return QuantSpec(qtype, Kind.SUPER, QK_K, QK_K * code_bits // 8, 2 if min_bits else 1, sub_block,
                     sc_bits, sc_signed, min_bits, qmin, qmax, codebook, dequant)


_SPECS: tuple[QuantSpec, ...] = (
    QuantSpec(Q.F32, Kind.FLOAT, 1, 4, dequant="x"),
    QuantSpec(Q.F16, Kind.FLOAT, 1, 2, dequant="x"),
    QuantSpec(Q.BF16, Kind.FLOAT, 1, 2, dequant="x"),
    _block(Q.Q8_0, 8, -128, 127, "d*q"),
    _block(Q.Q5_1, 5, 0, 31, "d*q + m", affine=True),
    _block(Q.Q5_0, 5, -16, 15, "d*q"),
    _block(Q.Q4_1, 4, 0, 15, "d*q + m", affine=True),
    _block(Q.Q4_0, 4, -8, 7, "d*q"),
    _block(Q.IQ4_NL, 4, 0, 15, "d*codebook[q]", codebook=KVALUES_IQ4NL),
    # TQ1_0 packs 5 trits per byte (240 codes in 48 bytes) + 4 per byte (16 codes in 4 bytes).
    QuantSpec(Q.TQ1_0, Kind.BLOCK, QK_K, (QK_K - 16) // 5 + 16 // 4, 1, qmin=-1, qmax=1, dequant="q*d"),
    _block(Q.TQ2_0, 2, -1, 1, "q*d", block=QK_K),
    _super(Q.Q6_K, 6, -32, 31, "(d*sc)*q", sub_block=16, sc_bits=8, sc_signed=True),
    _super(Q.Q5_K, 5, 0, 31, "(d*sc)*q - dmin*mn", sub_block=32, sc_bits=6, min_bits=6),
    _super(Q.Q4_K, 4, 0, 15, "(d*sc)*q - dmin*mn", sub_block=32, sc_bits=6, min_bits=6),
    _super(Q.Q3_K, 3, -4, 3, "(d*sc)*q", sub_block=16, sc_bits=6, sc_signed=True),
    _super(Q.Q2_K, 2, 0, 3, "(d*sc)*q - dmin*mn", sub_block=16, sc_bits=4, min_bits=4),
    _super(Q.IQ4_XS, 4, 0, 15, "(d*sc)*codebook[q]", sub_block=32, sc_bits=6, sc_signed=True,
           codebook=KVALUES_IQ4NL),
)

#: The one table: every type hqq2gguf can write, by ggml type id.
QTYPES: dict[gguf.GGMLQuantizationType, QuantSpec] = {s.qtype: s for s in _SPECS}

#: The quantized (non pass-through) types.
QUANT_TYPES: tuple[gguf.GGMLQuantizationType, ...] = tuple(s.qtype for s in _SPECS if s.kind is not Kind.FLOAT)


def spec(qtype: gguf.GGMLQuantizationType | str) -> QuantSpec:
    """The table entry of ``qtype`` (a ``GGMLQuantizationType`` or its name, e.g. ``"Q4_K"``)."""
    try:
        key = Q[qtype.upper()] if isinstance(qtype, str) else Q(qtype)
        return QTYPES[key]
    except (KeyError, ValueError):
        known = ", ".join(s.name for s in _SPECS)
        raise UnsupportedError(f"GGUF type {qtype!r} is not a hqq2gguf target type (known: {known})") from None
