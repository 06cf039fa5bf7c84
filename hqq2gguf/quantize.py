"""Quantized output (``--type RECIPE``): llama.cpp's per-tensor types, HQQ-optimized blocks.

The plan for a recipe is the plan of the plain conversion (its output type is the "input type" llama-quantize
would see in an F16 file) with llama.cpp's recipe applied on top: the same per-tensor types llama-quantize
picks for that F16 file. Block types are then encoded by the HQQ solver instead of gguf-py's reference code.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Mapping

import gguf
import numpy as np
import torch

from hqq2gguf.cuda import CUDA_TYPES, Device, solve_cuda_solution
from hqq2gguf.optimize import SOLVER_TYPES, Encoded, SolverConfig, encode
from hqq2gguf.plan import PlanStep
from hqq2gguf.recipes import ModelInfo, QuantOptions, Recipe, plan_types

logger = logging.getLogger(__name__)


def apply_recipe(steps: list[PlanStep], kv: Mapping[str, Any], recipe: Recipe, options: QuantOptions) -> None:
    """Set every planned tensor's output type to llama-quantize's choice for ``recipe`` (in place)."""
    outputs = [out for step in steps for out in step.outputs]
    types = plan_types([(o.name, o.shape, o.out_type) for o in outputs], ModelInfo.from_metadata(kv), recipe, options)
    for step in steps:
        step.outputs = [dataclasses.replace(o, out_type=types[o.name]) for o in step.outputs]


def hparams_kv(arch: str, write_hparams) -> dict[str, Any]:
    """The metadata key/values that ``write_hparams(writer)`` writes, read back from a scratch writer."""
    writer = gguf.GGUFWriter(path=None, arch=arch)
    write_hparams(writer)
    return {key: value.value for key, value in writer.kv_data[0].items()}


def is_solved(qtype: gguf.GGMLQuantizationType) -> bool:
    return qtype in SOLVER_TYPES


def encode_solved(name: str, array: np.ndarray, qtype: gguf.GGMLQuantizationType, config: SolverConfig,
                  importance: np.ndarray | None = None, device: Device = Device.CPU) -> np.ndarray:
    """HQQ-optimized blocks of ``array`` (numpy order, last axis blocked) as uint8 bytes; logs the error.

    ``importance``: None or (n_expert, ne0) column importance (one row per expert of a 3-D tensor).
    ``device``: CPU (the torch solver) or CUDA (resolved; the fused kernels for the types they cover)."""
    def run(rows: np.ndarray, imp: torch.Tensor | None) -> Encoded:
        if device is Device.CUDA and qtype in CUDA_TYPES:
            return Encoded.of(solve_cuda_solution(torch.from_numpy(rows), qtype, importance=imp, config=config), rows)
        return encode(torch.from_numpy(rows), qtype, importance=imp, config=config)

    start = time.perf_counter()
    n_expert = array.shape[0] if array.ndim == 3 else 1
    experts = array.reshape(n_expert, -1, array.shape[-1])
    done = Encoded.join([run(experts[e].astype(np.float32, copy=False),
                             None if importance is None else torch.from_numpy(importance[e]))
                         for e in range(n_expert)])
    logger.info("%-32s %-6s rel.err %.4f  objective %.3f x llama.cpp%s  %.1f s", name, qtype.name,
                (done.sq_error / max(done.sq_norm, 1e-300)) ** 0.5,
                done.objective / max(done.baseline_objective, 1e-300),
                "" if importance is None else " (importance-weighted)", time.perf_counter() - start)
    return done.packed.reshape(*array.shape[:-1], -1)
