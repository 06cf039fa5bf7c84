"""Plan: the one stage that decides every output tensor's name, shape and type, before any data is read.

    plan = make_plan(source, options)      # Plan(tensors=(PlannedTensor(name, shape, out_type), ...))

The plan is what makes streaming possible: the GGUF header (tensor infos) is written first, then the
tensors one at a time in exactly the planned order. Types come in two layers:

* the plain conversion (llama.cpp's converter rules): 1-D tensors, ``*_norm.weight`` and a few special
  tensors stay F32 whatever the requested type; everything else that ends in ``.weight`` gets the
  requested type, or F16 where its rows are not whole blocks of it;
* with a recipe (``--type Q4_K_M``), llama-quantize's per-tensor choice on top (:mod:`hqq2gguf.recipes`),
  as if the plain conversion's file were given to llama-quantize, with the user's overrides;
* with an allocation (:mod:`hqq2gguf.allocate`), its types last, as ``--tensor-type NAME=TYPE`` would set them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import gguf

from hqq2gguf.errors import InputError
from hqq2gguf.options import ConvertOptions
from hqq2gguf.recipes import ModelInfo, plan_types
from hqq2gguf.sources import Source, TensorOut

logger = logging.getLogger(__name__)

Q = gguf.GGMLQuantizationType


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    shape: tuple[int, ...]  # numpy order: the last axis is ggml's ne0 (the blocked, contiguous one)
    out_type: gguf.GGMLQuantizationType

    @property
    def nbytes(self) -> int:
        block, type_size = gguf.GGML_QUANT_SIZES[self.out_type]
        return math.prod(self.shape[:-1]) * (self.shape[-1] // block) * type_size if self.shape else type_size


@dataclass(frozen=True)
class Plan:
    """Every output tensor, in file order (the source's step order)."""

    tensors: tuple[PlannedTensor, ...]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def types(self) -> list[str]:
        """The distinct output type names, sorted."""
        return sorted({t.out_type.name for t in self.tensors})


def make_plan(source: Source, options: ConvertOptions,
              allocated: Mapping[str, gguf.GGMLQuantizationType] | None = None) -> Plan:
    """The plan of converting ``source`` as ``options`` ask: plain conversion types, then the recipe's, then
    the ``allocated`` types (by tensor name; each already one whose block divides the tensor's rows)."""
    planned = [PlannedTensor(out.name, out.shape, plain_type(out, source.weight_type)) for out in source.outputs]
    _check_unique(source, planned)
    if options.recipe is not None:
        types = plan_types([(t.name, t.shape, t.out_type) for t in planned], ModelInfo.from_metadata(source.hparams),
                           options.recipe, options.quant)
        types |= allocated or {}
        planned = [dataclasses.replace(t, out_type=types[t.name]) for t in planned]
    for t in planned:
        if allocated and t.name in allocated and t.shape[-1] % gguf.GGML_QUANT_SIZES[t.out_type][0]:
            raise InputError(f"allocated {t.out_type.name} does not divide rows of {t.shape[-1]} (internal error)",
                             tensor=t.name)
    return Plan(tuple(planned))


def plain_type(out: TensorOut, wanted: gguf.GGMLQuantizationType) -> gguf.GGMLQuantizationType:
    """The type a tensor is written as by a plain conversion to ``wanted`` (llama.cpp converter rules)."""
    name, n_dims = out.name, len(out.shape)
    if out.fixed_type is not None:
        return out.fixed_type
    if n_dims <= 1 or name.endswith("_norm.weight") or out.keep_f32 or not name.endswith(".weight"):
        return Q.F32
    block, _ = gguf.GGML_QUANT_SIZES[wanted]
    if out.shape[-1] % block != 0:
        logger.warning("%s: row length %d is not a multiple of %s's block (%d): falling back to F16",
                       name, out.shape[-1], wanted.name, block)
        return Q.F16
    return wanted


def _check_unique(source: Source, planned: list[PlannedTensor]) -> None:
    seen: set[str] = set()
    for out in planned:
        if out.name in seen:
            raise InputError(f"two input tensors map to the same GGUF tensor {out.name!r}", file=source.path)
        seen.add(out.name)
