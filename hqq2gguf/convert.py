"""The pipeline, top to bottom: read -> calibrate -> allocate -> plan -> encode -> write, one tensor in memory at
a time.

    source = open_source(input, options)            # read: validated, lazy; names, shapes, hyper-parameters
    with runnable_model(source, options) as runnable:   # calibrate: per-column importance for the solver (an
        importance = column_importance(source, options, runnable)   # imatrix, text llama.cpp reads, a proxy)
        allocation = allocate(source, options, importance, runnable)   # allocate (only with a byte budget):
                            # each matrix's type by its measured error x measured sensitivity, or None
    plan = make_plan(source, options, allocation.types())   # plan: every output tensor's type, known up front
    out = GgufFile.start(arch, plan)                # write: tensor infos, then the KV pairs
    out.write(path, each tensor: load -> transform -> encode_tensor -> bytes)
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hqq2gguf.allocate import Allocation, allocate, check_budget
from hqq2gguf.calibrate import Importance, column_importance
from hqq2gguf.encode import encode_tensor
from hqq2gguf.options import ConvertOptions, Device, OutType
from hqq2gguf.plan import Plan, make_plan
from hqq2gguf.read.hub import resolve_model
from hqq2gguf.sources import Source, open_source
from hqq2gguf.write import GgufFile, check_output_path, explicit_output, output_path, write_provenance

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConvertResult:
    path: Path
    """The output file; of a split output, its first part (what llama.cpp is given)."""
    n_tensors: int
    nbytes: int
    seconds: float
    parts: tuple[Path, ...] = ()
    """Every part of a split output, in order (empty for one file)."""
    allocation: Allocation | None = None
    """The types chosen within a byte budget (``--target-size``, ``--target-bpw``, ``--allocate``), or None."""


def convert(input_path: Path | str, options: ConvertOptions = ConvertOptions()) -> ConvertResult:
    """Convert an HF directory (or Hub id) or a GGUF file (or split set) into one GGUF file, or a split set when
    ``options`` ask for one; return where it was written."""
    start = time.perf_counter()
    resolved = resolve_model(input_path, options.revision)
    input_path = resolved.path
    if resolved.hub_id is not None and options.model_name is None:  # named after the id, as llama.cpp's --remote
        options = dataclasses.replace(options, model_name=resolved.hub_id)
    if options.recipe is not None and options.device is not Device.TORCH:  # before any reading: fail early
        from hqq2gguf.cuda import resolve_device

        options = dataclasses.replace(options, device=resolve_device(options.device))
    source = open_source(input_path, options)
    explicit = explicit_output(options)
    if explicit is not None and not out_split(options):  # refused before calibration, not after it
        check_output_path(explicit, force=options.force)
    check_budget(source, options)  # an unreachable byte budget, too
    with contextlib.ExitStack() as held:  # the calibration's covariances (files) until the last tensor is encoded
        with runnable_model(source, options, needed=options.calibrated or options.allocating) as runnable:
            importance = column_importance(source, options, runnable)
            held.callback(importance.covariances.close)
            allocation = allocate(source, options, importance, runnable)
        plan = make_plan(source, options, allocation.types() if allocation is not None else None)

        out = GgufFile.start(source.arch, plan, split_max_tensors=options.split_max_tensors,
                             split_max_size=options.split_max_size)
        names = source.write_metadata(out.writer)
        write_provenance(out.writer, source.kind, options, plan, importance.provenance,
                         allocation.provenance() if allocation is not None else None)
        path = output_path(input_path, options, names)
        paths = out.paths(path)
        for part in paths:
            check_output_path(part, force=options.force)
        out.write(path, _encoded(source, plan, options, importance), force=options.force)
        seconds = time.perf_counter() - start
        logger.info("wrote %s in %.1f s", paths[0] if len(paths) == 1 else f"{len(paths)} parts {paths[0]}...",
                    seconds)
    return ConvertResult(paths[0], len(plan.tensors), sum(p.stat().st_size for p in paths), seconds,
                         tuple(paths) if len(paths) > 1 else (), allocation)


def out_split(options: ConvertOptions) -> bool:
    """Whether the output is a split set (its parts' names are known only once the plan is)."""
    return bool(options.split_max_size or options.split_max_tensors)


@contextlib.contextmanager
def runnable_model(source: Source, options: ConvertOptions, *, needed: bool | None = None) -> Iterator[Path | None]:
    """A GGUF of ``source`` that llama.cpp can run, while the block lasts, when calibration needs one (or
    ``needed``): a GGUF input as it is; an HF directory converted to a temporary F16 GGUF, deleted after."""
    if not (options.calibrated if needed is None else needed):
        yield None
        return
    if source.kind == "gguf":
        yield source.path
        return
    with tempfile.TemporaryDirectory(prefix="hqq2gguf-calibration-") as tmp:
        logger.info("calibration: converting %s to a temporary F16 GGUF for llama.cpp", source.path)
        plain = ConvertOptions(outtype=OutType.F16, output=Path(tmp) / "model-f16.gguf",
                               allow_pickle=options.allow_pickle, check_finite=options.check_finite)
        yield convert(source.path, plain).path


def _encoded(source: Source, plan: Plan, options: ConvertOptions,
             importance: Importance) -> Iterator[tuple[str, np.ndarray]]:
    """Each planned tensor's bytes, in plan order: one source step loaded, transformed and encoded at a time,
    the next step read (and checked) on a helper thread meanwhile, so that reading overlaps solving. Memory:
    the step being encoded and the one being read; an error of the next step surfaces when it is reached."""
    planned = iter(plan.tensors)
    steps = iter(source.steps)
    with ThreadPoolExecutor(1, thread_name_prefix="hqq-read") as reader:

        def read_next() -> Future | None:
            step = next(steps, None)
            return None if step is None else reader.submit(step.tensors)

        pending = read_next()
        while pending is not None:
            results = pending.result()
            pending = read_next()
            while results:
                name, tensor = results.pop(0)
                out = next(planned)
                yield name, encode_tensor(out, tensor, options, importance.for_tensor(name, out.shape),
                                          importance.covariance_for(name, out.shape))
                logger.debug("%-40s %-8s -> %-5s %s", name, str(tensor.dtype).removeprefix("torch."),
                             out.out_type.name, list(reversed(out.shape)))
                del tensor  # nothing of this step survives into the next
