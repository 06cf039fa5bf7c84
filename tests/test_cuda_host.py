"""The CUDA path's host side on the CPU emulation: encode_cuda's contract, row parts, the float64 re-check,
denormals (the GPU's -ftz=true), p = 1, and the launch geometry the sources declare.

Every test runs the kernels' own source compiled for the CPU (hqq2gguf/cuda/emulate.py), so it needs a C++
compiler, not a GPU.
"""

from __future__ import annotations

import importlib
import logging
import re
import shutil
import subprocess
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from hqq2gguf import ggml_ref
from hqq2gguf.cuda import encode_cuda, loader, solve_cuda
from hqq2gguf.cuda.host import BlockInputs, prepare
from hqq2gguf.cuda.launch import THREADS_PER_CTA
from hqq2gguf.optimize import Encoded, SolverConfig, encode, solve
from hqq2gguf.optimize.solver import solver_spec

Q = gguf.GGMLQuantizationType
solve_cuda_module = importlib.import_module("hqq2gguf.cuda.solve_cuda")  # the package's solve_cuda is the function
CUDA_DIR = Path(__file__).resolve().parents[1] / "cuda"
TYPES = [Q.Q4_0, Q.Q5_1, Q.IQ4_NL, Q.Q2_K, Q.Q4_K, Q.Q6_K]


def _weights(rows: int, ne0: int, seed: int = 0) -> np.ndarray:
    """Realistic-looking weights: Student-t rows with per-row scales (heavier tails than a normal)."""
    rng = np.random.default_rng(seed)
    scale = np.exp(rng.normal(0, 0.3, (rows, 1))) * 0.02
    return (rng.standard_t(5, (rows, ne0)) * scale).astype(np.float32)


class Sabotage:
    """A launcher that runs the real one, then overwrites chosen blocks: with zero bytes (decodes to zeros, worse
    than llama.cpp's block on these rows) or with an fp16 +inf scale (a kernel bug the host must survive)."""

    def __init__(self, inner, every: int, *, non_finite: bool = False) -> None:
        self.inner, self.every, self.non_finite = inner, every, non_finite
        self.hit = np.zeros(0, bool)

    def run(self, inputs: BlockInputs) -> tuple[np.ndarray, np.ndarray]:
        out, obj = self.inner.run(inputs)
        hit = np.arange(len(out)) % self.every == 1
        if self.non_finite:
            out[hit, 0:2] = np.frombuffer(np.float16(np.inf).tobytes(), np.uint8)  # d is the first fp16 field
        else:
            out[hit] = 0
        self.hit = np.concatenate([self.hit, hit])
        return out, obj


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_encode_cuda_has_the_contract_of_encode(qtype: Q, host_launcher) -> None:
    """Same Encoded as optimize.encode: bytes (rows, row_bytes) and the four sums, over several row parts."""
    x = torch.from_numpy(_weights(12, 512, seed=1))
    cfg = SolverConfig(workers=1, chunk_blocks=40)  # several parts, cut the same way on both paths
    got = encode_cuda(x, qtype, config=cfg, launcher=host_launcher)
    ref = encode(x, qtype, config=cfg)
    assert isinstance(got, Encoded) and got.packed.dtype == np.uint8 and got.packed.shape == ref.packed.shape
    assert np.array_equal(got.packed, ref.packed)
    assert (got.sq_error, got.sq_norm, got.objective, got.baseline_objective) == \
        (ref.sq_error, ref.sq_norm, ref.objective, ref.baseline_objective)


def test_encode_cuda_with_importance(host_launcher) -> None:
    x = torch.from_numpy(_weights(6, 512, seed=2))
    imp = torch.from_numpy(np.exp(np.random.default_rng(3).normal(0, 1, 512)).astype(np.float32))
    cfg = SolverConfig(workers=1)
    got = encode_cuda(x, Q.Q4_K, importance=imp, config=cfg, launcher=host_launcher)
    assert np.array_equal(got.packed, encode(x, Q.Q4_K, importance=imp, config=cfg).packed)


