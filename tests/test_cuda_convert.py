"""End to end on the CPU: whole tiny models converted with ``--device cuda`` semantics, the kernels emulated.

The emulated kernels (hqq2gguf/cuda/emulate.py: the same cuda/*.cu, compiled for the CPU, flushing denormals as
the GPU build does) stand in for the GPU: ``resolve_device`` is made to answer CUDA and the CUDA path's
``default_launcher`` to return the emulation, so ``convert(..., device=CUDA)`` runs the pipeline's real CUDA
branch. Its GGUF must equal the torch path's byte for byte, for several recipes; with blocks the float64
re-check must reject (the "kernel" zeroes some on purpose) every rejected block becomes llama.cpp's.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import gguf
import numpy as np
import pytest

import hqq2gguf.cuda
from hqq2gguf.convert import convert
from hqq2gguf.options import ConvertOptions, Device
from hqq2gguf.recipes import Recipe
from test_cuda_host import Sabotage
from test_quantize import SPEC

solve_cuda_module = importlib.import_module("hqq2gguf.cuda.solve_cuda")
RECIPES = ["Q4_K_M", "Q3_K_M", "Q2_K", "IQ4_NL", "Q4_0", "Q5_1"]


@pytest.fixture
def emulated_cuda(monkeypatch: pytest.MonkeyPatch, host_launcher) -> dict[str, object]:
    """``--device cuda`` resolves to CUDA and its kernels run emulated; counts encode_cuda's calls and which types
    it encoded. ``state["launcher"]`` may be replaced (e.g. by a Sabotage)."""
    state: dict[str, object] = {"launcher": host_launcher, "encode_cuda_types": []}
    real_encode = solve_cuda_module.encode_cuda

    def encode_cuda(x, qtype, **kwargs):
        state["encode_cuda_types"].append(qtype)
        return real_encode(x, qtype, **kwargs)

    monkeypatch.setattr(solve_cuda_module, "default_launcher", lambda x: state["launcher"])
    monkeypatch.setattr(hqq2gguf.cuda, "resolve_device", lambda requested, device_index=0: Device.CUDA)
    monkeypatch.setattr(hqq2gguf.cuda, "encode_cuda", encode_cuda)
    return state


@pytest.fixture(scope="module")
def torch_ggufs(tiny_model_dir, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The torch path's conversion of the K-quant-shaped tiny model, per recipe (made once)."""
    out = tmp_path_factory.mktemp("torch_path")
    model = tiny_model_dir(SPEC)
    return {r: convert(model, ConvertOptions(recipe=Recipe(r), output=out / f"{r}.gguf")).path for r in RECIPES}


def _blocks(path: Path) -> dict[str, tuple[gguf.GGMLQuantizationType, np.ndarray]]:
    """Every tensor of a GGUF: (type, its bytes as (n_blocks, type_size))."""
    out = {}
    for t in gguf.GGUFReader(path).tensors:
        qtype = gguf.GGMLQuantizationType(t.tensor_type)
        size = gguf.GGML_QUANT_SIZES[qtype][1]
        out[t.name] = (qtype, np.asarray(t.data).view(np.uint8).reshape(-1, size))
    return out


@pytest.mark.parametrize("recipe", RECIPES)
def test_emulated_cuda_conversion_equals_the_torch_path(recipe: str, tiny_model_dir, torch_ggufs, emulated_cuda,
                                                        tmp_path: Path) -> None:
    model = tiny_model_dir(SPEC)
    got = convert(model, ConvertOptions(recipe=Recipe(recipe), device=Device.CUDA, output=tmp_path / "cuda.gguf"))
    assert got.path.read_bytes() == torch_ggufs[recipe].read_bytes()
    assert any(q in hqq2gguf.cuda.CUDA_TYPES for q, _ in _blocks(got.path).values())  # the kernels had work


@pytest.mark.parametrize("recipe", ["Q4_K_M", "IQ4_NL"])
def test_emulated_cuda_conversion_with_rejected_blocks(recipe: str, tiny_model_dir, torch_ggufs, emulated_cuda,
                                                       monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The "kernel" zeroes every 7th block; the re-check must put llama.cpp's block there (checked in every
    part as it finishes), and the file differs from the torch path's in those blocks at most."""
    emulated_cuda["launcher"] = sabotage = Sabotage(emulated_cuda["launcher"], every=7)
    rejected = []
    real_finish = solve_cuda_module.finish

    def finish(prep, out):
        hit = np.arange(len(out)) % 7 == 1
        packed, solution = real_finish(prep, out)
        assert np.array_equal(packed.reshape(len(out), -1)[hit], prep.base_bytes[hit])
        rejected.append(int(hit.sum()))
        return packed, solution

    monkeypatch.setattr(solve_cuda_module, "finish", finish)
    got = convert(tiny_model_dir(SPEC), ConvertOptions(recipe=Recipe(recipe), device=Device.CUDA,
                                                       output=tmp_path / "cuda.gguf")).path
    assert sum(rejected) == int(sabotage.hit.sum()) > 0
    ours, ref = _blocks(got), _blocks(torch_ggufs[recipe])
    assert ours.keys() == ref.keys()
    differing = 0
    for name, (qtype, blocks) in ours.items():
        assert qtype == ref[name][0]
        differing += int((blocks != ref[name][1]).any(axis=1).sum())
        if qtype not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            assert np.isfinite(gguf.quants.dequantize(blocks, qtype)).all(), name
    assert 0 < differing <= sum(rejected)


def test_pipeline_calls_encode_cuda(tiny_model_dir, emulated_cuda, tmp_path: Path) -> None:
    """The pipeline's encode dispatcher sends every block type with a kernel to hqq2gguf.cuda.encode_cuda."""
    got = convert(tiny_model_dir(SPEC), ConvertOptions(recipe=Recipe.Q4_K_M, device=Device.CUDA,
                                                       output=tmp_path / "cuda.gguf")).path
    kernel_types = {q for q, _ in _blocks(got).values() if q in hqq2gguf.cuda.CUDA_TYPES}
    assert set(emulated_cuda["encode_cuda_types"]) == kernel_types, (
        "the pipeline did not call hqq2gguf.cuda.encode_cuda for the CUDA types "
        f"(called for {sorted(t.name for t in set(emulated_cuda['encode_cuda_types']))})")
