"""The kernel sources run on the CPU: the same ``cuda/*.cu``, compiled by the host C++ compiler.

The kernels are written so that one thread runs one block with plain C++ arithmetic; outside nvcc/NVRTC
the entry points become ``extern "C"`` functions that loop over the blocks (cuda/common.cuh). This lets the
tests check the kernels' solver and byte layouts against the torch reference on a machine without a GPU:

    solve_cuda(x, Q.Q4_K, launcher=HostLauncher())

It validates the source, not the GPU: device-only effects (CUDA's powf, the compiler's choices under
--fmad=false) are covered only by the GPU tests. What the GPU build does to denormals is emulated: CuPy compiles
with -ftz=true, so by default the entry points run with SSE's flush-to-zero and denormals-are-zero bits set
(x86 only; ``ftz=False`` runs IEEE denormals, as torch does). Needs a C++17 compiler (``$CXX`` or ``c++``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import gguf
import numpy as np

import hqq2gguf.cuda.loader as loader
from hqq2gguf.cuda.host import BlockInputs
from hqq2gguf.errors import UnsupportedError

_X86 = ("x86_64", "amd64", "i386", "i686")
CXX_FLAGS: tuple[str, ...] = ("-std=c++17", "-O3", "-ffp-contract=off", "-fno-trapping-math", "-shared", "-fPIC",
                               "-x", "c++") + (("-msse4.1",) if platform.machine().lower() in _X86 else ())
"""-ffp-contract=off: no fused multiply-add, as the kernels are compiled (--fmad=false) and as torch computes.
-fno-trapping-math: floating-point exceptions are never trapped (nothing here unmasks them), so the compiler may
turn a clamp's compare-and-select into vector min/max and vectorize the per-element loops; it changes no result
(tests/test_solve_cpu.py: the torch solver's bytes), only what may raise the FPU's sticky flags.
-msse4.1 (x86): ``nearbyint`` becomes one ``roundss``/``roundps`` instead of a libm call (every x86-64 CPU since
2008 has it; the rounding is the same IEEE round-half-even). No -ffast-math, no -march=native: the arithmetic
stays torch's."""

_F, _I8, _U8 = (ctypes.POINTER(t) for t in (ctypes.c_float, ctypes.c_int8, ctypes.c_uint8))
_POINTER = {np.dtype(np.float32): _F, np.dtype(np.int8): _I8, np.dtype(np.uint8): _U8}
_ARGTYPES = [_F, _F, _F, _I8, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_longlong, _F, _F, _I8, _I8,
             ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_float, _F, ctypes.c_int, _F, _F, ctypes.c_int,
             _U8, _F]  # HQQ_KERNEL_PARAMS, in order
FTZ_DEFINE = "-DHQQ_EMULATE_FTZ=1"
"""Runs the entry points with SSE's FTZ|DAZ bits set: the GPU's -ftz=true (cuda/common.cuh HQQ_FTZ_SCOPE)."""
_libs: dict[Path, ctypes.CDLL] = {}
_loaded: dict[tuple[str, Path | None, bool], ctypes.CDLL] = {}  # (family, build_dir, ftz) -> its library
_lock = threading.Lock()


def compiler() -> str:
    """The host C++ compiler: ``$CXX``, else ``c++``; UnsupportedError when there is none."""
    cxx = os.environ.get("CXX") or "c++"
    found = shutil.which(cxx)
    if found is None:
        raise UnsupportedError(f"no C++ compiler ({cxx!r} not found; set CXX): the CPU emulation of the kernels "
                               "needs one")
    return found


def host_library(family: str, build_dir: Path | None = None, *, ftz: bool = True) -> ctypes.CDLL:
    """``cuda/<family>.cu`` compiled for the CPU (cached by source hash in ``build_dir``, default a temp dir);
    ``ftz``: denormals flushed as on the GPU (x86 only)."""
    if ftz and platform.machine().lower() not in _X86:
        raise UnsupportedError(f"the GPU's flush-to-zero is emulated with SSE's MXCSR, which {platform.machine()} "
                               "lacks: use HostLauncher(ftz=False)")
    quick = (family, build_dir, ftz)
    if quick in _loaded:  # a file's every row part asks: no source hashing after the first
        return _loaded[quick]
    src = loader.source_dir() / f"{family}.cu"
    flags = CXX_FLAGS + loader.defines() + ((FTZ_DEFINE,) if ftz else ())
    key = hashlib.sha256("\0".join((loader.source_text(family), *flags)).encode()).hexdigest()[:16]
    root = build_dir or Path(tempfile.gettempdir()) / "hqq2gguf-cuda-emulation"
    lib = root / f"{family}-{key}.so"
    with _lock:
        if lib not in _libs:
            if not lib.is_file():
                root.mkdir(parents=True, exist_ok=True)
                tmp = lib.with_suffix(f".{os.getpid()}.tmp")
                cmd = [compiler(), *flags, str(src), "-o", str(tmp)]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0:  # our own source failed to build: a bug, shown in full
                    raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr}")
                os.replace(tmp, lib)
            _libs[lib] = ctypes.CDLL(str(lib))
        _loaded[quick] = _libs[lib]
        return _libs[lib]


class HostLauncher:
    """Runs a kernel's entry point on the CPU over all blocks (one after the other).

    ``element_major``: pass the element arrays transposed, as the CUDA path does (checks the stride logic);
    ``ftz``: flush float32 denormals to zero, as the GPU build does (the default), or keep them (IEEE, as torch)."""

    def __init__(self, build_dir: Path | None = None, *, element_major: bool = False, ftz: bool = True) -> None:
        self.build_dir = build_dir
        self.element_major = element_major
        self.ftz = ftz

    def run(self, inputs: BlockInputs) -> tuple[np.ndarray, np.ndarray]:
        k = loader.HOST_KERNELS[inputs.qtype]
        fn = getattr(host_library(k.family, self.build_dir, ftz=self.ftz), k.entry)
        fn.argtypes, fn.restype = _ARGTYPES, None
        n, B = inputs.x.shape
        p = inputs.params
        out = np.zeros((n, gguf.GGML_QUANT_SIZES[inputs.qtype][1]), np.uint8)
        obj = np.zeros(n, np.float32)

        def elements(a: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(a.T if self.element_major else a)

        arrays = [elements(inputs.x), elements(inputs.w), elements(inputs.wf), elements(inputs.base_q),
                  inputs.base_d, inputs.base_m, np.ascontiguousarray(inputs.base_sc),
                  np.ascontiguousarray(inputs.base_mn), p.hq_c, p.factors, p.one_minus, out, obj]
        x, w, wf, q0, d0, m0, sc0, mn0, hq_c, factors, one_minus, out_p, obj_p = (
            a.ctypes.data_as(_POINTER[a.dtype]) for a in arrays)
        es, bs = (n, 1) if self.element_major else (1, B)
        fn(x, w, wf, q0, es, bs, n, d0, m0, sc0, mn0, p.iterations, p.patience, int(p.shrink), float(p.p_exp),
           hq_c, p.n_factors, factors, one_minus, p.radius, out_p, obj_p)
        return out, obj
