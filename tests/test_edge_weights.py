"""Unusual but valid weights: all-zero and constant tensors, rows that are not whole blocks, and the same
bytes for the same input, on tiny models shaped so that the K-quant and fallback paths really run."""

from __future__ import annotations

import dataclasses
import shutil
import warnings
from pathlib import Path

import gguf
import numpy as np
import pytest
import tiny_models
from bad_input_helpers import run_cli, tree_digest
from llama_quantize import QuantJob, run_quantize
from safetensors.torch import load_file, save_file

from hqq2gguf.optimize import SOLVER_TYPES, SolverConfig
from hqq2gguf.encode import solve_tensor
from hqq2gguf.recipes import Recipe

Q = gguf.GGMLQuantizationType
_LLAMA = tiny_models.TINY_MODELS["llama2"]


def _variant(name: str, **config: int) -> tiny_models.TinyModel:
    return dataclasses.replace(_LLAMA, name=name, config_kwargs={**_LLAMA.config_kwargs, **config})


# Rows of 256 and 512: every K-quant applies (the stock tiny models' 64-wide rows fall back to Q5_0/Q8_0).
K256 = _variant("llama_k256", hidden_size=256, intermediate_size=512, num_hidden_layers=1)
# Rows of 96 and 160: whole 32-blocks but not 256-blocks -> llama.cpp's fallback types (Q5_0, Q8_0 ...).
H96 = _variant("llama_h96", hidden_size=96, intermediate_size=160)
# Rows of 80: not even whole 32-blocks -> F16 (ffn_down's rows of 128 still take a 32-block type).
H80 = _variant("llama_h80", hidden_size=80, num_attention_heads=5, num_key_value_heads=1)


def _convert(model: Path, out: Path, *args: str) -> Path:
    out.mkdir(exist_ok=True)
    code, output = run_cli("convert", str(model), "-o", str(out / "m.gguf"), *args)
    assert code == 0, output
    return out / "m.gguf"


def _tensors(path: Path) -> dict[str, gguf.ReaderTensor]:
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


# --- all-zero and constant tensors ----------------------------------------------------------------------

SPECIAL = {  # HF tensor -> (GGUF tensor, value: every element equals it)
    "model.layers.0.mlp.gate_proj.weight": ("blk.0.ffn_gate.weight", 0.0),
    "model.layers.0.self_attn.q_proj.weight": ("blk.0.attn_q.weight", 0.37),
    "model.layers.0.mlp.down_proj.weight": ("blk.0.ffn_down.weight", -1.5),
}
ZERO_TENSOR_TYPE = {"f16": Q.F16, "Q4_K_M": Q.Q4_K, "Q2_K": Q.Q2_K, "IQ4_NL": Q.IQ4_NL}


