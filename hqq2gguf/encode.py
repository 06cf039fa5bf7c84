"""Encode: one planned tensor's float data -> its output bytes. The single dispatcher of the pipeline.

* block types of a recipe: the HQQ solver (:mod:`hqq2gguf.optimize`), as ``--device`` resolved: the fused
  kernels (:mod:`hqq2gguf.cuda`) compiled for the CPU or on a GPU, or the pure-torch solver;
* everything else: gguf-py's reference encoding (which keeps ``--outtype q8_0`` identical to llama.cpp's
  converter), or the bytes as they are for the pass-through integer types.
"""

from __future__ import annotations

import logging
import time

import gguf
import numpy as np
import torch

from hqq2gguf.errors import MEMORY_HINT, InputError, ResourceError
from hqq2gguf.feedback import Feedback
from hqq2gguf.optimize import SOLVER_TYPES, Encoded, SolverConfig, encode as solver_encode, llama_cpp_encoded
from hqq2gguf.options import ConvertOptions, Device
from hqq2gguf.plan import PlannedTensor
from hqq2gguf.read.gguf_in import PASS_THROUGH_TYPES

logger = logging.getLogger(__name__)



def encode_tensor(out: PlannedTensor, tensor: torch.Tensor, options: ConvertOptions,
                  importance: np.ndarray | None = None, covariance: list[np.ndarray] | None = None) -> np.ndarray:
    """The bytes of ``out`` (F32/F16 as float arrays, the rest uint8), from ``tensor`` in numpy order.

    ``importance``: None or (n_expert, ne0) column importance for the solver (one row per expert);
    ``covariance``: None or the input covariance of a 2-D tensor (diagonal blocks), for the error feedback."""
    if tuple(tensor.shape) != out.shape:
        raise InputError(f"shape {tuple(tensor.shape)} differs from the planned {out.shape} (internal error)",
                         tensor=out.name)
    array = tensor.contiguous().numpy()
    try:
        if options.recipe is not None and out.out_type in SOLVER_TYPES:
            encoded = solve_tensor(out.name, array, out.out_type, options.solver, importance, options.device,
                                   covariance)
        else:
            encoded = reference_encode(out.name, array, out.out_type)
    except MemoryError as e:
        raise ResourceError(f"out of memory encoding {list(array.shape)} ({array.nbytes / 2**20:.1f} MiB) as "
                            f"{out.out_type.name}: {MEMORY_HINT}", tensor=out.name) from e
    if encoded.nbytes != out.nbytes:
        raise InputError(f"encoded {encoded.nbytes} bytes, planned {out.nbytes} (internal error)", tensor=out.name)
    return encoded


def reference_encode(name: str, data: np.ndarray, out_type: gguf.GGMLQuantizationType) -> np.ndarray:
    """gguf-py's reference encoding: F32/F16 come back as float arrays, BF16 and block types as uint8."""
    if out_type in PASS_THROUGH_TYPES:
        return data  # pass-through types keep their bytes
    try:
        return gguf.quants.quantize(data, out_type)
    except (gguf.QuantError, NotImplementedError) as e:
        raise InputError(f"cannot encode as {out_type.name}: {e}", tensor=name) from e


def solve_tensor(name: str, array: np.ndarray, qtype: gguf.GGMLQuantizationType, config: SolverConfig,
                 importance: np.ndarray | None = None, device: Device = Device.TORCH,
                 covariance: list[np.ndarray] | None = None) -> np.ndarray:
    """HQQ-optimized blocks of ``array`` (numpy order, last axis blocked) as uint8 bytes; logs the error.

    ``device`` (resolved): CPU (the kernels compiled for the CPU), CUDA (the kernels on the GPU) or TORCH (the
    torch solver); TQ1_0/TQ2_0 have no GPU kernel: under CUDA they are solved by torch.
    A 3-D tensor's experts are solved one at a time, each with its own importance row. With ``covariance`` (a
    2-D tensor's input covariance) each row's blocks are solved left to right with error feedback
    (:mod:`hqq2gguf.feedback`)."""
    start = time.perf_counter()
    if covariance is not None and array.ndim == 2:
        done = solve_with_feedback(array, qtype, config, importance, device, Feedback.of(covariance))
        logger.info("%-32s %-6s rel.err %.4f  output rel.err %.4f (error feedback)  %.1f s", name, qtype.name,
                    (done.sq_error / max(done.sq_norm, 1e-300)) ** 0.5,
                    (done.objective / max(done.baseline_objective, 1e-300)) ** 0.5, time.perf_counter() - start)
        return done.packed
    n_expert = array.shape[0] if array.ndim == 3 else 1
    experts = array.reshape(n_expert, -1, array.shape[-1])
    done = Encoded.join([solve_rows(experts[e], qtype, config,  # to float32 per row part, on the workers
                                     None if importance is None else torch.from_numpy(importance[e]), device)
                         for e in range(n_expert)])
    logger.info("%-32s %-6s rel.err %.4f  objective %.3f x llama.cpp%s  %.1f s", name, qtype.name,
                (done.sq_error / max(done.sq_norm, 1e-300)) ** 0.5,
                done.objective / max(done.baseline_objective, 1e-300),
                "" if importance is None else " (importance-weighted)", time.perf_counter() - start)
    return done.packed.reshape(*array.shape[:-1], -1)


def solve_with_feedback(rows: np.ndarray, qtype: gguf.GGMLQuantizationType, config: SolverConfig,
                        importance: np.ndarray | None, device: Device, feedback: Feedback) -> Encoded:
    """:func:`solve_rows` one block of columns at a time, with ``feedback`` between them (rows (rows, ne0)).
    ``Encoded.objective`` / ``baseline_objective`` are the output's squared error and squared norm here."""
    imp = None if importance is None else torch.from_numpy(np.ascontiguousarray(importance.reshape(-1)))

    def block(part: np.ndarray, start: int, stop: int) -> Encoded:
        return solve_rows(part, qtype, config, None if imp is None else imp[start:stop].contiguous(), device)

    return feedback.solve(rows, qtype, gguf.GGML_QUANT_SIZES[qtype][0], block)


def solve_rows(rows: np.ndarray, qtype: gguf.GGMLQuantizationType, config: SolverConfig,
               importance: torch.Tensor | None, device: Device) -> Encoded:
    """The blocks of ``rows`` (rows, ne0) exactly as a file's tensor of ``qtype`` gets them on ``device``."""
    if config.leaves_to_llama_cpp(qtype.name, importance is not None):  # on every device: the same bytes
        return llama_cpp_encoded(torch.from_numpy(rows), qtype, config)
    if device is Device.CUDA:
        from hqq2gguf.cuda import CUDA_TYPES, encode_cuda  # CuPy and the kernels: only when asked for

        if qtype in CUDA_TYPES:  # bounded per row part, like the torch path
            return encode_cuda(torch.from_numpy(rows), qtype, importance=importance, config=config)
    if device is Device.CPU:
        from hqq2gguf.cuda.solve_cpu import cpu_kernel_types, encode_cpu

        if qtype in cpu_kernel_types():  # resolved: the compiled kernels write the torch solver's bytes here
            return encode_cpu(torch.from_numpy(rows), qtype, importance=importance, config=config)
    return solver_encode(torch.from_numpy(rows), qtype, importance=importance, config=config)
