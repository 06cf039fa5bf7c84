"""Turn an input (HF directory or GGUF file) into a plan and its metadata writer.

Each input kind yields a :class:`Source`: the GGUF architecture name, the ordered plan steps, and a
function that writes the KV metadata once the tensor infos are known (the parameter count feeds
``general.size_label``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import torch

from hqq2gguf.errors import Hqq2GgufError, InputError
from hqq2gguf.models import Architecture, architecture_for
from hqq2gguf.options import FILE_TYPES, ConvertOptions, OutType
from hqq2gguf.plan import PlannedTensor, PlanStep, meta_like, output_type, working_dtype
from hqq2gguf.quantize import apply_recipe, hparams_kv
from hqq2gguf.read.gguf_in import FLOAT_TYPES, PASS_THROUGH_TYPES, GgufInput, open_gguf
from hqq2gguf.read.hf_dir import HfModel, open_hf_dir
from hqq2gguf.vocab.common import check_tokenizer_present

logger = logging.getLogger(__name__)


@dataclass
class NameParts:
    """What the GGUF file-naming convention needs."""

    name: str | None
    basename: str | None
    finetune: str | None
    version: str | None
    size_label: str | None


@dataclass
class Source:
    kind: str  # "hf" or "gguf"
    path: Path
    arch: str
    steps: list[PlanStep]
    write_metadata: Callable[[gguf.GGUFWriter, ConvertOptions], NameParts]
    hparams: dict = field(default_factory=dict)
    """The architecture's hyper-parameter KV pairs (``{arch}.attention.head_count`` ...), when quantizing."""


def open_source(path: Path, options: ConvertOptions) -> Source:
    if path.is_dir():
        return _hf_source(open_hf_dir(path, allow_pickle=options.allow_pickle), options)
    if not path.exists():
        raise InputError("no such file or directory", file=path)
    if path.suffix == ".safetensors" or path.name == "config.json":
        raise InputError("give the model directory (with config.json and the safetensors), not one file", file=path)
    return _gguf_source(open_gguf(path, allow_requantize=options.allow_requantize), options)


# --- Hugging Face directory -----------------------------------------------------------------------

def _hf_source(model: HfModel, options: ConvertOptions) -> Source:
    arch = architecture_for(model.config, model.path)
    check_tokenizer_present(model.path)
    wanted = _wanted_type(options, (_LOSSLESS.get(t.dtype, gguf.GGMLQuantizationType.F32)
                                    for t in model.tensors.values() if len(t.shape) >= 2))
    steps = [_hf_step(arch, name, load, wanted, generated=True) for name, load in arch.extra_tensors()]
    for hf_name, tensor in model.tensors.items():
        name = arch.filter_tensor(hf_name)
        if name is None:
            continue
        steps.append(_hf_step(arch, name, tensor.load, wanted, dtype=tensor.dtype, shape=tensor.shape,
                              file=tensor.file))

    kv = {}
    if options.recipe is not None:
        kv = hparams_kv(arch.arch_name, arch.set_gguf_parameters)
        apply_recipe(steps, kv, options.recipe, options.quant)

    def write_metadata(writer: gguf.GGUFWriter, opts: ConvertOptions) -> NameParts:
        return _write_hf_metadata(writer, model, arch, opts, wanted)

    return Source("hf", model.path, arch.arch_name, steps, write_metadata, kv)


_LOSSLESS = {torch.bfloat16: gguf.GGMLQuantizationType.BF16, torch.float16: gguf.GGMLQuantizationType.F16}


def _wanted_type(options: ConvertOptions,
                 matrix_types: Iterator[gguf.GGMLQuantizationType]) -> gguf.GGMLQuantizationType:
    """The requested weight type; for ``auto`` the input's own (lossless): the first matrix's type."""
    if options.outtype is not OutType.AUTO:
        return options.outtype.tensor_type
    return next(matrix_types, gguf.GGMLQuantizationType.F16)


def _file_type(options: ConvertOptions, wanted: gguf.GGMLQuantizationType) -> gguf.LlamaFileType:
    """general.file_type: the recipe's, or that of a plain conversion to ``wanted``."""
    return options.recipe.file_type if options.recipe is not None else FILE_TYPES[wanted]


