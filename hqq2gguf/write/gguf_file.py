"""The GGUF write sequence, as an explicit state machine:

    writer = GgufFile.start(arch, plan)          # tensor infos known up front (the parameter count needs them)
    ... metadata into writer.writer ...          # sources' KV pairs, then hqq2gguf's provenance
    writer.write(path, tensors, force=...)       # header, KV, tensor infos, then each tensor's bytes as it comes

``write`` streams: one encoded tensor in memory at a time, under a temporary name renamed into place only
when complete (:func:`~hqq2gguf.write.atomic.atomic_outputs`). With a split limit (llama.cpp's converter's
``--split-max-size`` / ``--split-max-tensors``, done by gguf-py's own writer) the output is a set
``<name>-00001-of-0000N.gguf`` ...: split.* keys in every part, the metadata in the first; the whole set is
renamed into place at the end, or none of it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from hqq2gguf.errors import InputError
from hqq2gguf.plan import Plan
from hqq2gguf.progress import Progress
from hqq2gguf.write.atomic import atomic_outputs

logger = logging.getLogger(__name__)


class _PartsWriter(gguf.GGUFWriter):
    """gguf-py's writer, its files (one, or each part of a split) opened under the temporary names given."""

    temp_names: list[Path] | None = None

    def format_shard_names(self, path: Path) -> list[Path]:
        names = super().format_shard_names(path)
        return names if self.temp_names is None else list(self.temp_names)


@dataclass(frozen=True)
class GgufFile:
    """A GGUF file being made: the writer (KV pairs may still be added) and the plan of its tensors."""

    writer: _PartsWriter
    plan: Plan

    @classmethod
    def start(cls, arch: str, plan: Plan, *, split_max_tensors: int = 0, split_max_size: int = 0) -> GgufFile:
        """``split_max_*``: llama.cpp's converter's limits per part (0: none); gguf-py's writer splits."""
        writer = _PartsWriter(path=None, arch=arch, split_max_tensors=split_max_tensors,
                              split_max_size=split_max_size)
        for t in plan.tensors:
            writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=t.out_type)
        return cls(writer, plan)

    def paths(self, path: Path) -> list[Path]:
        """The files ``path`` becomes: itself, or the parts of a split (llama.cpp's names, first part first)."""
        return gguf.GGUFWriter.format_shard_names(self.writer, path)

    def write(self, path: Path, tensors: Iterable[tuple[str, np.ndarray]], *, force: bool) -> None:
        """Header, KV pairs, tensor infos, then ``tensors`` ((name, bytes) in plan order) as they come."""
        total = self.plan.nbytes
        logger.info("writing %s: %d tensors, %.1f MiB", path, len(self.plan.tensors), total / 2**20)
        # Test hook: a pause per tensor so that interrupt tests can hit the middle of a write.
        pause_s = float(os.environ.get("HQQ2GGUF_TEST_SLOW_WRITE_S", "0"))
        with atomic_outputs(self.paths(path), force=force) as tmps:
            self.writer.temp_names = tmps
            try:
                self._write_all(path, tensors, pause_s)
            finally:
                self.writer.close()

    def _write_all(self, path: Path, tensors: Iterable[tuple[str, np.ndarray]], pause_s: float) -> None:
        self.writer.write_header_to_file(path=path)
        self.writer.write_kv_data_to_file()
        self.writer.write_ti_data_to_file()
        expected = iter(self.plan.tensors)
        with Progress(self.plan.nbytes, "convert") as progress:
            for name, data in tensors:
                planned = next(expected, None)
                if planned is None or planned.name != name:  # a bug upstream, never bad input
                    raise InputError(f"tensor {name!r} comes out of the plan's order (internal error)")
                self.writer.write_tensor_data(data)
                progress.update(planned.nbytes, name)
                if pause_s:
                    time.sleep(pause_s)
        if next(expected, None) is not None:
            raise InputError("fewer tensors than planned (internal error)")
