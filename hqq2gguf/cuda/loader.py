"""The one place that imports CuPy: finds the kernel sources, compiles them with NVRTC, caches the modules.

    kernel(GGMLQuantizationType.Q4_K, device_index=0)   # a cupy RawKernel, compiled once per source + device

Users need no nvcc: CuPy's wheels (``pip install hqq2gguf[cuda]``) bring NVRTC, and the sources ship inside
the hqq2gguf wheel (package data ``hqq2gguf/cuda/kernels/``, mapped from the repository's ``cuda/``).
Every problem is a :class:`~hqq2gguf.errors.DeviceError` whose one line says what is missing: CuPy, a device,
or what NVRTC printed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import gguf

from hqq2gguf.cuda.sum_order import torch_sum_lanes
from hqq2gguf.errors import DeviceError
from hqq2gguf.qtypes import QTYPES, QUANT_TYPES, Kind, QuantSpec

logger = logging.getLogger(__name__)

Q = gguf.GGMLQuantizationType

SOURCE_ENV = "HQQ2GGUF_CUDA_SRC"
"""Environment variable: a directory holding the ``.cu``/``.cuh`` sources, used instead of the shipped ones."""

NVRTC_OPTIONS: tuple[str, ...] = ("-std=c++17", "--fmad=false")
"""--fmad=false: torch rounds every product before the add; a fused multiply-add would change the bits."""


def defines() -> tuple[str, ...]:
    """The -D options every build of the kernels gets: torch's CPU summation order (sum_order.py)."""
    return (f"-DHQQ_SUM_LANES={torch_sum_lanes()}",)

CUPY_MISSING = "CuPy not installed: pip install hqq2gguf[cuda]"


@dataclass(frozen=True)
class Kernel:
    """Where the kernel of one type lives: ``cuda/<family>.cu``, entry point ``extern "C" <entry>``."""

    family: str
    entry: str


FAMILY_OF_KIND: dict[Kind, str] = {Kind.BLOCK: "block_scale", Kind.SUPER: "kquant"}
"""The kernel family (``cuda/<family>.cu``) that solves each kind of block of hqq2gguf.qtypes."""

WITHOUT_KERNEL: dict[gguf.GGMLQuantizationType, str] = {
    t: "ternary: 256-element blocks, whose values a GPU thread cannot hold in registers as block_scale.cu holds "
       "32; one fp16 scale per 256 weights leaves the solver little to do, so these are solved on the CPU "
       "(block_scale.cu's CPU build has them)" for t in (Q.TQ1_0, Q.TQ2_0)}
"""The quantized types of hqq2gguf.qtypes with no GPU kernel, and why (they are solved on the CPU)."""


def kernel_of(qspec: QuantSpec) -> Kernel | None:
    """The rule, in one place: every quantized type of the one table (hqq2gguf.qtypes.QUANT_TYPES) except
    those in :data:`WITHOUT_KERNEL` has a kernel, in the family of its kind, entry ``hqq_<name lower>``."""
    if qspec.qtype not in QUANT_TYPES or qspec.qtype in WITHOUT_KERNEL:
        return None
    return Kernel(FAMILY_OF_KIND[qspec.kind], f"hqq_{qspec.name.lower()}")


#: Every type with a fused kernel, in the order of the one table (hqq2gguf.qtypes).
KERNELS: dict[gguf.GGMLQuantizationType, Kernel] = {
    t: k for t in QUANT_TYPES if (k := kernel_of(QTYPES[t])) is not None}

#: The kernels of the CPU build (hqq2gguf/cuda/solve_cpu.py): every GPU kernel, and the types of
#: :data:`WITHOUT_KERNEL`, whose entry points block_scale.cu compiles outside nvcc/NVRTC only.
HOST_KERNELS: dict[gguf.GGMLQuantizationType, Kernel] = {
    t: KERNELS.get(t) or Kernel(FAMILY_OF_KIND[QTYPES[t].kind], f"hqq_{QTYPES[t].name.lower()}") for t in QUANT_TYPES}

HOST_SOURCES: tuple[str, ...] = ("recheck",)
"""Sources in cuda/ that are no kernel: host code the CPU solver compiles beside the kernels (cuda/recheck.cu, the
float64 re-check of hqq2gguf/cuda/solve_cpu.py); nvcc's compile check covers them too."""

_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"[ \t]*$', re.MULTILINE)
_modules: dict[tuple[str, str, int], Any] = {}
_lock = threading.Lock()


