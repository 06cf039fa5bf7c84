"""An F32/F16/BF16 GGUF (from any converter) as a :class:`~hqq2gguf.sources.base.Source`.

Every tensor keeps its name and shape; its metadata is copied through in order, with ``general.file_type``
(and the name, when overridden) replaced for the output.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import gguf
import torch

from hqq2gguf.options import ConvertOptions
from hqq2gguf.read.gguf_in import FLOAT_TYPES, PASS_THROUGH_TYPES, GgufInput
from hqq2gguf.sources.base import NameParts, Source, SourceStep, TensorOut, working_dtype

# Tensors llama.cpp never quantizes, by GGUF base name (1-D tensors and *_norm are handled by the rule).
_KEEP_F32 = re.compile(r"(^|\.)(ffn_gate_inp(_shexp)?|position_embd|token_types|ssm_conv1d)\.weight$")


@dataclass(frozen=True)
class GgufSource(Source):
    kind: ClassVar[str] = "gguf"
    gin: GgufInput
    model_name: str | None = None

    @classmethod
    def open(cls, gin: GgufInput, options: ConvertOptions) -> GgufSource:
        """``gin`` as ``options`` convert it (the weight type, ``general.file_type``, the name, checks)."""
        wanted = options.weight_type([q for n, q in gin.source_types.items()
                                      if len(gin.tensors[n].shape) >= 2 and q in FLOAT_TYPES])
        check_finite = options.check_finite
        steps = []
        for name, tensor in gin.tensors.items():
            src_type = gin.source_types[name]
            fixed = src_type if src_type in PASS_THROUGH_TYPES else None  # integer / F64 tensors pass through
            out = TensorOut(name, tensor.shape, keep_f32=bool(_KEEP_F32.search(name)), fixed_type=fixed)
            steps.append(SourceStep(name, (out,), tensor.load, _keep_name(name), check_finite))
        hparams = {f.name: f.contents() for f in gin.reader.fields.values() if not f.name.startswith("GGUF.")}
        return cls(gin.path, gin.arch, tuple(steps), hparams, wanted, options.file_type(wanted), gin,
                   options.model_name)

    def write_metadata(self, writer: gguf.GGUFWriter) -> NameParts:
        g = gguf.Keys.General
        u32, string = gguf.GGUFValueType.UINT32, gguf.GGUFValueType.STRING
        overrides = {g.FILE_TYPE: (int(self.file_type), u32), g.QUANTIZATION_VERSION: (gguf.GGML_QUANT_VERSION, u32)}
        if self.model_name:
            overrides[g.NAME] = (self.model_name, string)
        gin = self.gin
        gin.copy_metadata(writer, overrides)
        return NameParts(self.model_name or gin.field(g.NAME), gin.field(g.BASENAME), gin.field(g.FINETUNE),
                         gin.field(g.VERSION), gin.field(g.SIZE_LABEL))


def _keep_name(name: str) -> Callable[[torch.Tensor], list[tuple[str, torch.Tensor]]]:
    def transform(data: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        return [(name, data if not data.is_floating_point() else data.to(working_dtype(data.dtype)))]
    return transform
