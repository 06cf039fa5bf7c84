"""The fused CUDA kernels (cuda/*.cu, hqq2gguf/cuda/): compile, device choice, equivalence with the torch solver.

Three layers, so that a machine without a GPU still checks everything it can:

* compile: every cuda/*.cu with nvcc (skipped without nvcc), and the exact entry points NVRTC will look up;
* CPU emulation: the same kernel source compiled by the host C++ compiler runs the whole solve_cuda pipeline
  and must write the torch reference's bytes (hqq2gguf/cuda/emulate.py);
* GPU (``@pytest.mark.gpu``, skipped without a CUDA device): the kernels through NVRTC/CuPy against the torch
  reference. Set HQQ2GGUF_REQUIRE_CUDA=1 to turn those skips into failures (a GPU CI).
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from hqq2gguf.cuda import Device, loader, resolve_device, solve_cuda
from hqq2gguf.cuda.sum_order import ordered_sum, torch_sum_lanes
from hqq2gguf.errors import DeviceError, OptionError, UnsupportedError
from hqq2gguf.optimize import Preset, SolverConfig, WeightMode, solve

Q = gguf.GGMLQuantizationType
CUDA_DIR = Path(__file__).resolve().parents[1] / "cuda"
ALL_SOURCES = sorted(CUDA_DIR.glob("*.cu"))
# the kernel families; cuda/recheck.cu and the like are CPU-side host code (loader.HOST_SOURCES), which nvcc only
# has to compile (test_nvcc_compiles)
SOURCES = [p for p in ALL_SOURCES if p.stem not in loader.HOST_SOURCES]
CUDA_TYPES = tuple(loader.KERNELS)
REQUIRE_CUDA = os.environ.get("HQQ2GGUF_REQUIRE_CUDA") == "1"
NE0 = 512
launch_module = importlib.import_module("hqq2gguf.cuda.launch")


# ---------------------------------------------------------------- inputs

def _rows(kind: str, seed: int = 0) -> np.ndarray:
    """(rows, NE0) float32: random rows, or hostile ones (zeros, constants, outliers, one non-zero per block)."""
    rng = np.random.default_rng(seed)
    if kind == "normal":
        return (rng.standard_normal((4, NE0)) * 0.02).astype(np.float32)
    if kind == "student_t":
        return (rng.standard_t(3, (4, NE0)) * 0.01).astype(np.float32)
    if kind == "hostile":
        outliers = rng.standard_normal(NE0) * 0.01
        outliers[::97] = 5.0
        one_per_32 = np.zeros(NE0)
        one_per_32[::32] = rng.standard_normal(NE0 // 32)
        one_per_256 = np.zeros(NE0)
        one_per_256[5::256] = 3.0
        rows = [np.zeros(NE0), np.full(NE0, 0.37), np.full(NE0, -1e-3), outliers, one_per_32, one_per_256,
                rng.standard_normal(NE0) * 1e-8,  # scales below fp16's smallest subnormal
                rng.standard_normal(NE0) * 4e3, np.where(rng.random(NE0) < 0.5, 1.0, -1.0) * 0.02]
        return np.stack(rows).astype(np.float32)
    raise ValueError(kind)


CONFIGS = {
    "default": (SolverConfig(workers=1), None),
    "thorough": (SolverConfig.preset(Preset.THOROUGH, workers=1), None),
    "importance": (SolverConfig(weights=WeightMode.IMPORTANCE, workers=1),
                   np.exp(np.random.default_rng(7).normal(0, 1, NE0)).astype(np.float32)),
}
# Strong lp shrinkage: every iteration goes through powf, where the CUDA/C library and torch's Sleef may differ
# in the last bit; the documented bound (cuda/README.md) applies instead of byte identity.
SHRINK = SolverConfig(p=0.5, beta0=20.0, kappa=1.3, iterations=8, patience=0, range_factors=(1.0, 0.9),
                      super_range_factors=(1.0, 0.85), workers=1)


def _check_equivalent(qtype: Q, x: np.ndarray, imp: np.ndarray | None, cfg: SolverConfig, packed: np.ndarray,
                      *, exact: bool) -> None:
    """``packed`` against the torch reference: the same bytes (exact), else the documented bound: >= 99% of
    the blocks identical, every block decodes (gguf-py) to finite values and is never worse than llama.cpp's,
    and the total objective is within 1% of the reference's."""
    ref = solve(torch.from_numpy(x), qtype, importance=None if imp is None else torch.from_numpy(imp), config=cfg)
    expected = ref.packed()
    assert packed.shape == expected.shape and packed.dtype == np.uint8
    n_blocks = x.size // gguf.GGML_QUANT_SIZES[qtype][0]
    same = (packed.reshape(n_blocks, -1) == expected.reshape(n_blocks, -1)).all(axis=1)
    if exact:
        bad = np.nonzero(~same)[0]
        assert bad.size == 0, f"{qtype.name}: {bad.size} of {n_blocks} blocks differ, first {bad[:8]}"
        return
    values = gguf.quants.dequantize(packed, qtype).reshape(x.shape)
    assert np.isfinite(values).all()
    w = ref.weights
    e = x.astype(np.float64) - values.astype(np.float64)
    obj = (w * e * e).reshape(-1, gguf.GGML_QUANT_SIZES[qtype][0]).sum(1)
    assert (obj <= ref.baseline_objective).all(), f"{qtype.name}: a block is worse than llama.cpp's"
    total, ref_total = obj.sum(), ref.objective.sum()
    assert total <= 1.01 * ref_total + 1e-30, f"{qtype.name}: objective {total} vs the reference's {ref_total}"
    assert same.mean() >= 0.99, f"{qtype.name}: only {same.mean():.3f} of the blocks identical"


