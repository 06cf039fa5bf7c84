"""GGUF input: metadata and tensors pass through; requantizing needs a flag; same input -> same bytes."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from hqq2gguf.gguf_diff import compare_gguf
from hqq2gguf.convert import convert
from hqq2gguf.errors import InputError, OptionError
from hqq2gguf.options import ConvertOptions, OutType



def _convert(src: Path, out: Path, outtype: str, **kw) -> Path:
    return convert(src, ConvertOptions(outtype=OutType(outtype), output=out, **kw)).path


@pytest.fixture(scope="module")
def f32_gguf(tiny_model_dir, tmp_path_factory) -> Path:
    return _convert(tiny_model_dir("llama2"), tmp_path_factory.mktemp("g") / "llama2-f32.gguf", "f32")


@pytest.mark.parametrize("outtype", ["f32", "f16", "bf16", "q8_0"])
def test_gguf_route_equals_hf_route(tiny_model_dir, f32_gguf: Path, tmp_path: Path, outtype: str) -> None:
    """F32 GGUF -> X gives the same file as HF -> X (the F32 GGUF holds the exact weights)."""
    direct = _convert(tiny_model_dir("llama2"), tmp_path / "direct.gguf", outtype)
    via_gguf = _convert(f32_gguf, tmp_path / "via.gguf", outtype)
    assert compare_gguf(via_gguf, direct) == []  # provenance keys are ignored by default


def test_auto_keeps_bf16(tiny_model_dir, tmp_path: Path) -> None:
    bf16 = _convert(tiny_model_dir("qwen3"), tmp_path / "bf16.gguf", "bf16")
    auto = _convert(bf16, tmp_path / "auto.gguf", "auto")
    types = {gguf.GGMLQuantizationType(t.tensor_type).name for t in gguf.GGUFReader(auto).tensors}
    assert types == {"BF16", "F32"}
    assert compare_gguf(auto, bf16) == []


def test_quantized_input_needs_allow_requantize(f32_gguf: Path, tmp_path: Path) -> None:
    q8 = _convert(f32_gguf, tmp_path / "q8.gguf", "q8_0")
    with pytest.raises(OptionError, match="already quantized.*--allow-requantize"):
        _convert(q8, tmp_path / "f16.gguf", "f16")
    assert not (tmp_path / "f16.gguf").exists()
    out = _convert(q8, tmp_path / "f16.gguf", "f16", allow_requantize=True)
    # Dequantized Q8_0 values written as F16 equal gguf-py's own dequantization rounded to F16.
    src = {t.name: t for t in gguf.GGUFReader(q8).tensors}
    for t in gguf.GGUFReader(out).tensors:
        s = src[t.name]
        if s.tensor_type == gguf.GGMLQuantizationType.Q8_0:
            expected = gguf.quants.dequantize(s.data, s.tensor_type).astype(np.float16)
            np.testing.assert_array_equal(np.asarray(t.data), expected)


def test_bad_magic(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + bytes(100))
    with pytest.raises(InputError, match="not a GGUF file"):
        _convert(bad, tmp_path / "out.gguf", "f16")


def test_truncated_gguf(f32_gguf: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    data = f32_gguf.read_bytes()
    cut.write_bytes(data[: len(data) - 4096])
    with pytest.raises(InputError, match="truncated"):
        _convert(cut, tmp_path / "out.gguf", "f16")
    assert not (tmp_path / "out.gguf").exists()


@pytest.mark.parametrize("name", ["llama2", "gemma2"])
def test_same_input_same_bytes(tiny_model_dir, tmp_path: Path, name: str) -> None:
    a = _convert(tiny_model_dir(name), tmp_path / "a.gguf", "q8_0")
    b = _convert(tiny_model_dir(name), tmp_path / "b.gguf", "q8_0")
    assert a.read_bytes() == b.read_bytes()
