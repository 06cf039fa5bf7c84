"""The type table (hqq2gguf.qtypes) against gguf-py's and libggml's own numbers."""

from __future__ import annotations

import gguf
import pytest

from hqq2gguf import pack
from hqq2gguf.errors import UnsupportedError
from hqq2gguf.qtypes import KVALUES_IQ4NL, QTYPES, QUANT_TYPES, Kind, spec

Q = gguf.GGMLQuantizationType

# bits per weight as llama.cpp documents them (ggml-common.h comments, quantize --help)
BPW = {Q.Q8_0: 8.5, Q.Q6_K: 6.5625, Q.Q5_K: 5.5, Q.Q4_K: 4.5, Q.Q3_K: 3.4375, Q.Q2_K: 2.625, Q.Q5_1: 6.0,
       Q.Q5_0: 5.5, Q.Q4_1: 5.0, Q.Q4_0: 4.5, Q.IQ4_NL: 4.5, Q.IQ4_XS: 4.25, Q.TQ2_0: 2.0625, Q.TQ1_0: 1.6875,
       Q.F32: 32.0, Q.F16: 16.0, Q.BF16: 16.0}


def test_the_table_covers_the_targets():
    assert set(QTYPES) == set(BPW)
    assert all(isinstance(t, Q) for t in QTYPES)  # gguf's enum, not a copy


@pytest.mark.parametrize("qtype", list(QTYPES), ids=lambda t: t.name)
def test_sizes_match_gguf(qtype):
    s = QTYPES[qtype]
    assert (s.block_size, s.type_size) == gguf.GGML_QUANT_SIZES[qtype]
    assert s.bpw == BPW[qtype]


@pytest.mark.parametrize("qtype", QUANT_TYPES, ids=lambda t: t.name)
def test_sizes_match_libggml(qtype):
    from hqq2gguf import ggml_ref

    s = QTYPES[qtype]
    assert ggml_ref.ggml_row_size(qtype, 4 * s.block_size) == 4 * s.type_size


@pytest.mark.parametrize("qtype", QUANT_TYPES, ids=lambda t: t.name)
def test_ranges_are_consistent(qtype):
    s = QTYPES[qtype]
    assert s.qmin < s.qmax
    if s.kind is Kind.SUPER:
        assert s.block_size % s.sub_block == 0 and s.sub_scale_bits > 0
        assert (s.min_bits > 0) == s.affine
    else:
        assert s.n_sub == 0 and s.sub_scale_bits == 0 and s.min_bits == 0
    if s.codebook is not None:
        assert (s.qmin, s.qmax) == (0, len(s.codebook) - 1)


def test_specific_ranges():
    assert spec(Q.Q3_K).sc_range == (-32, 31)
    assert spec(Q.IQ4_XS).sc_range == (-32, 31)
    assert spec(Q.Q6_K).sc_range == (-128, 127)
    assert spec(Q.Q4_K).sc_range == spec(Q.Q4_K).mn_range == (0, 63)
    assert spec(Q.Q2_K).sc_range == spec(Q.Q2_K).mn_range == (0, 15)
    assert (spec(Q.Q4_0).qmin, spec(Q.Q4_0).qmax) == (-8, 7)
    assert (spec(Q.Q5_K).n_sub, spec(Q.Q6_K).n_sub) == (8, 16)
    assert spec(Q.Q4_1).affine and not spec(Q.Q4_0).affine


def test_codebook_is_ggmls():
    assert KVALUES_IQ4NL == tuple(gguf.quants.IQ4_NL.kvalues)
    assert spec(Q.IQ4_XS).codebook == spec(Q.IQ4_NL).codebook == KVALUES_IQ4NL


def test_every_quant_type_has_a_packer():
    assert set(pack.codecs()) == set(QUANT_TYPES)


def test_lookup_by_name_and_errors():
    assert spec("q4_k") is spec(Q.Q4_K) is QTYPES[Q.Q4_K]
    with pytest.raises(UnsupportedError, match="IQ2_XXS"):
        spec(Q.IQ2_XXS)
    with pytest.raises(UnsupportedError, match="not a hqq2gguf target"):
        spec("Q9_K")
    with pytest.raises(UnsupportedError, match="no block packer for F16"):
        pack.codec(Q.F16)
