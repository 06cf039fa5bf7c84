"""GGUF input from any converter: validated, metadata copied through, tensors read one at a time.

Float tensors (F32/F16/BF16) pass through or are re-encoded; an already-quantized input is accepted only
with ``allow_requantize`` (it is dequantized first: quantizing twice loses more than once).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from hqq2gguf import PROVENANCE_PREFIX
from hqq2gguf.errors import InputError, OptionError
from hqq2gguf.read.gguf_reader import GgufReader, GgufTensor
from hqq2gguf.read.gguf_split import SPLIT_KEYS, check_set, split_parts
from hqq2gguf.read.hf_dir import SourceTensor

logger = logging.getLogger(__name__)

Q = gguf.GGMLQuantizationType
FLOAT_TYPES = (Q.F32, Q.F16, Q.BF16)
PASS_THROUGH_TYPES = (Q.I8, Q.I16, Q.I32, Q.I64, Q.F64)
# Keys written for this output, never copied from the input: the writer's own first key, and what a
# previous hqq2gguf run said about itself.
_REWRITTEN_KEYS = {gguf.Keys.General.ARCHITECTURE, gguf.Keys.General.QUANTIZED_BY}


@dataclass
class GgufInput:
    path: Path
    reader: GgufReader
    arch: str
    tensors: dict[str, SourceTensor]
    source_types: dict[str, gguf.GGMLQuantizationType]
    parts: tuple[Path, ...] = ()
    """Every file of a split input, the first (``path``) included; empty for one file."""

    def copy_metadata(self, writer: gguf.GGUFWriter, overrides: dict[str, tuple[Any, gguf.GGUFValueType]]) -> None:
        """Copy every KV pair in order, replacing the values of ``overrides`` in place (new keys go last).

        Skipped: the virtual GGUF.* fields, general.architecture (the writer's own first key), the keys
        an earlier hqq2gguf run wrote about itself (rewritten for this output), and a split input's split.*
        keys (the output's own split, if any, writes its own).
        """
        pending = dict(overrides)
        for field in self.reader.fields.values():
            name = field.name
            if name.startswith(("GGUF.", PROVENANCE_PREFIX)) or name in _REWRITTEN_KEYS or name in SPLIT_KEYS:
                continue
            if name in pending:
                value, vtype = pending.pop(name)
                writer.add_key_value(name, value, vtype)
                continue
            vtype = field.types[0]
            sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(name, field.contents(), vtype, sub_type=sub_type)
        for name, (value, vtype) in pending.items():
            writer.add_key_value(name, value, vtype)

    def field(self, key: str) -> Any:
        f = self.reader.get_field(key)
        return f.contents() if f is not None else None


def open_gguf(path: Path, *, allow_requantize: bool) -> GgufInput:
    """A GGUF file, or the split set whose first part is ``path`` (every part validated before use)."""
    reader = _read(path)
    parts = split_parts(path, reader)  # first: a later part of a split has no architecture key
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    if arch is None:
        raise InputError("GGUF has no general.architecture key", file=path)
    readers = [reader, *(_read(part) for part in parts[1:])]
    check_set(reader, readers, parts)
    tensors: dict[str, SourceTensor] = {}
    types: dict[str, gguf.GGMLQuantizationType] = {}
    quantized = []
    for part, part_reader in zip(parts, readers):
        for t in part_reader.tensors:
            qtype = Q(t.tensor_type)
            if qtype not in FLOAT_TYPES and qtype not in PASS_THROUGH_TYPES:
                quantized.append(t.name)
            shape = tuple(int(n) for n in reversed(t.shape.tolist()))  # ggml ne0-first -> numpy order
            types[t.name] = qtype
            tensors[t.name] = SourceTensor(t.name, shape, _torch_dtype(qtype), part, _loader(part, t, qtype, shape))
    if quantized and not allow_requantize:
        qnames = sorted({types[n].name for n in quantized})
        raise OptionError(
            f"input is already quantized ({len(quantized)} tensors of type {', '.join(qnames)}); quantizing "
            "again compounds the error. Start from an F32/F16/BF16 GGUF or the HF checkpoint, or pass "
            "--allow-requantize to dequantize and proceed anyway", file=path,
        )
    if quantized:
        logger.warning("%s: requantizing %d already-quantized tensors (dequantized first): quality will be "
                       "worse than quantizing the original weights", path, len(quantized))
    return GgufInput(path, reader, str(arch.contents()), tensors, types, tuple(parts) if len(parts) > 1 else ())


def _read(path: Path) -> GgufReader:
    """Metadata and tensor table read with bounded reads (hqq2gguf.read.gguf_header); tensors memory-mapped."""
    if not path.is_file():
        raise InputError("no such file", file=path)
    try:
        return GgufReader(path)
    except (ValueError, OSError, MemoryError) as e:
        raise InputError(f"corrupt or truncated GGUF: {e}", file=path) from e


def _torch_dtype(qtype: gguf.GGMLQuantizationType) -> torch.dtype:
    return {Q.F16: torch.float16, Q.BF16: torch.bfloat16, Q.I8: torch.int8, Q.I16: torch.int16,
            Q.I32: torch.int32, Q.I64: torch.int64, Q.F64: torch.float64}.get(qtype, torch.float32)


def _loader(path: Path, t: GgufTensor, qtype: gguf.GGMLQuantizationType, shape: tuple[int, ...]):
    def load() -> torch.Tensor:
        data = np.asarray(t.data)
        if qtype == Q.BF16:
            return torch.from_numpy(data.view(np.uint16).copy()).view(torch.bfloat16).reshape(shape)
        if qtype in (Q.F32, Q.F16) or qtype in PASS_THROUGH_TYPES:
            return torch.from_numpy(data.copy()).reshape(shape)
        try:
            return torch.from_numpy(gguf.quants.dequantize(data, qtype).copy()).reshape(shape)
        except NotImplementedError as e:
            raise InputError(f"cannot dequantize type {qtype.name}: {e}", file=path, tensor=t.name) from e

    return load
