"""The fused kernels as the CPU solver: ``cuda/*.cu`` compiled by the host C++ compiler, one block per loop step,
row parts side by side on the solver's worker threads. Same bytes as the torch solver, several times faster.

    x (rows, ne0) --the torch path's row parts and workers (optimize.solver.map_row_parts)--> per part, on a worker:
      prepare (llama.cpp's answer, weights) -> the compiled kernel -> recheck (cuda/recheck.cu: float64, one pass)
        -> packed rows

The torch solver stays the reference: the kernels' arithmetic is torch's, step for step and in torch's
summation order (sum_order.py), and the tests hold every kernel to the torch bytes. Where that cannot be
promised -- no C++ compiler, a build failure, a torch whose float32 sum order is not one the kernels know --
:func:`cpu_kernels_unusable_reason` says why and the caller solves with torch (hqq2gguf/encode.py).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import platform
import tempfile
from pathlib import Path

import gguf
import numpy as np
import torch

import hqq2gguf.cuda.loader as loader
from hqq2gguf.cuda.emulate import HostLauncher, host_library
from hqq2gguf.cuda.host import Prepared, prepare
from hqq2gguf.cuda.sum_order import detected_lanes
from hqq2gguf.errors import DeviceError, UnsupportedError
from hqq2gguf.ggml_ref import ggml_dequantize
from hqq2gguf.optimize import Encoded, SolverConfig
from hqq2gguf.optimize.solver import map_row_parts, solver_spec

logger = logging.getLogger(__name__)

CACHE_ENV = "HQQ2GGUF_KERNEL_CACHE"
"""Where the compiled kernels are kept (one .so per source and flags): ``$HQQ2GGUF_KERNEL_CACHE``, else
``$XDG_CACHE_HOME/hqq2gguf/kernels`` (``~/.cache/...``), else a directory in the system's temp dir."""

_FAMILIES = (*sorted({k.family for k in loader.HOST_KERNELS.values()}), *loader.HOST_SOURCES)


def cache_dir() -> Path:
    """The build directory of the CPU kernels, created if need be (the temp dir's when the home cache is not
    writable)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    try:
        (home / "hqq2gguf" / "kernels").mkdir(parents=True, exist_ok=True)
        return home / "hqq2gguf" / "kernels"
    except OSError:
        return Path(tempfile.gettempdir()) / "hqq2gguf-kernels"


@functools.cache
def cpu_kernels_unusable_reason() -> str | None:
    """None when the kernels compile and load here with torch's summation order (so they write the torch
    solver's bytes), else one line saying why not. Compiles both kernel families once (a few seconds; cached
    on disk by source and flags)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "aarch64", "arm64"):
        return f"the compiled kernels are not built for {platform.machine()}"
    if detected_lanes() is None:
        return "torch's float32 summation order here is not one the kernels reproduce"
    try:
        for family in _FAMILIES:
            host_library(family, cache_dir(), ftz=False)
    except (UnsupportedError, DeviceError) as exc:
        return str(exc)
    except (RuntimeError, OSError) as exc:  # a compiler that fails on our source, or an unwritable cache
        return f"the kernels did not build: {str(exc).splitlines()[0]}"
    return None


def cpu_kernel_types() -> tuple[gguf.GGMLQuantizationType, ...]:
    """Block types with a kernel in the CPU build: every quantized type (TQ1_0/TQ2_0 included, which have no GPU
    kernel)."""
    return tuple(loader.HOST_KERNELS)


