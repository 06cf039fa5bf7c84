"""End to end: a converted F32 model computes, in llama.cpp, the logits transformers computes.

Every tiny architecture is converted to F32 with our converter, loaded with llama-cpp-python and fed
the same token ids as the transformers model (float32, eval mode, no BOS added on either side).
A conversion bug (a missed RoPE permutation, a dropped bias, a missing Gemma norm shift, a wrong
hyper-parameter) changes the logits by O(1); what is left with a correct file is float32 rounding
in a different order, and ggml's documented approximations, which the reference reproduces:

- ggml's CPU GELU looks the input up in an fp16 table (GGML_GELU_FP16): the Gemma references use
  the same rounding (``Fp16TableGelu``).
- the KV cache is requested in F32 (it defaults to F16).

Measured max |diff| / max |logit| with the F32 files of these models: 1.2e-6 to 2.1e-6 for
Llama-2/3, Mistral, Qwen2/3 (RTOL_DEFAULT leaves 5x). Gemma 2: 4e-6, Gemma 3 (6 layers): 1.2e-4,
sporadic positions: an activation a rounding away from an fp16 boundary lands in the neighbouring
table entry (a 1e-3 jump of that activation); without the fp16-table emulation Gemma is at 3e-4.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import llama_cpp
import numpy as np
import pytest
import torch

import tiny_models
from hqq2gguf.convert import convert
from hqq2gguf.options import ConvertOptions, OutType

N_TOKENS = 24
# Relative tolerance: max |llama.cpp - transformers| <= RTOL * max |transformers logit|.
RTOL_DEFAULT = 1e-5
RTOL_GELU_TABLE = 5e-4  # architectures whose MLP uses ggml's fp16-table GELU
GELU_TABLE_ARCHS = ("gemma2", "gemma3")


class Fp16TableGelu(torch.nn.Module):
    """GELU (tanh form) as ggml's CPU backend computes it: fp16 input, fp16 table value, exact
    outside [-10, 10] (ggml-cpu/vec.h, ``ggml_vec_gelu_f32`` under GGML_GELU_FP16)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.to(torch.float16).to(torch.float32)
        y = torch.nn.functional.gelu(h, approximate="tanh").to(torch.float16).to(torch.float32)
        y = torch.where(x <= -10.0, torch.zeros_like(x), y)
        return torch.where(x >= 10.0, x, y)


def _token_ids(vocab_size: int) -> list[int]:
    """Fixed ids spread over the whole vocabulary (not only the first, byte-fallback tokens)."""
    return [(7 + 7919 * i) % vocab_size for i in range(N_TOKENS)]


def _hf_logits(model: torch.nn.Module, tokens: list[int], gelu_table: bool) -> np.ndarray:
    if gelu_table:
        for module in model.modules():
            if hasattr(module, "act_fn"):
                module.act_fn = Fp16TableGelu()
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].to(torch.float32).numpy()


def _llama_cpp_logits(gguf_path: Path, tokens: list[int]) -> np.ndarray:
    llm = llama_cpp.Llama(
        model_path=str(gguf_path), n_ctx=64, logits_all=True, verbose=False, n_threads=2,
        n_gpu_layers=0, type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32,
    )
    try:
        assert llm.n_vocab() > max(tokens)
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)], dtype=np.float32)
    finally:
        llm.close()


@pytest.mark.parametrize("name", list(tiny_models.TINY_MODELS))
def test_llama_cpp_logits_match_transformers(
    name: str, tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    model_dir = tiny_model_dir(name)
    gguf_path = convert(model_dir, ConvertOptions(outtype=OutType.F32, output=tmp_path / "m.gguf")).path
    hf_model = tiny_models.load_hf_model(model_dir)
    tokens = _token_ids(hf_model.config.vocab_size)

    gelu_table = name.startswith(GELU_TABLE_ARCHS)
    expected = _hf_logits(hf_model, tokens, gelu_table)
    actual = _llama_cpp_logits(gguf_path, tokens)

    assert actual.shape == expected.shape, f"logits shape {actual.shape} != transformers {expected.shape}"
    scale = float(np.abs(expected).max())
    assert scale > 1.0, f"degenerate tiny model: max |logit| {scale:.3g} (raise INIT_RANGE)"
    rtol = RTOL_GELU_TABLE if gelu_table else RTOL_DEFAULT
    err = np.abs(actual - expected)
    worst = np.unravel_index(int(err.argmax()), err.shape)
    assert err.max() <= rtol * scale, (
        f"{name}: max |llama.cpp - transformers| = {err.max():.3g} > {rtol:g} * max|logit| {scale:.3g} "
        f"(relative {err.max() / scale:.3g}); worst at position {worst[0]}, token id {worst[1]}: "
        f"{actual[worst]:.6g} vs {expected[worst]:.6g}; argmax agrees at "
        f"{int((actual.argmax(-1) == expected.argmax(-1)).sum())}/{len(tokens)} positions"
    )
