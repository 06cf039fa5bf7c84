"""The pipeline: read -> plan -> write, one tensor in memory at a time.

    source = open_source(input)                  # read/: validated, lazy
    writer.add_tensor_info(...) for the plan     # plan: names, shapes, types known up front
    source.write_metadata(writer)                # models/ + vocab/: KV pairs
    header, KV, tensor infos, then each tensor: load -> transform -> encode -> write -> free
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch

from hqq2gguf import PROVENANCE_PREFIX, __version__
from hqq2gguf.cuda import Device, resolve_device
from hqq2gguf.errors import MEMORY_HINT, InputError, OutputError, ResourceError
from hqq2gguf.importance import (
    Importance,
    ImportanceSource,
    derived_importance,
    derived_inputs,
    needed_norms,
    norm_importance,
    read_imatrix,
)
from hqq2gguf.options import ConvertOptions
from hqq2gguf.plan import PlannedTensor, check_finite, encode
from hqq2gguf.progress import Progress
from hqq2gguf.quantize import encode_solved, is_solved
from hqq2gguf.sources import NameParts, Source, open_source
from hqq2gguf.write.atomic import atomic_output, check_output_path

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class ConvertResult:
    path: Path
    n_tensors: int
    nbytes: int
    seconds: float


def convert(input_path: Path | str, options: ConvertOptions = ConvertOptions()) -> ConvertResult:
    """Convert an HF directory or a GGUF file into one GGUF file; return where it was written."""
    start = time.perf_counter()
    if options.recipe is not None and options.device is not Device.CPU:  # before any reading: fail early
        options = dataclasses.replace(options, device=resolve_device(options.device))
    source = open_source(Path(input_path), options)
    planned = [out for step in source.steps for out in step.outputs]
    _check_unique(source, planned)
    importance = _importance(source, options, planned)

    writer = gguf.GGUFWriter(path=None, arch=source.arch)
    for out in planned:
        writer.add_tensor_info(out.name, out.shape, np.dtype(np.float32), out.nbytes, raw_dtype=out.out_type)
    names = source.write_metadata(writer, options)
    _write_provenance(writer, source, options, planned)

    path = output_path(Path(input_path), options, names)
    check_output_path(path, force=options.force)
    total = sum(out.nbytes for out in planned)
    logger.info("writing %s: %d tensors, %.1f MiB", path, len(planned), total / 2**20)
    with atomic_output(path, force=options.force) as tmp:
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        _write_tensors(writer, source, options, total, importance)
        writer.close()
    seconds = time.perf_counter() - start
    logger.info("wrote %s in %.1f s", path, seconds)
    return ConvertResult(path, len(planned), path.stat().st_size, seconds)


def _check_unique(source: Source, planned: list[PlannedTensor]) -> None:
    seen: set[str] = set()
    for out in planned:
        if out.name in seen:
            raise InputError(f"two input tensors map to the same GGUF tensor {out.name!r}", file=source.path)
        seen.add(out.name)


def _importance(source: Source, options: ConvertOptions, planned: list[PlannedTensor]) -> Importance:
    """Column importance for the solver: the imatrix file, the norms' data-free proxy, or none.

    Checked before anything is written: every imatrix entry naming a planned tensor must fit it, and an
    imatrix naming none of them was made for another model."""
    if options.recipe is None:
        return Importance()
    if options.imatrix is not None:
        imp = read_imatrix(options.imatrix)
        shapes = {out.name: out.shape for out in planned}
        matched = [name for name in imp.entries if name in shapes]
        if not matched:
            raise InputError(f"none of the imatrix's {len(imp)} entries names a tensor of {source.path}: it was "
                             "made for another model", file=options.imatrix)
        for name in matched:
            imp.for_tensor(name, shapes[name])
        logger.info("imatrix: %d of its %d entries used", len(matched), len(imp))
        return imp
    if options.importance is ImportanceSource.NONE:
        return Importance()
    names = [out.name for out in planned]
    norms = dict(_outputs(source, needed_norms(names)))
    if options.importance is ImportanceSource.NORMS:
        return norm_importance(names, norms)
    n_head = source.hparams.get(f"{source.arch}.attention.head_count", 0)
    n_head_kv = source.hparams.get(f"{source.arch}.attention.head_count_kv", n_head)
    if not (isinstance(n_head, int) and isinstance(n_head_kv, int)):  # per-layer head counts: not modelled
        n_head = n_head_kv = 0
    return derived_importance(names, norms, _outputs(source, derived_inputs(names)), n_head, n_head_kv)


def _outputs(source: Source, wanted: set[str]) -> Iterator[tuple[str, np.ndarray]]:
    """The transformed float32 tensors named in ``wanted``, loaded one step at a time (a pre-pass)."""
    for step in source.steps:
        if any(out.name in wanted for out in step.outputs):
            for name, t in step.transform(step.load()):
                if name in wanted:
                    yield name, t.to(torch.float32).numpy()


def _write_tensors(writer: gguf.GGUFWriter, source: Source, options: ConvertOptions, total: int,
                   importance: Importance) -> None:
    # Test hook: a pause per tensor so that interrupt tests can hit the middle of a write.
    pause_s = float(os.environ.get("HQQ2GGUF_TEST_SLOW_WRITE_S", "0"))
    with Progress(total, "convert") as progress:
        for step in source.steps:
            if pause_s:
                time.sleep(pause_s)
            data = step.load()
            if options.check_finite:
                check_finite(step.source, data)
            results = step.transform(data)
            del data
            if [name for name, _ in results] != [out.name for out in step.outputs]:
                raise InputError("tensor transform disagrees with the plan (internal error)", tensor=step.source)
            for out in step.outputs:
                name, tensor = results.pop(0)
                writer.write_tensor_data(_encode(name, tensor, out, options, importance))
                logger.debug("%-40s %-8s -> %-5s %s", name, str(tensor.dtype).removeprefix("torch."),
                             out.out_type.name, list(reversed(out.shape)))
                del tensor  # memory stays bounded by one tensor: nothing survives into the next step
                progress.update(out.nbytes, name)


def _encode(name: str, tensor: torch.Tensor, out: PlannedTensor, options: ConvertOptions,
            importance: Importance) -> np.ndarray:
    """Float tensor -> output bytes: the HQQ solver for block types of a recipe, gguf-py's reference
    encoding otherwise (which keeps --outtype q8_0 identical to llama.cpp's converter)."""
    if tuple(tensor.shape) != out.shape:
        raise InputError(f"shape {tuple(tensor.shape)} differs from the planned {out.shape} (internal error)",
                         tensor=name)
    array = tensor.contiguous().numpy()
    if options.recipe is not None and is_solved(out.out_type):
        try:
            encoded = encode_solved(name, array, out.out_type, options.solver, importance.for_tensor(name, out.shape),
                                    options.device)
        except MemoryError as e:
            raise ResourceError(f"out of memory solving {list(array.shape)} ({array.nbytes / 2**20:.1f} MiB) as "
                                f"{out.out_type.name}: {MEMORY_HINT}", tensor=name) from e
    else:
        encoded = encode(name, array, out.out_type)
    if encoded.nbytes != out.nbytes:
        raise InputError(f"encoded {encoded.nbytes} bytes, planned {out.nbytes} (internal error)", tensor=name)
    return encoded


def _write_provenance(writer: gguf.GGUFWriter, source: Source, options: ConvertOptions,
                      planned: list[PlannedTensor]) -> None:
    """Our own keys, namespaced (docs/metadata.md). No timestamps or paths: same input -> same bytes."""
    types = sorted({out.out_type.name for out in planned})
    writer.add_string(PROVENANCE_PREFIX + "version", __version__)
    writer.add_string(PROVENANCE_PREFIX + "source_format", source.kind)
    recorded: dict[str, object] = {"outtype": options.outtype.value, "allow_requantize": options.allow_requantize}
    if options.recipe is not None:
        q = options.quant
        recorded |= {"type": options.recipe.value, "solver": dataclasses.asdict(options.solver),
                     "importance": "imatrix" if options.imatrix is not None else options.importance.value,
                     "imatrix_sha256": _sha256(options.imatrix) if options.imatrix is not None else None,
                     "pure": q.pure, "leave_output_tensor": q.leave_output_tensor,
                     "output_tensor_type": q.output_tensor_type.name if q.output_tensor_type else None,
                     "token_embedding_type": q.token_embedding_type.name if q.token_embedding_type else None,
                     "tensor_types": [f"{p}={t.name}" for p, t in q.tensor_types]}
    writer.add_string(PROVENANCE_PREFIX + "options", json.dumps(recorded, sort_keys=True, default=str))
    writer.add_array(PROVENANCE_PREFIX + "tensor_types", types)
    if any(gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[t]][0] > 1 for t in types):
        writer.add_quantized_by("hqq2gguf")