@pytest.mark.parametrize("chunk_blocks, max_rows", [(0, 64), (48, 3), (1, 1)])
def test_host_memory_is_bounded_by_the_row_part(chunk_blocks: int, max_rows: int, host_launcher,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """prepare (and so launch and finish) never sees more rows than a part holds: chunk_blocks when given, else
    PART_ELEMENTS' worth (made small here); the bytes do not depend on the parts."""
    seen: list[int] = []
    real = solve_cuda_module.prepare

    def spy(spec, x32, *args, **kwargs):
        seen.append(x32.shape[0])
        return real(spec, x32, *args, **kwargs)

    monkeypatch.setattr(solve_cuda_module, "prepare", spy)
    monkeypatch.setattr(solve_cuda_module, "PART_ELEMENTS", 64 * 512)
    x = torch.from_numpy(_weights(200, 512, seed=4))
    cfg = SolverConfig(workers=1, chunk_blocks=chunk_blocks)
    got = encode_cuda(x, Q.Q4_0, config=cfg, launcher=host_launcher)
    assert sum(seen) == 200 and max(seen) <= max_rows and len(seen) == -(-200 // max_rows)
    assert np.array_equal(got.packed, encode(x, Q.Q4_0, config=SolverConfig(workers=1)).packed)


@pytest.mark.parametrize("qtype", [Q.IQ4_NL, Q.Q4_0, Q.Q4_K], ids=lambda t: t.name)
def test_recheck_keeps_llama_cpp_blocks_it_rejects(qtype: Q, host_launcher) -> None:
    """Blocks the float64 re-check rejects, several per row (the broadcast that crashed finish()): each one is
    llama.cpp's block, every other block the torch path's."""
    x = _weights(8, 1024, seed=5)
    cfg = SolverConfig(workers=1, chunk_blocks=64)
    sabotage = Sabotage(host_launcher, every=2)
    got = solve_cuda(torch.from_numpy(x), qtype, config=cfg, launcher=sabotage)
    n = x.size // gguf.GGML_QUANT_SIZES[qtype][0]
    assert sabotage.hit.size == n and (sabotage.hit.reshape(8, -1).sum(1) >= 2).all()  # several in every row
    blocks = got.reshape(n, -1)
    base = ggml_ref.ggml_quantize(qtype, x).reshape(n, -1)
    ref = solve(torch.from_numpy(x), qtype, config=cfg).packed().reshape(n, -1)
    assert np.array_equal(blocks[sabotage.hit], base[sabotage.hit])
    assert np.array_equal(blocks[~sabotage.hit], ref[~sabotage.hit])
    enc = encode_cuda(torch.from_numpy(x), qtype, config=cfg, launcher=Sabotage(host_launcher, every=2))
    assert np.array_equal(enc.packed, got) and enc.objective <= enc.baseline_objective


def test_non_finite_kernel_blocks_are_logged_and_replaced(host_launcher, caplog: pytest.LogCaptureFixture) -> None:
    x = _weights(4, 512, seed=6)
    sabotage = Sabotage(host_launcher, every=5, non_finite=True)
    with caplog.at_level(logging.WARNING, logger="hqq2gguf.cuda.host"):
        got = solve_cuda(torch.from_numpy(x), Q.Q5_1, config=SolverConfig(workers=1), launcher=sabotage)
    assert f"wrote {int(sabotage.hit.sum())} block(s) with non-finite scales" in caplog.text
    base = ggml_ref.ggml_quantize(Q.Q5_1, x).reshape(len(sabotage.hit), -1)
    assert np.array_equal(got.reshape(len(sabotage.hit), -1)[sabotage.hit], base[sabotage.hit])
    assert np.isfinite(gguf.quants.dequantize(got, Q.Q5_1)).all()


def test_emulation_flushes_denormals_as_the_gpu_build(host_launcher, tmp_path: Path) -> None:
    """CuPy compiles with -ftz=true; the emulation sets FTZ|DAZ by default. Elements of 3e-20 square to float32
    denormals: flushed, the kernel's float32 objective of such a block is 0; with IEEE denormals it is not."""
    from hqq2gguf.cuda.emulate import HostLauncher

    spec = solver_spec(Q.Q8_0)
    x32 = np.full((1, 64), 3e-20, np.float32)
    inputs = prepare(spec, x32, None, SolverConfig(workers=1)).inputs
    _, obj_ftz = host_launcher.run(inputs)
    _, obj_ieee = HostLauncher(tmp_path, ftz=False).run(inputs)
    assert (obj_ftz == 0).all() and (obj_ieee > 0).all()


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_p1_is_an_exact_reciprocal_as_in_torch(qtype: Q, host_launcher) -> None:
    """p = 1 (soft threshold): torch's pow(-1) is a reciprocal; the kernels special-case it, bytes identical."""
    cfg = SolverConfig(p=1.0, beta0=4.0, kappa=1.2, iterations=6, patience=0, workers=1)
    x = torch.from_numpy(_weights(4, 512, seed=7))
    assert np.array_equal(solve_cuda(x, qtype, config=cfg, launcher=host_launcher), solve(x, qtype, config=cfg).packed())


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH: ptxas's resource usage NOT checked")
@pytest.mark.parametrize("family", ["block_scale", "kquant"])
def test_gpu_build_flushes_denormals_and_fits_its_launch_bounds(family: str, tmp_path: Path) -> None:
    """What NVRTC gets through CuPy (our options + CuPy's -ftz=true): .ftz arithmetic in the PTX (why the
    emulation flushes), and every entry within its register budget with at most a few dozen bytes of spills
    (the numbers cuda/README.md states)."""
    src = tmp_path / f"{family}.cu"
    src.write_text(loader.source_text(family))
    options = [*loader.nvrtc_options(), "-ftz=true", "-arch=sm_90"]
    ptx = subprocess.run(["nvcc", *options, "--ptx", str(src), "-o", "-"], capture_output=True, text=True)
    assert ptx.returncode == 0, ptx.stderr
    assert re.search(r"\.ftz\.f32", ptx.stdout)
    done = subprocess.run(["nvcc", *options, "-Xptxas", "-v", "-c", str(src), "-o", str(tmp_path / "k.o")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    usage = re.findall(r"entry function '(\w+)'.*?(\d+) bytes spill stores.*?Used (\d+) registers", done.stderr,
                       re.DOTALL)
    assert {name for name, _, _ in usage} == {k.entry for k in loader.KERNELS.values() if k.family == family}
    for name, spill, registers in usage:
        assert int(registers) <= 255 and int(spill) <= 64, f"{name}: {registers} registers, {spill} B spilled"


def test_launch_geometry_matches_the_sources() -> None:
    """The host launches THREADS_PER_CTA threads, the number the kernels' __launch_bounds__ are compiled for."""
    text = (CUDA_DIR / "common.cuh").read_text()
    assert int(re.search(r"^#define HQQ_THREADS_PER_CTA (\d+)$", text, re.MULTILINE).group(1)) == THREADS_PER_CTA
    assert "__launch_bounds__(HQQ_THREADS_PER_CTA, HQQ_MIN_CTAS_PER_SM)" in text
