"""hqq2gguf's own metadata keys (docs/metadata.md): what made the file. No timestamps or paths, so the same
input and options give the same bytes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import gguf

from hqq2gguf import PROVENANCE_PREFIX, __version__
from hqq2gguf.options import ConvertOptions
from hqq2gguf.plan import Plan


def write_provenance(writer: gguf.GGUFWriter, source_kind: str, options: ConvertOptions, plan: Plan,
                     calibration: Mapping[str, object] | None = None,
                     allocation: Mapping[str, str | Sequence[str] | Sequence[float]] | None = None) -> None:
    """``calibration``: what the calibration stage records (kind, token count, seed, sampling settings, the
    text's SHA-256; never a path). ``allocation``: the allocation stage's keys (``hqq2gguf.allocation*``), each
    a string or an array, written as they are."""
    types = plan.types()
    writer.add_string(PROVENANCE_PREFIX + "version", __version__)
    writer.add_string(PROVENANCE_PREFIX + "source_format", source_kind)
    recorded: dict[str, object] = {"outtype": options.outtype.value, "allow_requantize": options.allow_requantize}
    if options.recipe is not None:
        q = options.quant
        recorded |= {"type": options.recipe.value, "solver": dataclasses.asdict(options.solver),
                     "importance": "imatrix" if options.imatrix is not None else options.importance.value,
                     "imatrix_sha256": sha256_file(options.imatrix) if options.imatrix is not None else None,
                     "pure": q.pure, "leave_output_tensor": q.leave_output_tensor,
                     "output_tensor_type": q.output_tensor_type.name if q.output_tensor_type else None,
                     "token_embedding_type": q.token_embedding_type.name if q.token_embedding_type else None,
                     "tensor_types": [f"{p}={t.name}" for p, t in q.tensor_types]}
        if calibration is not None:
            recorded["calibration"] = dict(calibration)
    writer.add_string(PROVENANCE_PREFIX + "options", json.dumps(recorded, sort_keys=True, default=str))
    writer.add_array(PROVENANCE_PREFIX + "tensor_types", types)
    for key, value in (allocation or {}).items():
        if isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_array(key, list(value))
    if any(gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[t]][0] > 1 for t in types):
        writer.add_quantized_by("hqq2gguf")


def sha256_file(path: Path) -> str:
    """A file's content hash (e.g. the imatrix's): which data made the output, without recording a path."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