def _sha256(path: Path) -> str:
    """The imatrix's content hash: which importance data made the file, without recording a path."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def output_path(input_path: Path, options: ConvertOptions, names: NameParts) -> Path:
    """``-o FILE`` as given; ``-o DIR`` or none: the GGUF naming convention, in DIR or the current dir."""
    if options.output is not None and not options.output.is_dir():
        if options.output.suffix != ".gguf":
            raise OutputError("output file name must end in .gguf (or give an existing directory)",
                              file=options.output)
        return options.output
    directory = options.output if options.output is not None else Path.cwd()
    stem = gguf.naming_convention(names.name or input_path.stem, names.basename, names.finetune, names.version,
                                  names.size_label, options.label)
    return directory / f"{safe_file_stem(stem)}.gguf"


MAX_STEM_BYTES = 200  # file systems cap a name at 255 bytes; leave room for ".gguf" and the temporary name


def safe_file_stem(stem: str) -> str:
    """Metadata is not a path: one safe file-name component whatever the model card or GGUF says
    (no separators, no leading dot, no "..", at most MAX_STEM_BYTES bytes of UTF-8)."""
    safe = "".join(c if c.isalnum() or c in "-_.+" else "-" for c in stem).strip(".-")
    safe = safe.encode("utf-8")[:MAX_STEM_BYTES].decode("utf-8", errors="ignore").rstrip(".-")
    return safe or "model"