# ---------------------------------------------------------------- (a) every source compiles, entry points exist

# An entry point's definition: HQQ_DEFINE_ENTRY (common.cuh) or block_scale.cu's HQQ_BLOCK_ENTRY (one block per
# thread on the GPU, several blocks per step on the CPU).
ENTRY_LINE = r"^HQQ_(?:DEFINE|BLOCK)_ENTRY\((\w+),"


def _expected_entries(source: Path) -> set[str]:
    if source.stem in loader.HOST_SOURCES:  # host code: one entry point, named after the file
        return {f"hqq_{source.stem}"}
    return {k.entry for k in loader.KERNELS.values() if k.family == source.stem}


def test_sources_cover_the_types_and_state_their_compile_line() -> None:
    assert {k.family for k in loader.KERNELS.values()} == {p.stem for p in SOURCES}
    assert set(loader.HOST_SOURCES) <= {p.stem for p in ALL_SOURCES}
    assert set(CUDA_TYPES) >= {Q[n] for n in ("Q4_K", "Q5_K", "Q6_K", "Q3_K", "Q2_K", "Q4_0", "Q5_0", "Q8_0",
                                              "IQ4_XS", "IQ4_NL")}
    for source in SOURCES:
        header = source.read_text().split("#include", 1)[0]
        assert "nvcc -std=c++17" in header and "NVRTC" in header, f"{source.name}: header lacks the compile line"


def test_kernels_follow_the_one_type_table() -> None:
    """loader.KERNELS is derived from hqq2gguf.qtypes: every quantized type but the ternary ones, the family of
    its kind; and the sources define exactly these entry points (no kernel the loader would never find)."""
    from hqq2gguf.qtypes import QTYPES, QUANT_TYPES, Kind

    assert set(loader.WITHOUT_KERNEL) == {Q.TQ1_0, Q.TQ2_0}
    assert set(CUDA_TYPES) == set(QUANT_TYPES) - set(loader.WITHOUT_KERNEL)
    for qtype, k in loader.KERNELS.items():
        assert k.family == {Kind.BLOCK: "block_scale", Kind.SUPER: "kquant"}[QTYPES[qtype].kind]
        assert k.entry == f"hqq_{qtype.name.lower()}"
    defined = {m for src in SOURCES for m in re.findall(ENTRY_LINE, src.read_text(), re.MULTILINE)}
    assert defined == {k.entry for k in loader.HOST_KERNELS.values()}  # the GPU's, and the CPU build's TQ*
    assert set(loader.HOST_KERNELS) == set(QUANT_TYPES) and loader.KERNELS.items() <= loader.HOST_KERNELS.items()


def test_submodules_import_each_other_by_module_path() -> None:
    """Imports inside hqq2gguf/cuda/ point one way: no submodule imports through the package's __init__."""
    package = Path(__file__).resolve().parents[1] / "hqq2gguf" / "cuda"
    offenders = [p.name for p in package.glob("*.py") if p.name != "__init__.py"
                 and re.search(r"^\s*from hqq2gguf\.cuda import ", p.read_text(), re.MULTILINE)]
    assert offenders == []
    from hqq2gguf import options
    assert Device is options.Device  # still re-exported by hqq2gguf.cuda


