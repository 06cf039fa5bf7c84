"""--type RECIPE end to end: llama.cpp's per-tensor types and sizes, HQQ blocks, a file llama.cpp runs."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import transformers
from click.testing import CliRunner

import tiny_models
from hqq2gguf.cli import main
from llama_quantize import QuantJob, run_quantize

# hidden 256: true K-quant shapes; GQA 4; 2 layers keep the solver's CPU time small.
SPEC = tiny_models.TinyModel(
    "llama-h256-l2", transformers.LlamaConfig,
    dict(max_position_embeddings=256, initializer_range=0.05, rms_norm_eps=1e-5, rope_theta=10000.0,
         hidden_size=256, intermediate_size=256, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2),
    tokenizer="llama-spm", dtype="f16")
RECIPES = ["Q4_K_M", "Q3_K_S"]


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir) -> Path:
    return tiny_model_dir(SPEC)


@pytest.fixture(scope="module")
def f16_gguf(model_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("f16") / "model-f16.gguf"
    result = CliRunner().invoke(main, ["convert", str(model_dir), "-o", str(out), "--outtype", "f16"])
    assert result.exit_code == 0, result.output
    return out


def _tensors(path: Path) -> dict[str, gguf.ReaderTensor]:
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def _decoded(t: gguf.ReaderTensor) -> np.ndarray:
    return gguf.quants.dequantize(np.asarray(t.data), gguf.GGMLQuantizationType(t.tensor_type)).reshape(-1)


@pytest.fixture(scope="module")
def quantized(model_dir: Path, f16_gguf: Path, tmp_path_factory):
    """``quantized(recipe)`` -> (ours, llama.cpp's) files for the tiny model, each made once."""
    made: dict[str, tuple[Path, Path]] = {}

    def get(recipe: str) -> tuple[Path, Path]:
        if recipe not in made:
            tmp = tmp_path_factory.mktemp(recipe)
            ours, theirs = tmp / "ours.gguf", tmp / "llama.gguf"
            result = CliRunner().invoke(main, ["convert", str(model_dir), "-o", str(ours), "--type", recipe])
            assert result.exit_code == 0, result.output
            [job] = run_quantize([QuantJob(src=str(f16_gguf), ftype=int(gguf.LlamaFileType[f"MOSTLY_{recipe}"]),
                                           keep_as=str(theirs))])
            assert job.ok, job.log_tail
            made[recipe] = ours, theirs
        return made[recipe]

    return get


@pytest.mark.parametrize("recipe", RECIPES)
def test_same_types_and_bytes_as_llama_cpp_and_lower_error(quantized, f16_gguf: Path, recipe: str) -> None:
    ours_path, theirs_path = quantized(recipe)
    ours, theirs, ref = _tensors(ours_path), _tensors(theirs_path), _tensors(f16_gguf)
    assert {n: t.tensor_type for n, t in ours.items()} == {n: t.tensor_type for n, t in theirs.items()}
    assert {n: int(t.n_bytes) for n, t in ours.items()} == {n: int(t.n_bytes) for n, t in theirs.items()}
    assert gguf.GGUFReader(ours_path).get_field("general.file_type").contents() == \
        int(gguf.LlamaFileType[f"MOSTLY_{recipe}"])
    err_ours = err_theirs = 0.0
    for name, t in ours.items():
        if t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            continue
        x = _decoded(ref[name])
        err_ours += float(((x - _decoded(t)) ** 2).sum())
        err_theirs += float(((x - _decoded(theirs[name])) ** 2).sum())
    assert err_ours < err_theirs, (err_ours, err_theirs)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64) - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_quantized_file_runs_in_llama_cpp(quantized, f16_gguf: Path) -> None:
    """Runs in llama.cpp and is about as close to F16 as llama.cpp's own Q4_K_M (a random tiny model says
    nothing about the quality claim: that is measured on real models by benchmarks/quality.py)."""
    from hqq2gguf.runtime import eval_logits, load_model

    ours, theirs = quantized("Q4_K_M")
    tokens = [1, *np.random.default_rng(0).integers(3, 500, 60).tolist()]
    ref = _log_softmax(eval_logits(load_model(f16_gguf, n_ctx=128), tokens))
    kld = {}
    for name, path in (("ours", ours), ("llama.cpp", theirs)):
        got = eval_logits(load_model(path, n_ctx=128), tokens)
        assert np.isfinite(got).all()
        q = _log_softmax(got)
        kld[name] = float((np.exp(ref) * (ref - q)).sum(-1).mean())
    assert kld["ours"] <= 1.25 * kld["llama.cpp"], kld


def test_per_tensor_options_need_a_recipe(model_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["convert", str(model_dir), "-o", str(tmp_path / "x.gguf"), "--pure"])
    assert result.exit_code == 1 and "need --type" in result.output
    assert not (tmp_path / "x.gguf").exists()
