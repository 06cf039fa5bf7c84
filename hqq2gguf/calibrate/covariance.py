"""Input covariances of the weight matrices on the calibration text: ``mean x x^T`` of every row a matrix reads,
for the error feedback (:mod:`hqq2gguf.feedback`). Collected from the same forward passes as the importance
(:class:`~.collect.ImatrixCollector` hands every input it reads to :meth:`CovarianceSink.add`).

Only the diagonal blocks of :data:`WINDOW` columns are kept (the feedback stays within them): a full
``ne0 x ne0`` costs ``ne0**2`` per token to collect and ``ne0**3`` to factor, minutes for one 8960-wide
``ffn_down`` on two cores. Each block's sum lives in a float32 file in a temporary directory: the sums of a
whole model would not fit in memory, and only the tensor being encoded reads its own. Rows are buffered per
matrix and added :data:`FLUSH_ROWS` at a time (one matrix product instead of one per decoding step). Expert
tensors (3-D) get none: the feedback leaves them to the plain solver.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

#: Buffered rows per matrix before they are added to its sum. The default text (about 1,000 tokens) is held whole
#: and added once (Qwen2.5-Coder-1.5B: 1.5 GB of rows, one copy per distinct input): adding 256 rows at a time
#: held 0.4 GB but rewrote every sum four times, and the calibration took 61 s instead of 36 s.
FLUSH_ROWS = 2048

#: Columns per diagonal block of a covariance (a multiple of every block size: 32 and 256).
WINDOW = 2048


def windows(ne0: int) -> list[tuple[int, int]]:
    """The column ranges of a ``ne0``-wide input's diagonal blocks."""
    return [(start, min(ne0, start + WINDOW)) for start in range(0, ne0, WINDOW)]


class CovarianceSink:
    """Sums of ``x^T x`` per weight name (its diagonal blocks), in files; :meth:`close` deletes them.

    A file is mapped only while its sum is added to (a whole model's sums, mapped, would count in the process's
    memory: 3.6 GB for Qwen2.5-Coder-1.5B). Matrices that read one input (attention's q, k and v; the feed-forward
    gate and up) are handed the same rows one after another: an add equal to the one before it shares that add's
    copy, and a flush of the very rows flushed before it reuses their products."""

    def __init__(self, directory: Path | None = None) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="hqq2gguf-covariance-", dir=directory))
        self._files: dict[str, list[Path]] = {}
        self._widths: dict[str, int] = {}
        self._counts: dict[str, int] = {}
        self._buffers: dict[str, list[np.ndarray]] = {}
        self._buffered: dict[str, int] = {}
        self._last_add: np.ndarray | None = None
        self._last_flush: tuple[list[np.ndarray], list[torch.Tensor]] | None = None

    def add(self, name: str, rows: np.ndarray) -> None:
        """Rows (n, ne0) that matrix ``name`` read."""
        last = self._last_add
        if last is None or last.shape != rows.shape or not np.array_equal(last, rows):
            last = self._last_add = np.array(rows, dtype=np.float32)
        self._buffers.setdefault(name, []).append(last)
        self._buffered[name] = self._buffered.get(name, 0) + rows.shape[0]
        if self._buffered[name] >= FLUSH_ROWS:
            self._flush(name)

    def _flush(self, name: str) -> None:
        buffered = self._buffers.pop(name)
        self._buffered[name] = 0
        ne0 = buffered[0].shape[1]
        if (self._last_flush is not None and len(self._last_flush[0]) == len(buffered)
                and all(a is b for a, b in zip(self._last_flush[0], buffered))):
            products = self._last_flush[1]
        else:
            x = torch.from_numpy(np.concatenate(buffered))
            products = [x[:, start:stop].T @ x[:, start:stop] for start, stop in windows(ne0)]
            self._last_flush = (buffered, products)
        if name not in self._files:
            self._files[name] = [self._dir / f"{len(self._files)}-{start}.npy" for start, _ in windows(ne0)]
            self._widths[name] = ne0
            self._counts[name] = 0
        for path, product in zip(self._files[name], products):
            if path.exists():
                s = np.load(path, mmap_mode="r+")
                torch.from_numpy(s).add_(product)
            else:
                s = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=tuple(product.shape))
                s[...] = product.numpy()
            del s  # unmapped, not synced: the sum stays in the page cache and its file, not in the process
        self._counts[name] += sum(b.shape[0] for b in buffered)

    def finish(self) -> Covariances:
        """Every buffered row added; the means, read one matrix at a time."""
        for name in list(self._buffers):
            self._flush(name)
        self._last_add = self._last_flush = None
        return Covariances(self._files, self._widths, self._counts, self.close)

    def close(self) -> None:
        self._files.clear()
        self._buffers.clear()
        self._last_add = self._last_flush = None
        shutil.rmtree(self._dir, ignore_errors=True)


class Covariances:
    """The collected covariances: :meth:`for_tensor` reads one matrix's diagonal blocks (float64 means of
    ``x x^T``, in column order, :func:`windows`) or None. ``close`` deletes their files."""

    def __init__(self, files: Mapping[str, list[Path]] | None = None, widths: Mapping[str, int] | None = None,
                 counts: Mapping[str, int] | None = None, close: Callable[[], None] = lambda: None) -> None:
        self._files = files or {}  # per weight name, the .npy file of each window's sum
        self._widths = widths or {}  # the width (ne0) of the rows summed
        self._counts = counts or {}
        self.close = close

    def __len__(self) -> int:
        return len(self._files)

    def for_tensor(self, name: str, ne0: int) -> list[np.ndarray] | None:
        if self._widths.get(name) != ne0:  # none, or another shape's: not this tensor's
            return None
        n = max(self._counts[name], 1)
        return [np.load(path).astype(np.float64) / n for path in self._files[name]]