def source_dir() -> Path:
    """The directory of the kernel sources: ``$HQQ2GGUF_CUDA_SRC``, the installed package data, or the
    repository's ``cuda/`` (a source checkout or an editable install)."""
    here = Path(__file__).resolve().parent
    candidates = [Path(os.environ[SOURCE_ENV])] if os.environ.get(SOURCE_ENV) else []
    candidates += [here / "kernels", here.parents[1] / "cuda"]
    for d in candidates:
        if (d / "common.cuh").is_file():
            return d
    raise DeviceError(f"the CUDA kernel sources are missing (looked in {', '.join(map(str, candidates))}); "
                      f"reinstall hqq2gguf or set {SOURCE_ENV}")


def source_text(family: str) -> str:
    """``cuda/<family>.cu`` with its local ``#include "..."`` headers inlined (each once): one self-contained
    source, so NVRTC needs no include path and CuPy's on-disk cache key covers every line."""
    root = source_dir()
    seen: set[str] = set()

    def expand(name: str) -> str:
        path = root / name
        if not path.is_file():
            raise DeviceError(f"CUDA source {name} is missing from {root}")
        seen.add(name)

        def include(m: re.Match[str]) -> str:
            return "" if m.group(1) in seen else expand(m.group(1))

        return _INCLUDE.sub(include, path.read_text(encoding="utf-8"))

    return expand(f"{family}.cu")


def nvrtc_options() -> tuple[str, ...]:
    return NVRTC_OPTIONS + defines()


def source_hash(family: str) -> str:
    """sha256 of the inlined source and the NVRTC options (the compile cache key, with the device)."""
    return hashlib.sha256("\0".join((source_text(family), *nvrtc_options())).encode()).hexdigest()


def import_cupy() -> ModuleType:
    """CuPy, or a DeviceError saying how to install it."""
    try:
        import cupy
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "cupy":
            raise DeviceError(CUPY_MISSING) from None
        raise DeviceError(f"CuPy is installed but cannot be imported: {exc}") from exc
    except ImportError as exc:  # a broken install (e.g. the wheel of another CUDA major version)
        raise DeviceError(f"CuPy is installed but cannot be imported: {exc}") from exc
    return cupy


def device_count(cupy: ModuleType) -> int:
    """CUDA devices CuPy sees (0 when the driver is missing)."""
    try:
        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception as exc:  # cupy raises CUDARuntimeError (no driver, no device); no other path to check
        logger.debug("cupy.cuda.runtime.getDeviceCount() failed: %s", exc)
        return 0


def module(family: str, device_index: int = 0) -> Any:
    """The compiled ``cupy.RawModule`` of ``cuda/<family>.cu`` on device ``device_index`` (cached)."""
    cupy = import_cupy()
    n = device_count(cupy)
    if n == 0:
        raise DeviceError("no CUDA device: CuPy sees none (is the NVIDIA driver installed?)")
    if not 0 <= device_index < n:
        raise DeviceError(f"no CUDA device {device_index}: CuPy sees {n}")
    key = (family, source_hash(family), device_index)
    with _lock:
        if key not in _modules:
            _modules[key] = _compile(cupy, family, device_index)
        return _modules[key]


def kernel(qtype: gguf.GGMLQuantizationType, device_index: int = 0) -> Any:
    """The ``cupy.RawKernel`` of ``qtype`` on device ``device_index``."""
    if qtype not in KERNELS:
        known = ", ".join(t.name for t in KERNELS)
        raise DeviceError(f"no CUDA kernel for {qtype.name} (kernels exist for {known})")
    k = KERNELS[qtype]
    mod = module(k.family, device_index)
    try:
        return mod.get_function(k.entry)
    except Exception as exc:  # CUDA driver errors: report them as what they are, never fall back silently
        raise DeviceError(f"cuda/{k.family}.cu has no usable kernel {k.entry}: {exc}") from exc


def load_all(device_index: int = 0) -> None:
    """Compile every kernel family now (device selection uses this to fail early, not mid-conversion)."""
    for family in sorted({k.family for k in KERNELS.values()}):
        module(family, device_index)


def _compile(cupy: ModuleType, family: str, device_index: int) -> Any:
    code, options = source_text(family), nvrtc_options()
    logger.debug("compiling cuda/%s.cu with NVRTC %s on device %d", family, " ".join(options), device_index)
    try:
        with cupy.cuda.Device(device_index):
            mod = cupy.RawModule(code=code, options=options)
            mod.compile()  # now, not at the first launch: errors surface while the device is being chosen
    except Exception as exc:  # CompileException (NVRTC's log), NVRTCError, CUDADriverError: all reported
        log = str(exc).strip()
        logger.debug("NVRTC output for cuda/%s.cu:\n%s", family, log)
        excerpt = " | ".join(line.strip() for line in log.splitlines() if line.strip())[:1500]
        raise DeviceError(f"NVRTC could not compile cuda/{family}.cu ({type(exc).__name__}): {excerpt} "
                          f"(NVRTC comes with pip install hqq2gguf[cuda], or a local CUDA toolkit)") from exc
    return mod
