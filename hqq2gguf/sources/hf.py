"""A Hugging Face model directory as a :class:`~hqq2gguf.sources.base.Source`.

config.json chooses the architecture (:mod:`hqq2gguf.models`), which maps every safetensors tensor to GGUF
names and layout; its transforms run on ``meta`` tensors here, so every output's name and shape is known
(and checked against config.json) before any data is read. The hyper-parameter keys are computed once, in
llama.cpp's order, and copied into the output when the metadata is written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import gguf
import torch

from hqq2gguf.errors import Hqq2GgufError, InputError
from hqq2gguf.models import Architecture, architecture_for
from hqq2gguf.options import ConvertOptions
from hqq2gguf.read.hf_dir import HfModel
from hqq2gguf.read.hub import snapshot_repo_id
from hqq2gguf.read.safetensors import check_weight_dtype
from hqq2gguf.sources.base import NameParts, Source, SourceStep, TensorOut, meta_like, working_dtype
from hqq2gguf.vocab.common import check_tokenizer_present

#: The lossless output type of a checkpoint dtype (F32 for the others).
LOSSLESS = {torch.bfloat16: gguf.GGMLQuantizationType.BF16, torch.float16: gguf.GGMLQuantizationType.F16}


@dataclass(frozen=True)
class HfSource(Source):
    kind: ClassVar[str] = "hf"
    model: HfModel
    architecture: Architecture
    kv: dict[str, gguf.GGUFValue]  # what architecture.set_gguf_parameters writes, in order, with types
    model_name: str | None = None

    @classmethod
    def open(cls, model: HfModel, options: ConvertOptions) -> HfSource:
        """``model`` as ``options`` convert it (the weight type, ``general.file_type``, the name, checks)."""
        wanted = options.weight_type([LOSSLESS.get(t.dtype, gguf.GGMLQuantizationType.F32)
                                      for t in model.tensors.values() if len(t.shape) >= 2])
        check_finite = options.check_finite
        arch = architecture_for(model.config, model.path, options.file_type(wanted))
        check_tokenizer_present(model.path)
        steps = [_step(arch, name, load, check_finite, generated=True) for name, load in arch.extra_tensors()]
        for hf_name, tensor in model.tensors.items():
            name = arch.filter_tensor(hf_name)  # drops the integer buffers llama.cpp's converter skips
            if name is not None:
                check_weight_dtype(tensor.dtype, file=tensor.file, tensor=hf_name)
                steps.append(_step(arch, name, tensor.load, check_finite, dtype=tensor.dtype, shape=tensor.shape,
                                   file=tensor.file))
        kv = _hparams_values(arch)
        return cls(model.path, arch.arch_name, tuple(steps), {key: v.value for key, v in kv.items()}, wanted,
                   options.file_type(wanted), model, arch, kv, options.model_name)

    def write_metadata(self, writer: gguf.GGUFWriter) -> NameParts:
        """llama.cpp's converter's key order: early keys, general.*, the hyper-parameters, the tokenizer."""
        arch = self.architecture
        arch.set_early_gguf_parameters(writer)  # keys llama.cpp writes while preparing tensors (Phi-3 attn_factor)
        writer.add_type(gguf.GGUFType.MODEL)
        total, shared, expert, n_expert = writer.get_total_parameter_count()
        meta = gguf.Metadata.load(None, self.path, self.model_name, total)
        if (repo_id := snapshot_repo_id(self.path)) is not None:  # a Hub snapshot: its directory is a commit
            _name_parts_from(meta, repo_id, self.path, total)
        if meta.name is None:
            meta.name = self.path.name
        if meta.size_label is None and total > 0:
            meta.size_label = gguf.size_label(total, shared, expert, n_expert)
        meta.set_gguf_meta_model(writer)
        for key, value in self.kv.items():
            if key != gguf.Keys.General.ARCHITECTURE:  # the writer's own first key
                writer.add_key_value(key, value.value, value.type, sub_type=value.sub_type)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        arch.set_vocab(writer)
        return NameParts(meta.name, meta.basename, meta.finetune, meta.version, meta.size_label)


def _name_parts_from(meta: gguf.Metadata, repo_id: str, path: Path, total: int) -> None:
    """The name parts gguf's heuristics find in a directory named after ``repo_id``'s name, rather than in the
    commit hash a Hub snapshot directory is named by (the same output as a download into ``<name>/``)."""
    named = gguf.Metadata.apply_metadata_heuristic(gguf.Metadata(), gguf.Metadata.load_model_card(path),
                                                   gguf.Metadata.load_hf_parameters(path),
                                                   Path(repo_id.rpartition("/")[2]), total)
    for part in ("organization", "basename", "finetune", "version", "size_label"):
        setattr(meta, part, getattr(named, part))
    if meta.name == path.name:
        meta.name = named.name


def _hparams_values(arch: Architecture) -> dict[str, gguf.GGUFValue]:
    """What ``arch.set_gguf_parameters`` writes, in order, with types, after general.architecture."""
    scratch = gguf.GGUFWriter(path=None, arch=arch.arch_name)
    arch.set_gguf_parameters(scratch)
    return dict(scratch.kv_data[0])


def _bid(name: str) -> int | None:
    return next((int(part) for part in name.split(".") if part.isdecimal()), None)


def _step(arch: Architecture, name: str, load: Callable[[], torch.Tensor], check_finite: bool, *,
          dtype: torch.dtype | None = None, shape: tuple[int, ...] | None = None, generated: bool = False,
          file: Path | None = None) -> SourceStep:
    """One input tensor: its outputs' names and shapes (checked against config.json), found on a meta tensor."""
    bid = _bid(name)

    def transform(data: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        data = data if generated else data.to(working_dtype(data.dtype))
        return list(arch.modify_tensors(data, name, bid)) if not generated else [(name, data)]

    probe = load() if generated else meta_like(shape or (), dtype or torch.float32)
    try:
        probed = transform(probe)
    except Hqq2GgufError as e:  # e.g. rows that cannot be split into heads: name where it happened
        if e.tensor is not None:
            raise
        raise type(e)(e.reason, file=e.file or file, tensor=name) from e
    except RuntimeError as e:  # a reshape of a tensor whose shape disagrees with the hyper-parameters
        raise InputError(f"shape {list(probe.shape)} cannot be converted: {e}", file=file, tensor=name) from e
    outputs = []
    for new_name, out in probed:
        if not generated and (implied := arch.shape_problem(new_name, tuple(out.shape))) is not None:
            raise InputError(f"shape {list(probe.shape)} disagrees with config.json, which implies {implied} "
                             f"for {new_name}", file=file, tensor=name)
        outputs.append(TensorOut(new_name, tuple(int(d) for d in out.shape), keep_f32=arch.force_f32(new_name, bid)))
    return SourceStep(name, tuple(outputs), load, transform, check_finite)
