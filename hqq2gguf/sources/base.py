"""What every input kind gives the pipeline: an immutable :class:`Source`.

A source knows, before reading any tensor data, every output tensor's GGUF name and shape (the transforms
run on ``meta`` tensors), the architecture's hyper-parameter keys (computed once) and how to write the
metadata. It chooses no types: that is the planning stage's job (:mod:`hqq2gguf.plan`).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import gguf
import torch

from hqq2gguf.errors import InputError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NameParts:
    """What the GGUF file-naming convention needs."""

    name: str | None
    basename: str | None
    finetune: str | None
    version: str | None
    size_label: str | None


@dataclass(frozen=True)
class TensorOut:
    """One output tensor as the input defines it, before a type is chosen."""

    name: str
    shape: tuple[int, ...]  # numpy order: the last axis is ggml's ne0 (the blocked, contiguous one)
    keep_f32: bool = False
    """llama.cpp keeps it F32 whatever the requested type (beyond the 1-D and ``*_norm`` rule)."""
    fixed_type: gguf.GGMLQuantizationType | None = None
    """Written in this type whatever is requested (a GGUF's integer and F64 tensors pass through)."""


Transform = Callable[[torch.Tensor], Sequence[tuple[str, torch.Tensor]]]


@dataclass(frozen=True)
class SourceStep:
    """One input tensor (or one generated from hyper-parameters) and the output tensors made from it."""

    source: str  # the input's tensor name, for messages
    outputs: tuple[TensorOut, ...]
    load: Callable[[], torch.Tensor] = field(repr=False)
    transform: Transform = field(repr=False)
    check_finite: bool = True

    def tensors(self) -> list[tuple[str, torch.Tensor]]:
        """Load, check and transform: the output tensors (GGUF name, data), in the order of ``outputs``."""
        data = self.load()
        if self.check_finite:
            check_finite(self.source, data)
        results = list(self.transform(data))
        if [name for name, _ in results] != [out.name for out in self.outputs]:
            raise InputError("tensor transform disagrees with the plan (internal error)", tensor=self.source)
        return results


@dataclass(frozen=True)
class Source(ABC):
    """A validated, lazily read input: what the later stages need of it and nothing else."""

    kind: ClassVar[str]  # "hf" or "gguf", recorded in the output's provenance
    path: Path
    arch: str
    steps: tuple[SourceStep, ...]
    hparams: Mapping[str, Any]
    """The hyper-parameter KV pairs (``{arch}.attention.head_count`` ...), computed once."""
    weight_type: gguf.GGMLQuantizationType
    """The type a plain conversion gives the weight matrices (``--outtype``; for ``auto`` the input's own)."""
    file_type: gguf.LlamaFileType
    """``general.file_type`` of the output."""

    @property
    def outputs(self) -> list[TensorOut]:
        return [out for step in self.steps for out in step.outputs]

    def tensors_named(self, wanted: Collection[str]) -> Iterator[tuple[str, torch.Tensor]]:
        """The transformed output tensors named in ``wanted``, in source order, read one step at a time (only
        the steps that hold one): a pre-pass over part of the model, memory bounded by one step."""
        for step in self.steps:
            if any(out.name in wanted for out in step.outputs):
                for name, tensor in step.tensors():
                    if name in wanted:
                        yield name, tensor

    @abstractmethod
    def write_metadata(self, writer: gguf.GGUFWriter) -> NameParts:
        """Every KV pair of the output but hqq2gguf's own, into ``writer`` (whose tensor infos are known:
        the parameter count feeds ``general.size_label``); the parts of the output file name."""


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
