"""Bit-exact packing: hqq2gguf.pack against two independent decoders (gguf-py and libggml's to_float)
and against llama.cpp's own quantized bytes (hqq2gguf.ggml_ref)."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from hqq2gguf import ggml_ref, pack
from hqq2gguf.errors import InputError, UnsupportedError
from hqq2gguf.pack import FieldError, KQuantFields, LegacyFields, same_fields
from hqq2gguf.qtypes import QUANT_TYPES, Kind, QuantSpec, spec

Q = gguf.GGMLQuantizationType
TYPES = pytest.mark.parametrize("qtype", QUANT_TYPES, ids=lambda t: t.name)


# ---------------------------------------------------------------- helpers

def random_fp16(rng: np.random.Generator, n: int) -> np.ndarray:
    """Any finite fp16 bit pattern: zeros, -0, subnormals, negatives, 65504 all turn up."""
    bits = rng.integers(0, 1 << 16, n, dtype=np.uint16)
    bits = np.where((bits & 0x7C00) == 0x7C00, bits & 0x83FF, bits).astype(np.uint16)
    realistic = (rng.standard_normal(n) * 1e-2).astype(np.float16).view(np.uint16)
    return np.where(rng.random(n) < 0.5, bits, realistic).view(np.float16)


def random_fields(s: QuantSpec, n: int, rng: np.random.Generator) -> pack.Fields:
    q = rng.integers(s.qmin, s.qmax + 1, (n, s.block_size))
    if s.kind is Kind.BLOCK:
        return LegacyFields(random_fp16(rng, n), random_fp16(rng, n) if s.affine else None, q)
    sc = rng.integers(s.sc_range[0], s.sc_range[1] + 1, (n, s.n_sub))
    if not s.affine:
        return KQuantFields(random_fp16(rng, n), None, sc, None, q)
    mn = rng.integers(0, s.mn_range[1] + 1, (n, s.n_sub))
    return KQuantFields(random_fp16(rng, n), random_fp16(rng, n), sc, mn, q)


def assert_bits_equal(a: np.ndarray, b: np.ndarray, what: str) -> None:
    assert a.shape == b.shape, what
    bad = np.flatnonzero(a.view(np.uint32).ravel() != b.view(np.uint32).ravel())
    assert bad.size == 0, f"{what}: {bad.size} values differ, first at {bad[0]}: {a.ravel()[bad[0]]!r} vs {b.ravel()[bad[0]]!r}"


def check_against_decoders(qtype: Q, blocks: np.ndarray, rows: int) -> pack.Fields:
    """blocks (n, type_size), n = rows * blocks per row: decode(unpack) == gguf-py == libggml, bit for bit."""
    s = spec(qtype)
    tensor = blocks.reshape(rows, -1)
    f = pack.unpack(qtype, blocks)
    ours = pack.decode(qtype, f).reshape(rows, -1)
    assert_bits_equal(ours, gguf.quants.dequantize(tensor, qtype), f"{s.name} decode vs gguf-py")
    assert_bits_equal(ours, ggml_ref.ggml_dequantize(qtype, tensor), f"{s.name} decode vs libggml")
    return f


def roundtrip_ggml(qtype: Q, x: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """llama.cpp quantizes x; its bytes unpack, repack to the same bytes and decode like ggml."""
    s = spec(qtype)
    raw = ggml_ref.ggml_quantize(qtype, x, imatrix)
    assert ggml_ref.ggml_validate_row_data(qtype, raw)
    blocks = raw.reshape(-1, s.type_size)
    f = check_against_decoders(qtype, blocks, x.shape[0])
    assert np.array_equal(pack.pack(qtype, f), blocks), f"{s.name}: unpack -> pack changed llama.cpp's bytes"
    return raw


# ---------------------------------------------------------------- random valid fields

@TYPES
@settings(max_examples=20, deadline=None, derandomize=True, database=None)
@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 5), per_row=st.integers(1, 6))
def test_random_fields(qtype, seed, rows, per_row):
    """fields -> pack -> (a) gguf-py and (b) libggml decode the bytes as decode(fields); (c) unpack inverts."""
    s = spec(qtype)
    f = random_fields(s, rows * per_row, np.random.default_rng(seed))
    blocks = pack.pack(qtype, f)
    assert blocks.shape == (rows * per_row, s.type_size) and blocks.dtype == np.uint8
    back = check_against_decoders(qtype, blocks, rows)  # (a), (b) on decode(unpack(bytes))
    assert same_fields(back, f), f"{s.name}: unpack(pack(f)) != f"  # (c)
    assert_bits_equal(pack.decode(qtype, f), pack.decode(qtype, back), f"{s.name} decode(f)")


@TYPES
def test_no_blocks(qtype):
    s = spec(qtype)
    f = random_fields(s, 0, np.random.default_rng(0))
    assert pack.pack(qtype, f).shape == (0, s.type_size)
    assert pack.decode(qtype, f).shape == (0, s.block_size)
    assert same_fields(pack.unpack(qtype, np.zeros(0, np.uint8)), f)


@TYPES
def test_many_blocks_at_once(qtype):
    """A whole tensor in one call (vectorized path), 2000 blocks."""
    s = spec(qtype)
    f = random_fields(s, 2000, np.random.default_rng(int(qtype)))
    check_against_decoders(qtype, pack.pack(qtype, f), 40)


# Offsets of the fp16 fields: every other bit pattern of these types is a valid block.
FP16_AT = {Q.Q4_0: (0,), Q.Q4_1: (0, 2), Q.Q5_0: (0,), Q.Q5_1: (0, 2), Q.Q8_0: (0,), Q.IQ4_NL: (0,),
           Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,), Q.IQ4_XS: (0,)}


@pytest.mark.parametrize("qtype", list(FP16_AT), ids=lambda t: t.name)
def test_random_bytes(qtype):
    """Any byte string (with finite scales) is a block: unpack/pack is the identity, decode matches ggml."""
    s = spec(qtype)
    rng = np.random.default_rng(1000 + int(qtype))
    blocks = rng.integers(0, 256, (512, s.type_size), dtype=np.uint8)
    for at in FP16_AT[qtype]:
        blocks[:, at:at + 2] = random_fp16(rng, 512).view(np.uint8).reshape(-1, 2)
    f = check_against_decoders(qtype, blocks, 8)
    assert np.array_equal(pack.pack(qtype, f), blocks)


def test_tq1_0_every_byte_of_trits():
    """All 3^5 trit patterns: ggml's ceil(v*256/243) byte, decoded back by ggml's (b*3^k*3)>>8 trick."""
    trits = np.array(np.meshgrid(*[np.arange(3)] * 5, indexing="ij")).reshape(5, -1).T  # (243, 5)
    v = trits @ np.array([81, 27, 9, 3, 1])
    q = np.zeros((243, 256), dtype=np.int32)
    q[:, 0:160:32] = trits - 1  # byte 0 holds elements 0, 32, 64, 96, 128
    blocks = pack.pack(Q.TQ1_0, LegacyFields(np.ones(243, np.float16), None, q))
    assert np.array_equal(blocks[:, 0], (v * 256 + 242) // 243)
    assert len(set(blocks[:, 0].tolist())) == 243
    check_against_decoders(Q.TQ1_0, blocks, 1)


# ---------------------------------------------------------------- llama.cpp's own bytes

def sample_rows(kind: str, rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    if kind == "heavy":
        x = (rng.standard_t(2, (rows, cols)) * 0.02).astype(np.float32)
    elif kind == "uniform":
        x = rng.uniform(-3, 1, (rows, cols)).astype(np.float32)
    return x


@TYPES
@pytest.mark.parametrize("kind", ["normal", "heavy", "uniform"])
def test_llama_cpp_bytes_roundtrip(qtype, kind):
    rng = np.random.default_rng(7)
    roundtrip_ggml(qtype, sample_rows(kind, rng, 6, 512))


@TYPES
def test_llama_cpp_bytes_roundtrip_with_imatrix(qtype):
    rng = np.random.default_rng(8)
    x = sample_rows("heavy", rng, 4, 768)
    imatrix = rng.gamma(0.5, 1.0, 768).astype(np.float32)
    imatrix[::7] = 0.0  # dead columns
    roundtrip_ggml(qtype, x, imatrix)


def hostile_rows(cols: int) -> dict[str, np.ndarray]:
    """Rows that stress the scale fitting: each one its own name in the failure message."""
    rng = np.random.default_rng(99)
    base = rng.standard_normal(cols).astype(np.float32)
    one_per_block = np.zeros(cols, np.float32)
    one_per_block[5::32] = rng.standard_normal(cols // 32) * 3
    outlier = base * 0.01
    outlier[::97] = 1e4
    return {
        "zeros": np.zeros(cols, np.float32),
        "neg_zeros": np.full(cols, -0.0, np.float32),
        "constant": np.full(cols, 0.375, np.float32),
        "constant_negative": np.full(cols, -2.5, np.float32),
        "huge_outliers": outlier,
        # small magnitudes: every type gets some d/m/dmin in fp16's subnormal range (< 2^-14)
        **{f"tiny_{scale:g}": base * scale for scale in (3e-7, 1e-5, 1e-4, 1e-3)},
        "below_fp16": base * 1e-9,  # scales round to zero
        "one_nonzero_per_block": one_per_block,
        "negative_only": -np.abs(base) - 0.1,
        "positive_only": np.abs(base) + 0.1,
        "large": base * 1e3,
        "alternating": np.where(np.arange(cols) % 2 == 0, 1.0, -1.0).astype(np.float32),
    }


@TYPES
def test_hostile_rows(qtype):
    rows = hostile_rows(512)
    x = np.stack(list(rows.values()))
    for name, row in rows.items():
        try:
            roundtrip_ggml(qtype, row[None, :])
        except AssertionError as exc:
            raise AssertionError(f"hostile row {name!r}: {exc}") from None
    f = pack.unpack(qtype, roundtrip_ggml(qtype, x))  # and all of them as one tensor
    scales = np.concatenate([a for a in (f.d, getattr(f, "m", None), getattr(f, "dmin", None)) if a is not None])
    assert ((scales != 0) & (np.abs(scales) < np.float16(2**-14))).any(), "no subnormal fp16 scale exercised"


@TYPES
def test_hostile_rows_with_imatrix(qtype):
    rows = hostile_rows(256)
    imatrix = np.random.default_rng(5).gamma(0.5, 1.0, 256).astype(np.float32)
    roundtrip_ggml(qtype, np.stack(list(rows.values())), imatrix)


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_K, Q.Q6_K], ids=lambda t: t.name)
def test_beyond_fp16_range(qtype):
    """Values past fp16: llama.cpp writes an inf scale and its validator rejects it; pack refuses too."""
    raw = ggml_ref.ggml_quantize(qtype, np.full((1, 256), 1e9, np.float32))
    assert not ggml_ref.ggml_validate_row_data(qtype, raw)
    f = pack.unpack(qtype, raw)
    with pytest.raises(FieldError, match="non-finite"):
        pack.pack(qtype, f)


# ---------------------------------------------------------------- errors

def test_field_errors():
    s = spec(Q.Q4_0)
    good = random_fields(s, 3, np.random.default_rng(0))
    with pytest.raises(FieldError, match=r"q must lie in \[-8, 7\]"):
        pack.pack(Q.Q4_0, LegacyFields(good.d, None, good.q + 8))
    with pytest.raises(FieldError, match="float16"):
        pack.pack(Q.Q4_0, LegacyFields(good.d.astype(np.float32), None, good.q))
    with pytest.raises(FieldError, match="symmetric"):
        pack.pack(Q.Q4_0, LegacyFields(good.d, good.d, good.q))
    with pytest.raises(FieldError, match="affine"):
        pack.pack(Q.Q4_1, LegacyFields(good.d, None, good.q))
    with pytest.raises(FieldError, match="shape"):
        pack.pack(Q.Q4_0, LegacyFields(good.d, None, good.q[:, :16]))
    with pytest.raises(FieldError, match="KQuantFields"):
        pack.pack(Q.Q4_K, good)
    k = random_fields(spec(Q.Q4_K), 2, np.random.default_rng(1))
    with pytest.raises(FieldError, match=r"mn must lie in \[0, 63\]"):
        pack.decode(Q.Q4_K, KQuantFields(k.d, k.dmin, k.sc, k.mn + 64, k.q))
    with pytest.raises(FieldError, match="whole number"):
        pack.unpack(Q.Q4_K, np.zeros(145, np.uint8))


def test_dispatch_errors():
    with pytest.raises(UnsupportedError):
        pack.pack(Q.IQ2_XXS, None)
    with pytest.raises(UnsupportedError):
        pack.decode(Q.F16, None)


def test_ggml_ref_errors():
    with pytest.raises(InputError, match="whole number"):
        ggml_ref.ggml_quantize(Q.Q4_K, np.zeros((1, 200), np.float32))
    with pytest.raises(InputError, match="non-finite"):
        ggml_ref.ggml_quantize(Q.Q8_0, np.full((1, 32), np.nan, np.float32))
    with pytest.raises(InputError, match="imatrix"):
        ggml_ref.ggml_quantize(Q.Q4_K, np.zeros((1, 256), np.float32), np.ones(255, np.float32))
    with pytest.raises(UnsupportedError):
        ggml_ref.ggml_quantize(Q.IQ2_XXS, np.zeros((1, 256), np.float32))


def test_ggml_ref_float_passthrough():
    x = np.random.default_rng(3).standard_normal((2, 64)).astype(np.float32)
    for qtype, dtype in ((Q.F16, np.float16), (Q.F32, np.float32)):
        raw = ggml_ref.ggml_quantize(qtype, x)
        assert np.array_equal(raw.view(dtype), x.astype(dtype))
    assert np.array_equal(ggml_ref.ggml_dequantize(Q.F16, ggml_ref.ggml_quantize(Q.F16, x)),
                          x.astype(np.float16).astype(np.float32))