def test_inlined_source_is_self_contained() -> None:
    """What NVRTC gets: no local #include left (it has no include path), every entry point present."""
    for source in SOURCES:
        text = loader.source_text(source.stem)
        assert not re.search(r'^\s*#\s*include\s+"', text, re.MULTILINE)
        assert _expected_entries(source) <= set(re.findall(ENTRY_LINE, text, re.MULTILINE))


nvcc = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(nvcc is None, reason="nvcc not on PATH: the CUDA sources were NOT compiled")


@needs_nvcc
@pytest.mark.slow
@pytest.mark.parametrize("source", ALL_SOURCES, ids=lambda p: p.name)
def test_nvcc_compiles(source: Path, tmp_path: Path) -> None:
    """The header's compile line, and the extern "C" symbols in the object."""
    obj = tmp_path / f"{source.stem}.o"
    done = subprocess.run([nvcc, "-std=c++17", "-arch=sm_90", "-c", str(source), "-o", str(obj)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    nm = shutil.which("nm")
    if nm is not None:
        symbols = subprocess.run([nm, str(obj)], capture_output=True, text=True, check=True).stdout
        defined = set(re.findall(r"^\w+ T (hqq_\w+)$", symbols, re.MULTILINE))
        assert defined == _expected_entries(source)


@needs_nvcc
@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_nvrtc_source_compiles_to_the_named_entries(source: Path, tmp_path: Path) -> None:
    """The single inlined source NVRTC compiles, with its options, to PTX whose .entry names are the
    kernels the loader looks up (and only those)."""
    src = tmp_path / source.name
    src.write_text(loader.source_text(source.stem))
    ptx = tmp_path / f"{source.stem}.ptx"
    cmd = [nvcc, *loader.nvrtc_options(), "-arch=sm_90", "--ptx", str(src), "-o", str(ptx)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    entries = set(re.findall(r"^\.visible \.entry (\w+)\(", ptx.read_text(), re.MULTILINE))
    assert entries == _expected_entries(source)


# ---------------------------------------------------------------- torch's summation order

def test_detected_sum_order_reproduces_torch() -> None:
    lanes = torch_sum_lanes()
    rng = np.random.default_rng(99)
    for n in (8, 16, 32, 256):
        rows = (rng.standard_normal((16, n)) * np.exp(2 * rng.standard_normal((16, n)))).astype(np.float32)
        expected = torch.from_numpy(rows).sum(-1).numpy()
        assert [ordered_sum(r, lanes) for r in rows] == list(expected), f"{n} elements, {lanes} lanes"


# ---------------------------------------------------------------- (b) the kernel source on the CPU

@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("kind", ["normal", "student_t", "hostile"])
@pytest.mark.parametrize("qtype", CUDA_TYPES, ids=lambda t: t.name)
def test_emulated_kernel_writes_the_torch_bytes(qtype: Q, kind: str, config: str, host_launcher) -> None:
    cfg, imp = CONFIGS[config]
    x = _rows(kind)
    packed = solve_cuda(torch.from_numpy(x), qtype, importance=None if imp is None else torch.from_numpy(imp),
                        config=cfg, launcher=host_launcher)
    _check_equivalent(qtype, x, imp, cfg, packed, exact=True)


@pytest.mark.parametrize("qtype", CUDA_TYPES, ids=lambda t: t.name)
def test_emulated_kernel_under_strong_shrinkage(qtype: Q, host_launcher) -> None:
    x = _rows("student_t", seed=3)
    packed = solve_cuda(torch.from_numpy(x), qtype, config=SHRINK, launcher=host_launcher)
    _check_equivalent(qtype, x, None, SHRINK, packed, exact=False)


@pytest.mark.parametrize("qtype", [Q.Q5_1, Q.Q3_K, Q.IQ4_XS], ids=lambda t: t.name)
def test_emulated_kernel_element_major_layout(qtype: Q, tmp_path: Path) -> None:
    """The layout the GPU path uses (element-major: elem_stride = n_blocks, block_stride = 1)."""
    from hqq2gguf.cuda.emulate import HostLauncher, compiler

    try:
        compiler()
    except UnsupportedError as exc:
        pytest.skip(f"CPU emulation of the kernels NOT run: {exc}")
    x = _rows("normal", seed=5)
    packed = solve_cuda(torch.from_numpy(x), qtype, launcher=HostLauncher(tmp_path, element_major=True))
    _check_equivalent(qtype, x, None, SolverConfig(), packed, exact=True)


def test_solve_cuda_refuses_types_without_a_kernel(host_launcher) -> None:
    with pytest.raises(UnsupportedError, match="no CUDA kernel for TQ1_0"):
        solve_cuda(torch.zeros(1, 256), Q.TQ1_0, launcher=host_launcher)


# ---------------------------------------------------------------- (c) device choice, on any machine

@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def test_cpu_is_always_cpu(no_gpu: None) -> None:
    """The compiled CPU kernels, or the torch solver where they cannot run (tests/test_solve_cpu.py): never CUDA."""
    assert resolve_device("cpu") in (Device.CPU, Device.TORCH)
    assert resolve_device("torch") is Device.TORCH


def test_auto_without_gpu_is_cpu_and_says_why(no_gpu: None, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="hqq2gguf.cuda.device"):
        assert resolve_device("auto") in (Device.CPU, Device.TORCH)
    record = caplog.records[0]
    assert record.levelno == logging.INFO and "no CUDA device" in record.getMessage()


def test_cuda_without_gpu_is_an_error(no_gpu: None) -> None:
    with pytest.raises(DeviceError, match=r"^--device cuda: no CUDA device"):
        resolve_device(Device.CUDA)


def test_unknown_device_is_an_option_error() -> None:
    with pytest.raises(OptionError, match="--device must be one of auto, cpu, cuda"):
        resolve_device("tpu")


def test_cupy_missing_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` raise ModuleNotFoundError
    with pytest.raises(DeviceError) as info:
        loader.import_cupy()
    assert info.value.message == "CuPy not installed: pip install hqq2gguf[cuda]"


def test_gpu_without_cupy(fake_gpu: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(DeviceError, match=re.escape("--device cuda: CuPy not installed: pip install hqq2gguf[cuda]")):
        resolve_device("cuda")
    with caplog.at_level(logging.INFO, logger="hqq2gguf.cuda.device"):
        assert resolve_device("auto") is Device.CPU
    assert "CuPy not installed" in caplog.text


def _fake_cupy(compile_error: Exception | None) -> types.ModuleType:
    """Just enough of CuPy for the loader: one device, and a RawModule whose compile may fail."""
    class RawModule:
        def __init__(self, *, code: str, options: tuple[str, ...]) -> None:
            assert "-std=c++17" in options and "--fmad=false" in options
            assert any(o.startswith("-DHQQ_SUM_LANES=") for o in options)
            assert '#include "' not in code

        def compile(self) -> None:
            if compile_error is not None:
                raise compile_error

    class Device:
        def __init__(self, index: int) -> None:
            pass

        def __enter__(self) -> None:
            pass

        def __exit__(self, *exc: object) -> None:
            pass

    cupy = types.ModuleType("cupy")
    cupy.RawModule = RawModule
    cupy.cuda = types.SimpleNamespace(Device=Device, runtime=types.SimpleNamespace(getDeviceCount=lambda: 1))
    return cupy


def test_nvrtc_failure_is_reported_never_silent(fake_gpu: None, monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(RuntimeError("kquant.cu(12): error: expected a ;")))
    monkeypatch.setattr(loader, "_modules", {})
    with pytest.raises(DeviceError, match=r"NVRTC could not compile cuda/\w+\.cu .*expected a ;"):
        resolve_device("cuda")
    with caplog.at_level(logging.INFO, logger="hqq2gguf.cuda.device"):
        assert resolve_device("auto") is Device.CPU
    [record] = caplog.records
    assert record.levelno == logging.WARNING and "NVRTC could not compile" in record.getMessage()


def test_modules_compile_once_per_source_and_device(fake_gpu: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(None))
    monkeypatch.setattr(loader, "_modules", {})
    assert resolve_device("auto") is Device.CUDA
    first = dict(loader._modules)
    assert {key[0] for key in first} == {p.stem for p in SOURCES}
    loader.load_all(0)
    assert loader._modules == first  # cached: the same module objects, nothing recompiled


def test_solve_cuda_without_gpu_is_an_error(no_gpu: None) -> None:
    with pytest.raises(DeviceError, match="no CUDA device"):
        solve_cuda(torch.zeros(1, 256), Q.Q4_K)


# ---------------------------------------------------------------- (d) on a GPU

def _gpu_or_skip() -> None:
    reason = None
    if not torch.cuda.is_available():
        reason = "no CUDA device (torch.cuda.is_available() is False): the CUDA kernels were NOT run"
    else:
        try:
            loader.import_cupy()
        except DeviceError as exc:
            reason = f"{exc.message}: the CUDA kernels were NOT run"
    if reason is not None:
        if REQUIRE_CUDA:
            pytest.fail(f"HQQ2GGUF_REQUIRE_CUDA=1 but {reason}", pytrace=False)
        pytest.skip(reason)


@pytest.mark.gpu
def test_gpu_auto_picks_cuda() -> None:
    _gpu_or_skip()
    assert resolve_device("auto") is Device.CUDA


@pytest.mark.gpu
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("kind", ["normal", "student_t", "hostile"])
@pytest.mark.parametrize("qtype", CUDA_TYPES, ids=lambda t: t.name)
def test_gpu_kernel_matches_torch(qtype: Q, kind: str, config: str) -> None:
    """Byte-identical unless powf differs (documented bound)."""
    _gpu_or_skip()
    cfg, imp = CONFIGS[config]
    x = _rows(kind)
    packed = solve_cuda(torch.from_numpy(x).cuda(), qtype, importance=None if imp is None else torch.from_numpy(imp),
                        config=cfg)
    _check_equivalent(qtype, x, imp, cfg, packed, exact=False)


@pytest.mark.gpu
@pytest.mark.parametrize("p", [2.0, 1.0])
@pytest.mark.parametrize("qtype", CUDA_TYPES, ids=lambda t: t.name)
def test_gpu_kernel_without_powf_is_byte_identical(qtype: Q, p: float) -> None:
    """p = 2 takes powf out of the loop, p = 1 makes it an exact reciprocal: nothing is left that may differ
    from torch (but denormals, which these rows do not produce)."""
    _gpu_or_skip()
    cfg = SolverConfig(p=p, workers=1)
    x = _rows("student_t", seed=11)
    _check_equivalent(qtype, x, None, cfg, solve_cuda(torch.from_numpy(x), qtype, config=cfg), exact=True)


@pytest.mark.gpu
@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_K, Q.Q6_K], ids=lambda t: t.name)
def test_gpu_chunking_does_not_change_the_bytes(qtype: Q, monkeypatch: pytest.MonkeyPatch) -> None:
    _gpu_or_skip()
    x = torch.from_numpy(_rows("normal", seed=2))
    whole = solve_cuda(x, qtype)
    monkeypatch.setattr(launch_module, "CHUNK_ELEMENTS", 3 * gguf.GGML_QUANT_SIZES[qtype][0])
    assert np.array_equal(solve_cuda(x, qtype), whole)


# --- the command line: --device -------------------------------------------------------------------------

def test_cli_device_cuda_without_gpu_is_an_error_and_auto_is_the_cpu(tiny_model_dir, tmp_path: Path) -> None:
    """--device cuda with no usable GPU: one line, nothing written. --device auto on a CPU-only machine:
    the torch path, byte-identical to --device cpu. --device without a recipe is refused."""
    from click.testing import CliRunner

    from hqq2gguf.cli import main
    from test_quantize import SPEC

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the no-GPU refusal cannot be provoked here")
    model = tiny_model_dir(SPEC)
    out = tmp_path / "out"
    out.mkdir()
    runner = CliRunner()
    res = runner.invoke(main, ["convert", str(model), "-o", str(out / "c.gguf"), "--type", "Q4_K_M",
                               "--device", "cuda"])
    assert res.exit_code == 1 and "--device cuda: no CUDA device" in res.output
    assert "Traceback" not in res.output and list(out.iterdir()) == []
    res = runner.invoke(main, ["convert", str(model), "-o", str(out / "f16.gguf"), "--device", "cuda"])
    assert res.exit_code == 1 and "needs --type" in res.output
    paths = {}
    for device in ("cpu", "auto"):
        paths[device] = out / f"{device}.gguf"
        res = runner.invoke(main, ["convert", str(model), "-o", str(paths[device]), "--type", "Q4_K_M",
                                   "--device", device])
        assert res.exit_code == 0, res.output
    assert paths["cpu"].read_bytes() == paths["auto"].read_bytes()
