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

from hqq2gguf.optimize import SOLVER_TYPES, SolverConfig, solve
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


def encode_solved(name: str, array: np.ndarray, qtype: gguf.GGMLQuantizationType, config: SolverConfig) -> np.ndarray:
    """HQQ-optimized blocks of ``array`` (numpy order, last axis blocked) as uint8 bytes; logs the error."""
    start = time.perf_counter()
    rows = array.reshape(-1, array.shape[-1]).astype(np.float32, copy=False)
    solution = solve(torch.from_numpy(rows), qtype, config=config)
    packed = solution.packed()
    err = float(np.linalg.norm(rows - solution.values) / max(np.linalg.norm(rows), 1e-30))
    gain = float(solution.objective.sum() / max(solution.baseline_objective.sum(), 1e-300))
    logger.info("%-32s %-6s rel.err %.4f  objective %.3f x llama.cpp  %.1f s", name, qtype.name, err, gain,
                time.perf_counter() - start)
    return packed.reshape(*array.shape[:-1], -1)