@pytest.fixture(scope="module")
def flat_model(tiny_model_dir, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """K256 with one zero, two constant tensors, and an embedding that is zero but for one row."""
    model = tmp_path_factory.mktemp("flat") / "model"
    shutil.copytree(tiny_model_dir(K256), model)
    tensors = load_file(model / "model.safetensors")
    for name, (_, value) in SPECIAL.items():
        tensors[name].fill_(value)
    tensors["model.embed_tokens.weight"].zero_()
    tensors["model.embed_tokens.weight"][3] = 2.0
    save_file(tensors, model / "model.safetensors")
    return model


@pytest.mark.parametrize("kind", list(ZERO_TENSOR_TYPE))
def test_zero_and_constant_tensors(flat_model: Path, tmp_path: Path, kind: str) -> None:
    """No division by zero, no NaN: zero decodes to exactly 0, constants to themselves (1e-3 relative)."""
    args = ("--outtype", "f16") if kind == "f16" else ("--type", kind)
    with warnings.catch_warnings(), np.errstate(divide="raise", invalid="raise", over="raise"):
        warnings.simplefilter("error")
        path = _convert(flat_model, tmp_path / "out", *args)
    tensors = _tensors(path)
    assert tensors["blk.0.ffn_gate.weight"].tensor_type == ZERO_TENSOR_TYPE[kind]
    for t in tensors.values():
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        assert np.isfinite(values).all(), t.name
    for gguf_name, value in SPECIAL.values():
        t = tensors[gguf_name]
        np.testing.assert_allclose(gguf.quants.dequantize(t.data, t.tensor_type), value, rtol=1e-3, atol=0,
                                   err_msg=f"{gguf_name} as {Q(t.tensor_type).name}")
    embd = gguf.quants.dequantize(tensors["token_embd.weight"].data, tensors["token_embd.weight"].tensor_type)
    assert not embd[np.arange(len(embd)) != 3].any()
    np.testing.assert_allclose(embd[3], 2.0, rtol=1e-3)


@pytest.mark.parametrize("qtype", sorted(SOLVER_TYPES, key=lambda q: q.name), ids=lambda q: q.name)
@pytest.mark.parametrize("value", [0.0, 0.37, -2.5, 1e-30], ids=["zero", "positive", "negative", "subnormal"])
def test_every_solver_type_encodes_constant_blocks(qtype: gguf.GGMLQuantizationType, value: float) -> None:
    rows = np.full((4, 256), value, dtype=np.float32)
    with warnings.catch_warnings(), np.errstate(divide="raise", invalid="raise", over="raise"):
        warnings.simplefilter("error")
        packed = solve_tensor("constant", rows, qtype, SolverConfig())
    decoded = gguf.quants.dequantize(packed, qtype)
    assert np.isfinite(decoded).all()
    # fp16 block scales: a value below their range decodes to 0
    np.testing.assert_allclose(decoded, value if abs(value) > 1e-7 else 0.0, rtol=2e-3, atol=0)


# --- rows that are not whole blocks ---------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "expected"), [
    (H96, {"blk.0.attn_q.weight": Q.Q5_0, "blk.1.attn_v.weight": Q.Q8_0, "blk.1.ffn_down.weight": Q.Q8_0,
           "token_embd.weight": Q.Q5_0, "output.weight": Q.Q8_0}),  # Q4_K -> Q5_0, Q6_K -> Q8_0
    (H80, {"blk.0.attn_q.weight": Q.F16, "blk.0.ffn_gate.weight": Q.F16, "blk.0.ffn_down.weight": Q.Q5_0,
           "blk.1.ffn_down.weight": Q.Q8_0, "output.weight": Q.F16}),  # no 32-block type fits 80: F16
], ids=["rows-96", "rows-80"])
def test_rows_not_whole_blocks_fall_back_as_llama_cpp(tiny_model_dir, tmp_path: Path, spec, expected) -> None:
    """--type Q4_K_M on rows that are not whole 256-blocks: llama-quantize's fallback types, and the file
    runs in llama.cpp."""
    from hqq2gguf.runtime import eval_logits, load_model

    model = tiny_model_dir(spec)
    path = _convert(model, tmp_path / "q", "--type", "Q4_K_M")
    ours = {name: Q(t.tensor_type) for name, t in _tensors(path).items()}
    assert {name: ours[name] for name in expected} == expected
    f16 = _convert(model, tmp_path / "f16", "--outtype", "f16")
    (oracle,) = run_quantize([QuantJob(str(f16), int(Recipe.Q4_K_M.file_type), dry_run=True)], workers=1)
    assert oracle.ok, oracle.log_tail
    assert ours == oracle.types
    logits = eval_logits(load_model(path), [1, 17, 42, 99, 5])
    assert logits.shape == (5, 600) and np.isfinite(logits).all()


# --- same input, same bytes -----------------------------------------------------------------------------

@pytest.mark.parametrize("recipe", ["Q4_K_M", "IQ4_NL"])
def test_quantized_output_is_deterministic(tiny_model_dir, tmp_path: Path, recipe: str) -> None:
    model = tiny_model_dir(K256)
    before = tree_digest(model)
    first = _convert(model, tmp_path / "a", "--type", recipe).read_bytes()
    second = _convert(model, tmp_path / "b", "--type", recipe).read_bytes()
    assert first == second
    assert tree_digest(model) == before
    assert {Q(t.tensor_type) for t in gguf.GGUFReader(tmp_path / "a" / "m.gguf").tensors} >= {Q.Q6_K} | (
        {Q.Q4_K} if recipe == "Q4_K_M" else {Q.IQ4_NL})