def _bid(name: str) -> int | None:
    return next((int(part) for part in name.split(".") if part.isdecimal()), None)


def _hf_step(arch: Architecture, name: str, load: Callable[[], torch.Tensor], wanted: gguf.GGMLQuantizationType,
             *, dtype: torch.dtype | None = None, shape: tuple[int, ...] | None = None,
             generated: bool = False, file: Path | None = None) -> PlanStep:
    """Plan one input tensor: its outputs' names, shapes (checked against config.json) and types."""
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
        n_dims = out.dim()
        keep_f32 = arch.force_f32(new_name, bid)
        ne0 = int(out.shape[-1]) if n_dims else 1
        outputs.append(PlannedTensor(new_name, tuple(int(d) for d in out.shape),
                                     output_type(new_name, n_dims, wanted, keep_f32=keep_f32, ne0=ne0)))
    return PlanStep(source=name, load=load, outputs=outputs, transform=transform)


def _write_hf_metadata(writer: gguf.GGUFWriter, model: HfModel, arch: Architecture, options: ConvertOptions,
                       wanted: gguf.GGMLQuantizationType) -> NameParts:
    arch.set_early_gguf_parameters(writer)  # keys llama.cpp writes while preparing tensors (Phi-3 attn_factor)
    writer.add_type(gguf.GGUFType.MODEL)
    total, shared, expert, n_expert = writer.get_total_parameter_count()
    meta = gguf.Metadata.load(None, model.path, options.model_name, total)
    if meta.name is None:
        meta.name = model.path.name
    if meta.size_label is None and total > 0:
        meta.size_label = gguf.size_label(total, shared, expert, n_expert)
    meta.set_gguf_meta_model(writer)
    arch.file_type = _file_type(options, wanted)
    arch.set_gguf_parameters(writer)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    arch.set_vocab(writer)
    return NameParts(meta.name, meta.basename, meta.finetune, meta.version, meta.size_label)


# --- GGUF file --------------------------------------------------------------------------------------

# Tensors llama.cpp never quantizes, by GGUF base name (1-D tensors and *_norm are handled by the rule).
_KEEP_F32 = re.compile(r"(^|\.)(ffn_gate_inp(_shexp)?|position_embd|token_types|ssm_conv1d)\.weight$")


def _gguf_source(gin: GgufInput, options: ConvertOptions) -> Source:
    wanted = _wanted_type(options, (q for n, q in gin.source_types.items()
                                    if len(gin.tensors[n].shape) >= 2 and q in FLOAT_TYPES))
    steps = []
    for name, tensor in gin.tensors.items():
        src_type = gin.source_types[name]
        if src_type in PASS_THROUGH_TYPES:
            out_type = src_type  # integer / F64 tensors pass through unchanged
        else:
            keep_f32 = bool(_KEEP_F32.search(name))
            out_type = output_type(name, len(tensor.shape), wanted, keep_f32=keep_f32, ne0=tensor.shape[-1])
        planned = PlannedTensor(name, tensor.shape, out_type)
        steps.append(PlanStep(source=name, load=tensor.load, outputs=[planned],
                              transform=lambda data, n=name: [(n, data if not data.is_floating_point()
                                                               else data.to(working_dtype(data.dtype)))]))

    kv = {}
    if options.recipe is not None:
        kv = {f.name: f.contents() for f in gin.reader.fields.values() if not f.name.startswith("GGUF.")}
        apply_recipe(steps, kv, options.recipe, options.quant)

    def write_metadata(writer: gguf.GGUFWriter, opts: ConvertOptions) -> NameParts:
        g = gguf.Keys.General
        u32, string = gguf.GGUFValueType.UINT32, gguf.GGUFValueType.STRING
        overrides = {g.FILE_TYPE: (int(_file_type(opts, wanted)), u32),
                     g.QUANTIZATION_VERSION: (gguf.GGML_QUANT_VERSION, u32)}
        if opts.model_name:
            overrides[g.NAME] = (opts.model_name, string)
        gin.copy_metadata(writer, overrides)
        return NameParts(opts.model_name or gin.field(g.NAME), gin.field(g.BASENAME), gin.field(g.FINETUNE),
                         gin.field(g.VERSION), gin.field(g.SIZE_LABEL))

    return Source("gguf", gin.path, gin.arch, steps, write_metadata, kv)
