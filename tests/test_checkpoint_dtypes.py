"""Checkpoint dtypes: a weight stored as integers or booleans (quantized codes: GPTQ/AWQ/bitsandbytes) is refused
with the tensor and dtype named, like FP8; the integer buffers llama.cpp's converter skips are skipped."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from bad_input_helpers import convert_fails, rewrite_safetensors_header
from hqq2gguf.convert import convert
from hqq2gguf.gguf_diff import compare_gguf, format_diffs
from hqq2gguf.options import ConvertOptions

Q_PROJ = "model.layers.0.self_attn.q_proj.weight"


def _copy(tiny_model_dir, name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_model_dir(name), tmp_path / name))


# The same bytes read as integers of the same width: only the header changes, as in a mislabelled checkpoint.
@pytest.mark.parametrize(("name", "dtype"), [("llama2", "I32"), ("llama2_f16", "I16")])
def test_integer_weight_is_refused_with_tensor_and_dtype(tiny_model_dir, tmp_path: Path, name: str,
                                                         dtype: str) -> None:
    model = _copy(tiny_model_dir, name, tmp_path)
    rewrite_safetensors_header(model / "model.safetensors", lambda h: h[Q_PROJ].update(dtype=dtype))
    convert_fails(model, tmp_path / "out", f"tensor '{Q_PROJ}'", f"dtype '{dtype}' cannot be converted",
                  "dequantize")


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.bool])
def test_narrow_integer_weights_are_refused(tiny_model_dir, tmp_path: Path, dtype: torch.dtype) -> None:
    model = _copy(tiny_model_dir, "llama2", tmp_path)
    tensors = load_file(model / "model.safetensors")
    tensors[Q_PROJ] = (tensors[Q_PROJ] > 0).to(dtype)  # GPTQ/bitsandbytes-like codes in place of the weight
    save_file(tensors, model / "model.safetensors")
    convert_fails(model, tmp_path / "out", f"tensor '{Q_PROJ}'", "cannot be converted")


def test_integer_buffers_llama_cpp_skips_are_skipped(tiny_model_dir, tmp_path: Path) -> None:
    model = _copy(tiny_model_dir, "llama2", tmp_path)
    tensors = load_file(model / "model.safetensors")
    tensors["model.layers.0.attention.bias"] = torch.tril(torch.ones(1, 1, 8, 8, dtype=torch.bool))  # causal mask
    tensors["model.layers.1.attention.masked_bias"] = torch.tensor(-10000, dtype=torch.int32)
    save_file(tensors, model / "model.safetensors")
    with_buffers = convert(model, ConvertOptions(output=tmp_path / "a.gguf")).path
    clean = convert(tiny_model_dir("llama2"), ConvertOptions(output=tmp_path / "b.gguf")).path
    diffs = compare_gguf(with_buffers, clean)
    assert not diffs, format_diffs(diffs, with_buffers, clean)
