"""The CUDA solver's entry points: the contracts of :func:`hqq2gguf.optimize.encode` / ``solve``, the loop on the GPU.

    x (rows, ne0) --cut into row parts (the torch path's row_parts)--> for each part, one after the other:
      --host: llama.cpp's answer (ggml_ref), element weights, fitting weights--> kernel inputs   (host.prepare)
      --GPU: one thread per block runs the whole HQQ fit and writes ggml block bytes--> uint8 (n_blocks, size)
      --host: float64 re-check, llama.cpp's block kept wherever ours is not better--> packed rows  (host.finish)

Host memory is bounded by a few copies of one part (the next part is prepared while the current one runs:
two parts at most), device memory by one launch chunk (hqq2gguf/cuda/launch.py); never by the whole tensor.
Every block is solved on its own, so neither the parts nor the chunks change a byte.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import gguf
import numpy as np
import torch

import hqq2gguf.cuda.loader as loader
from hqq2gguf.cuda.host import BlockInputs, KernelParams, Prepared, check_kernel, finish, prepare
from hqq2gguf.cuda.launch import CHUNK_ELEMENTS, THREADS_PER_CTA, CudaLauncher, Launcher
from hqq2gguf.optimize import Encoded, Solution, SolverConfig
# The torch path's input checks and row parts: one definition, so the contracts cannot drift.
from hqq2gguf.optimize.solver import checked_rows, concat_solutions, row_parts, solver_spec
from hqq2gguf.optimize.weights import checked_importance
from hqq2gguf.pack import Fields
from hqq2gguf.qtypes import QuantSpec

logger = logging.getLogger(__name__)

__all__ = ["BlockInputs", "CHUNK_ELEMENTS", "CUDA_TYPES", "CudaLauncher", "KernelParams", "Launcher", "PART_ELEMENTS",
           "Prepared", "THREADS_PER_CTA", "encode_cuda", "finish", "prepare", "solve_cuda", "solve_cuda_solution"]

#: Types with a fused kernel: loader.KERNELS, derived from hqq2gguf.qtypes (loader.kernel_of says which and why).
CUDA_TYPES: tuple[gguf.GGMLQuantizationType, ...] = tuple(loader.KERNELS)

PART_ELEMENTS = 1 << 23
"""Elements per row part when ``SolverConfig.chunk_blocks`` is 0 (an explicit value is honoured, as on the torch
path). The CPU's default part (2**18 elements) would give a GPU ~1000 threads a launch; 2**23 gives 32768
super-blocks (about one wave on an H100 at 255 registers a thread) or 262144 32-blocks. Host memory: ~30 bytes
per element of a part, two parts in flight, so ~0.5 GiB above the tensor itself (measured with the emulated
kernels: benchmarks/results/cuda_host_memory.md)."""

T = TypeVar("T")


def default_launcher(x: torch.Tensor) -> Launcher:
    """Where the kernels run when the caller names no launcher: the CUDA device of ``x``, else the current one.
    (Tests without a GPU replace this function to run the CPU emulation through the whole pipeline.)"""
    return CudaLauncher(x.device.index if isinstance(x, torch.Tensor) and x.is_cuda else None)


def encode_cuda(x: torch.Tensor, qtype: gguf.GGMLQuantizationType, *, importance: torch.Tensor | None = None,
                config: SolverConfig = SolverConfig(), launcher: Launcher | None = None) -> Encoded:
    """:func:`hqq2gguf.optimize.encode` with the loop on the GPU: the packed blocks uint8 (rows, row_bytes) and the
    four float64 sums, each row part packed and summed as it finishes. ``launcher``: where the kernel runs
    (default: :func:`default_launcher`)."""
    return Encoded.join(_map_parts(x, qtype, importance, config, None, launcher, Encoded.of))


def solve_cuda(x: torch.Tensor, qtype: gguf.GGMLQuantizationType, *, importance: torch.Tensor | None = None,
               config: SolverConfig = SolverConfig(), base_fields: Fields | None = None,
               launcher: Launcher | None = None) -> np.ndarray:
    """Packed ggml blocks uint8 (rows, row_bytes) of rows ``x`` (rows, ne0), as ``solve(...).packed()``.

    ``base_fields``: llama.cpp's answer when the caller has it (else computed here by ggml, as the torch path
    does); ``launcher``: where the kernel runs (default: :func:`default_launcher`)."""
    parts = _map_parts(x, qtype, importance, config, base_fields, launcher, lambda s, _: s.packed())
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def solve_cuda_solution(x: torch.Tensor, qtype: gguf.GGMLQuantizationType, *, importance: torch.Tensor | None = None,
                        config: SolverConfig = SolverConfig(), base_fields: Fields | None = None,
                        launcher: Launcher | None = None) -> Solution:
    """As :func:`solve_cuda`, returning what :func:`hqq2gguf.optimize.solve` returns (fields, decoded values,
    per-block objectives). Holds the whole tensor's solution: a file conversion uses :func:`encode_cuda`."""
    spec = solver_spec(qtype)
    parts = _map_parts(x, qtype, importance, config, base_fields, launcher, lambda s, _: s)
    return parts[0] if len(parts) == 1 else concat_solutions(spec, parts)


def part_slices(spec: QuantSpec, rows: int, ne0: int, config: SolverConfig) -> list[slice]:
    """The row parts of a (rows, ne0) tensor: the torch path's row_parts, with :data:`PART_ELEMENTS` as the
    default size (one worker: parts run one after the other, the GPU being the parallel part)."""
    B = spec.block_size
    per_part = config.blocks_per_part(B) if config.chunk_blocks else max(1, PART_ELEMENTS // B)
    return row_parts(rows, ne0 // B, per_part, 1)


def _map_parts(x: torch.Tensor, qtype: gguf.GGMLQuantizationType, importance: torch.Tensor | None,
               config: SolverConfig, base_fields: Fields | None, launcher: Launcher | None,
               done: Callable[[Solution, np.ndarray], T]) -> list[T]:
    """``done(solution, rows)`` of every row part, in row order."""
    spec = solver_spec(qtype)
    check_kernel(spec)
    x32 = checked_rows(x, spec)
    rows, ne0 = x32.shape
    imp = checked_importance(importance, ne0, spec.name)
    config = config.for_type(spec.name)
    if launcher is None:
        launcher = default_launcher(x)
    parts = part_slices(spec, rows, ne0, config)
    if base_fields is not None and len(parts) > 1:  # given for the whole tensor: prepare the tensor as one part
        parts = [slice(0, rows)]
    results = []
    for sl, prep in zip(parts, _prepared(spec, x32, imp, config, base_fields, parts)):
        out, _ = launcher.run(prep.inputs)
        results.append(done(finish(prep, out)[1], x32[sl]))
        del prep, out  # the part's host arrays go before the part after next is prepared
    return results


def _prepared(spec: QuantSpec, x32: np.ndarray, imp: torch.Tensor | None, config: SolverConfig,
              base_fields: Fields | None, parts: list[slice]) -> Iterator[Prepared]:
    """The prepared parts in order, the next one prepared on a helper thread while the caller runs the current
    one (ggml, numpy and torch release the GIL): at most two parts' inputs exist at a time."""
    if len(parts) == 1:
        yield prepare(spec, x32[parts[0]], imp, config, base_fields)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="hqq-cuda-prepare") as pool:
        pending = pool.submit(prepare, spec, x32[parts[0]], imp, config)
        for i in range(len(parts)):
            prep = pending.result()
            if i + 1 < len(parts):
                pending = pool.submit(prepare, spec, x32[parts[i + 1]], imp, config)
            yield prep
            del prep
