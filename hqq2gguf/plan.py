"""Plan: the name, GGUF-layout shape and output type of every tensor, known before any data is read.

The plan is what makes streaming possible: the GGUF header (tensor infos) is written first, then the
tensors one at a time in exactly the planned order. Output types follow llama.cpp's converter rules:

* 1-D tensors, ``*_norm.weight`` and a few special tensors (``ffn_gate_inp``, position embeddings, ...)
  stay F32 whatever the requested type;
* everything else that ends in ``.weight`` gets the requested type;
* Q8_0 needs rows divisible by its 32-element block: other tensors fall back to F16, as llama.cpp does.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import gguf
import numpy as np
import torch

from hqq2gguf.errors import MEMORY_HINT, InputError, ResourceError

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


@dataclass
class PlanStep:
    """One source tensor (or generated tensor) and the output tensors made from it."""

    source: str  # the input's tensor name, for messages
    load: Callable[[], torch.Tensor] = field(repr=False)
    outputs: list[PlannedTensor]
    transform: Callable[[torch.Tensor], Sequence[tuple[str, torch.Tensor]]] = field(repr=False)


def output_type(name: str, n_dims: int, wanted: gguf.GGMLQuantizationType, *, keep_f32: bool,
                ne0: int) -> gguf.GGMLQuantizationType:
    """The type a tensor is written as, for a requested weight type (llama.cpp converter rules)."""
    if n_dims <= 1 or name.endswith("_norm.weight") or keep_f32 or not name.endswith(".weight"):
        return Q.F32
    block, _ = gguf.GGML_QUANT_SIZES[wanted]
    if ne0 % block != 0:
        logger.warning("%s: row length %d is not a multiple of %s's block (%d): falling back to F16",
                       name, ne0, wanted.name, block)
        return Q.F16
    return wanted


def encode(name: str, data: np.ndarray, out_type: gguf.GGMLQuantizationType) -> np.ndarray:
    """Encode a float array (numpy order) into the bytes of ``out_type`` with gguf-py's reference code.

    F32/F16 arrays come back as float arrays, BF16 and block types as uint8 byte arrays.
    """
    if out_type in (Q.I8, Q.I16, Q.I32, Q.I64, Q.F64):
        return data  # pass-through types keep their bytes
    try:
        return gguf.quants.quantize(data, out_type)
    except (gguf.QuantError, NotImplementedError) as e:
        raise InputError(f"cannot encode as {out_type.name}: {e}", tensor=name) from e
    except MemoryError as e:
        raise ResourceError(f"out of memory encoding {list(data.shape)} ({data.nbytes / 2**20:.1f} MiB) as "
                            f"{out_type.name}: {MEMORY_HINT}", tensor=name) from e


def meta_like(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(tuple(shape), dtype=dtype, device="meta")


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """Transforms run in the source precision when it is F16/F32, else in F32 (llama.cpp does the same,
    which makes e.g. Gemma's norm offset round identically)."""
    return dtype if dtype in (torch.float16, torch.float32) else torch.float32


def check_finite(name: str, data: torch.Tensor) -> None:
    """Refuse NaN/Inf. min/max propagate both and allocate nothing (20x faster than isfinite().all())."""
    if not data.is_floating_point() or data.numel() == 0:
        return
    lo, hi = torch.aminmax(data)
    if not (bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))):
        n_nan = int(torch.isnan(data).sum())
        n_inf = int(torch.isinf(data).sum())
        raise InputError(f"holds {n_nan} NaN and {n_inf} Inf values: the checkpoint is corrupt "
                         "(convert anyway with --no-check-finite)", tensor=name)
