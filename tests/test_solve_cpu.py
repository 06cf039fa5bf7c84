"""The kernels compiled for the CPU as the default solver (hqq2gguf/cuda/solve_cpu.py): the torch solver's bytes
and sums, for every type with a kernel, every worker/part split, with importance; the file of --device cpu equal
to --device torch's; and the fallback to torch, said in one line, where the kernels cannot promise that."""

from __future__ import annotations

import logging
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

import hqq2gguf.cuda.device as device_module
import hqq2gguf.cuda.solve_cpu as solve_cpu
from hqq2gguf.cuda import resolve_device
from hqq2gguf.cuda.solve_cpu import cpu_kernel_types, encode_cpu
from hqq2gguf.errors import UnsupportedError
from hqq2gguf.optimize import SolverConfig, element_weights, encode
from hqq2gguf.optimize.config import WeightMode
from hqq2gguf.optimize.solver import block_objective
from hqq2gguf.optimize.weights import uniform_weights
from hqq2gguf.options import Device
from hqq2gguf.qtypes import QUANT_TYPES, spec

Q = gguf.GGMLQuantizationType


@pytest.fixture(scope="module")
def kernels(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The kernels built in a test directory; the tests skip (saying so) on a machine without a C++ compiler."""
    mp = pytest.MonkeyPatch()
    mp.setenv(solve_cpu.CACHE_ENV, str(tmp_path_factory.mktemp("cpu_kernels")))
    solve_cpu.cpu_kernels_unusable_reason.cache_clear()
    reason = solve_cpu.cpu_kernels_unusable_reason()
    if reason is not None:
        mp.undo()
        pytest.skip(f"the compiled CPU kernels were NOT run: {reason}")
    yield
    mp.undo()
    solve_cpu.cpu_kernels_unusable_reason.cache_clear()


def _rows(rows: int, ne0: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_t(4, (rows, ne0)) * np.exp(rng.normal(0, 0.5, (rows, 1))) * 0.02
    x[0, :40] = 0.0  # a zero block, and a constant one: the degenerate paths
    x[1, :256] = 0.0125
    return x.astype(np.float32)


@pytest.mark.parametrize("qtype", cpu_kernel_types(), ids=lambda t: t.name)
def test_encode_cpu_writes_the_torch_bytes_and_sums(qtype: Q, kernels: None) -> None:
    x = torch.from_numpy(_rows(12, 512, seed=int(qtype)))
    cfg = SolverConfig(llama_cpp_types=(), chunk_blocks=8, workers=3)  # several parts on several threads
    ours, ref = encode_cpu(x, qtype, config=cfg), encode(x, qtype, config=cfg)
    assert np.array_equal(ours.packed, ref.packed)
    for name in ("sq_error", "sq_norm", "objective", "baseline_objective"):
        assert getattr(ours, name) == pytest.approx(getattr(ref, name), rel=1e-12), name


@pytest.mark.parametrize("qtype", cpu_kernel_types(), ids=lambda t: t.name)
def test_kernels_solve_several_blocks_at_once_and_the_rest_one_by_one(qtype: Q, kernels: None) -> None:
    """The CPU build solves blocks in vector lanes (cuda/lanes.cuh) and a part's last few (fewer than a vector) one
    by one: parts of 35 (32-element types) or 15 blocks take both paths, with and without early stops and extra
    starts."""
    block = spec(qtype).block_size
    x = torch.from_numpy(_rows(5, 7 * block if block == 32 else 3 * block, seed=11))
    for cfg in (SolverConfig(llama_cpp_types=(), workers=1),
                SolverConfig(llama_cpp_types=(), workers=1, range_factors=(1.0, 0.9, 0.8),
                             super_range_factors=(1.0, 0.9), patience=2)):
        assert np.array_equal(encode_cpu(x, qtype, config=cfg).packed, encode(x, qtype, config=cfg).packed)


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q5_1, Q.IQ4_NL, Q.TQ2_0, Q.TQ1_0, Q.Q3_K, Q.Q5_K, Q.IQ4_XS],
                         ids=lambda t: t.name)
def test_encode_cpu_with_importance_and_extra_starts(qtype: Q, kernels: None) -> None:
    """Importance weights, several range factors (the repeated starts the kernel skips) and no early stop."""
    x = torch.from_numpy(_rows(6, 768, seed=7))
    imp = torch.from_numpy(np.random.default_rng(1).gamma(0.5, 2.0, 768).astype(np.float32))
    cfg = SolverConfig.preset("thorough", iterations=3, workers=2)
    assert np.array_equal(encode_cpu(x, qtype, importance=imp, config=cfg).packed,
                          encode(x, qtype, importance=imp, config=cfg).packed)


@pytest.mark.parametrize("block", [16, 32, 256])
@pytest.mark.parametrize("weighted", [False, True], ids=["ones", "weights"])
def test_recheck_keeps_what_the_numpy_recheck_keeps_on_near_ties(block: int, weighted: bool, kernels: None) -> None:
    """cuda/recheck.cu adds each block's float64 terms in numpy's pairwise order: on blocks whose two answers have
    the same residuals in other places (objectives equal up to the order of the additions) it keeps the same
    answer as block_objective, block for block, and its sums are the numpy ones."""
    rng = np.random.default_rng(block)
    n = 4000
    x = rng.standard_normal((n, block)).astype(np.float32)
    base = (x + 0.3 * rng.standard_normal((n, block))).astype(np.float32)
    ours = base.copy()
    i, j = 3, block - 2  # the residuals of elements i and j swapped
    ours[:, i], ours[:, j] = x[:, i] + (base[:, j] - x[:, j]), x[:, j] + (base[:, i] - x[:, i])
    ours[::5] += np.float32(0.01)  # and some blocks plainly different
    w = rng.random((n, block)) if weighted else None
    take, sums, bad = solve_cpu.recheck_blocks(x, w, ours, base)
    assert bad == 0
    ours_obj = block_objective(x.astype(np.float64), ours, w)
    base_obj = block_objective(x.astype(np.float64), base, w)
    want = ~(ours_obj <= base_obj)
    assert 0.1 < want.mean() < 0.9  # both answers are kept somewhere: the test decides something
    assert np.array_equal(take, want)
    kept = np.where(want[:, None], base, ours).astype(np.float64)
    assert sums == pytest.approx([np.where(want, base_obj, ours_obj).sum(), base_obj.sum(),
                                  ((x - kept) ** 2).sum(), (x.astype(np.float64) ** 2).sum()], rel=1e-12)
    ours[7, 0] = np.inf  # a block the kernel should never write: counted, and llama.cpp's is kept
    take, _, bad = solve_cpu.recheck_blocks(x, w, ours, base)
    assert bad == 1 and take[7]


def test_every_quantized_type_has_a_cpu_kernel_and_others_are_refused(kernels: None) -> None:
    """TQ1_0/TQ2_0 have no GPU kernel (256 values a thread) but a CPU one; float types are not the solver's."""
    assert set(cpu_kernel_types()) == set(QUANT_TYPES)
    with pytest.raises(UnsupportedError, match="F16"):
        encode_cpu(torch.zeros(1, 256), Q.F16)


def test_cpu_resolves_to_the_kernels_and_torch_stays_torch(kernels: None) -> None:
    assert resolve_device("cpu") is Device.CPU
    assert resolve_device("torch") is Device.TORCH


def test_without_a_compiler_cpu_is_torch_and_says_why(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("CXX", "no-such-compiler-hqq2gguf")
    monkeypatch.setenv(solve_cpu.CACHE_ENV, str(tmp_path))  # nothing cached there
    solve_cpu.cpu_kernels_unusable_reason.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger=device_module.__name__):
            assert resolve_device("cpu") is Device.TORCH
    finally:
        solve_cpu.cpu_kernels_unusable_reason.cache_clear()
    [record] = caplog.records
    assert "torch solver" in record.getMessage() and "no-such-compiler-hqq2gguf" in record.getMessage()


@pytest.mark.parametrize("recipe", ["Q4_K_M", "Q4_0", "IQ4_NL", "Q2_K", "TQ2_0", "TQ1_0"])
def test_cli_cpu_file_is_the_torch_file(recipe: str, kernels: None, tiny_model_dir, tmp_path: Path) -> None:
    """The user-visible promise: --device cpu (the default) writes the very file --device torch writes."""
    from click.testing import CliRunner

    from hqq2gguf.cli import main
    from test_quantize import SPEC

    model = tiny_model_dir(SPEC)
    paths = {d: tmp_path / f"{d}.gguf" for d in ("cpu", "torch")}
    for d, path in paths.items():
        res = CliRunner().invoke(main, ["convert", str(model), "-o", str(path), "--type", recipe,
                                        "--calibration", "none", "--device", d])
        assert res.exit_code == 0, res.output
    assert paths["cpu"].read_bytes() == paths["torch"].read_bytes()


@pytest.mark.parametrize("importance", [False, True])
@pytest.mark.parametrize("mode", list(WeightMode), ids=lambda m: m.value)
def test_uniform_weights_says_when_the_weights_are_ones(mode: WeightMode, importance: bool) -> None:
    """The host skips building and multiplying the weights exactly where element_weights gives ones."""
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 256)))
    imp = torch.rand(256, dtype=torch.float64) + 0.5 if importance else None
    for qtype in QUANT_TYPES:
        s = spec(qtype)
        ones = bool((element_weights(x, s, mode, imp) == 1).all())
        assert uniform_weights(s, mode, imp) == ones, (qtype.name, mode, importance)
