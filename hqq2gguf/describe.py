"""Human-readable description of a GGUF file or a Hugging Face model directory (``hqq2gguf inspect``)."""

from __future__ import annotations

import collections
import math
from pathlib import Path
from typing import Iterator

import gguf

from hqq2gguf.read.gguf_header import GgufField
from hqq2gguf.read.gguf_in import open_gguf
from hqq2gguf.read.hf_dir import open_hf_dir

_MAX_VALUE_CHARS = 80


def describe(path: Path, *, tensors: bool = True) -> Iterator[str]:
    if path.is_dir():
        yield from _describe_hf(path, tensors)
    else:
        yield from _describe_gguf(path, tensors)


def _describe_gguf(path: Path, tensors: bool) -> Iterator[str]:
    gin = open_gguf(path, allow_requantize=True)
    reader = gin.reader
    yield f"{path}: GGUF v{gin.field('GGUF.version')}, architecture {gin.arch}, {path.stat().st_size:,} bytes"
    file_type = gin.field(gguf.Keys.General.FILE_TYPE)
    if file_type is not None:
        name = gguf.LlamaFileType(file_type).name if file_type in gguf.LlamaFileType._value2member_map_ else "?"
        yield f"file type: {name} ({file_type})"
    yield f"metadata ({sum(1 for k in reader.fields if not k.startswith('GGUF.'))} keys):"
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        yield f"  {key} = {_short(field)}"
    counts = collections.Counter(gguf.GGMLQuantizationType(t.tensor_type).name for t in reader.tensors)
    n_params = sum(int(t.n_elements) for t in reader.tensors)
    yield f"tensors: {len(reader.tensors)} ({n_params:,} parameters): " + ", ".join(
        f"{n} {k}" for k, n in sorted(counts.items()))
    if tensors:
        for t in reader.tensors:
            shape = "x".join(str(int(d)) for d in t.shape)
            yield f"  {t.name:<40} {gguf.GGMLQuantizationType(t.tensor_type).name:<6} {shape:<20} {int(t.n_bytes):>12,} B"


def _short(field: GgufField) -> str:
    value = field.contents()
    if isinstance(value, list):
        head = ", ".join(repr(v) for v in value[:5])
        return f"[{head}{', ...' if len(value) > 5 else ''}] ({len(value)} items)"
    text = repr(value)
    return text if len(text) <= _MAX_VALUE_CHARS else text[:_MAX_VALUE_CHARS] + f"... ({len(text)} chars)"


def _describe_hf(path: Path, tensors: bool) -> Iterator[str]:
    from hqq2gguf.models import supported_architectures

    model = open_hf_dir(path)
    supported = model.architecture in supported_architectures()
    n_params = sum(math.prod(t.shape) for t in model.tensors.values())
    dtypes = collections.Counter(str(t.dtype).removeprefix("torch.") for t in model.tensors.values())
    yield (f"{path}: Hugging Face model, {model.architecture} "
           f"({'supported' if supported else 'NOT supported: convert to GGUF with llama.cpp first'})")
    yield f"tensors: {len(model.tensors)} ({n_params:,} parameters): " + ", ".join(
        f"{n} {k}" for k, n in sorted(dtypes.items()))
    tok_files = [f for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "chat_template.jinja",
                             "chat_template.json") if (path / f).is_file()]
    yield f"tokenizer files: {', '.join(tok_files) or 'none'}"
    if tensors:
        for t in model.tensors.values():
            yield f"  {t.name:<56} {str(t.dtype).removeprefix('torch.'):<9} {list(t.shape)}"