def encode_cpu(x: torch.Tensor, qtype: gguf.GGMLQuantizationType, *, importance: torch.Tensor | None = None,
               config: SolverConfig = SolverConfig()) -> Encoded:
    """:func:`hqq2gguf.optimize.encode` with each row part's loop in the compiled kernel: the same packed blocks,
    byte for byte, and the same four sums. Needs :func:`cpu_kernels_unusable_reason` to be None."""
    spec = solver_spec(qtype)
    if spec.qtype not in loader.HOST_KERNELS:  # solver_spec already refused non-quantized types: a bug
        raise UnsupportedError(f"no CPU kernel for {spec.name}")
    launcher = HostLauncher(cache_dir(), ftz=False)  # IEEE denormals, as torch

    def run_part(rows: np.ndarray, imp: torch.Tensor | None, cfg: SolverConfig) -> Encoded:
        prep = prepare(spec, rows, imp, cfg, score_base=False)
        out, _ = launcher.run(prep.inputs)
        return recheck(prep, out)

    return Encoded.join(map_row_parts(spec, x, importance, config, run_part))


def recheck(prep: Prepared, out: np.ndarray) -> Encoded:
    """:func:`hqq2gguf.cuda.host.finish` for the CPU, in one compiled pass: both answers decoded by ggml, llama.cpp's
    block kept wherever ours is not at least as good in float64 (:func:`recheck_blocks`: the same blocks as the
    numpy re-check), and the part's four sums."""
    spec = prep.spec
    if out.shape != prep.base_bytes.shape:
        raise RuntimeError(f"{spec.name}: the kernel returned {out.shape} bytes for {prep.base_bytes.shape} "
                           "(internal error)")
    ours = ggml_dequantize(spec.qtype, out)
    take, sums, bad = recheck_blocks(prep.x32.reshape(ours.shape), prep.w_rows, ours,
                                     ggml_dequantize(spec.qtype, prep.base_bytes))
    if bad:
        logger.warning("%s: the CPU kernel wrote %d block(s) with non-finite scales (a kernel bug); kept "
                       "llama.cpp's blocks there", spec.name, bad)
    if take.any():
        logger.debug("%s: %d of %d block(s) not better than llama.cpp's in float64; kept llama.cpp's", spec.name,
                     int(take.sum()), len(take))
        out = np.where(take[:, None], prep.base_bytes, out)
    rows = prep.x32.shape[0]
    return Encoded(out.reshape(rows, -1), float(sums[2]), float(sums[3]), float(sums[0]), float(sums[1]))


def recheck_blocks(x: np.ndarray, w: np.ndarray | None, ours: np.ndarray, base: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, int]:
    """cuda/recheck.cu on float32 blocks x, ours, base (n_blocks, block) and float64 weights w (None: ones; any
    shape of the same size): per block whether llama.cpp's ``base`` is kept (``ours`` not at least as good in
    float64, each block's terms added in numpy's pairwise order, as ``block_objective``), the float64 sums
    (objective, baseline objective, squared error, squared norm) of the kept blocks, and how many blocks of
    ``ours`` are not all finite."""
    n_blocks, block = ours.shape
    x, ours, base = (np.ascontiguousarray(a, np.float32) for a in (x, ours, base))
    if w is not None:
        w = np.ascontiguousarray(w, np.float64)
    if not (x.shape == base.shape == ours.shape and (w is None or w.size == x.size)):
        raise RuntimeError(f"recheck_blocks: shapes {x.shape}, {ours.shape}, {base.shape} differ (internal error)")
    take = np.zeros(n_blocks, np.bool_)
    sums = np.zeros(4, np.float64)
    bad = _recheck_entry(cache_dir())(x.ctypes.data, None if w is None else w.ctypes.data, ours.ctypes.data, base.ctypes.data,
                           n_blocks, block, take.ctypes.data, sums.ctypes.data)
    return take, sums, int(bad)


@functools.cache
def _recheck_entry(build_dir: Path) -> ctypes._CFuncPtr:
    """cuda/recheck.cu's ``hqq_recheck`` built in ``build_dir``, loaded and typed once (every row part calls it)."""
    fn = host_library("recheck", build_dir, ftz=False).hqq_recheck
    fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_longlong, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    fn.restype = ctypes.c_longlong
    return fn
