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

#: Buffered rows per matrix before they are added to its sum.
FLUSH_ROWS = 2048

#: Columns per diagonal block of a covariance (a multiple of every block size: 32 and 256).
WINDOW = 2048


def windows(ne0: int) -> list[tuple[int, int]]:
    """The column ranges of a ``ne0``-wide input's diagonal blocks."""
    return [(start, min(ne0, start + WINDOW)) for start in range(0, ne0, WINDOW)]


class CovarianceSink:
    """Sums of ``x^T x`` per weight name (its diagonal blocks), on disk; :meth:`close` deletes them."""

    def __init__(self, directory: Path | None = None) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="hqq2gguf-covariance-", dir=directory))
        self._sums: dict[str, list[np.memmap]] = {}
        self._counts: dict[str, int] = {}
        self._buffers: dict[str, list[np.ndarray]] = {}
        self._buffered: dict[str, int] = {}

    def add(self, name: str, rows: np.ndarray) -> None:
        """Rows (n, ne0) that matrix ``name`` read."""
        self._buffers.setdefault(name, []).append(np.array(rows, dtype=np.float32))
        self._buffered[name] = self._buffered.get(name, 0) + rows.shape[0]
        if self._buffered[name] >= FLUSH_ROWS:
            self._flush(name)

    def _flush(self, name: str) -> None:
        x = torch.from_numpy(np.concatenate(self._buffers.pop(name)))
        self._buffered[name] = 0
        if name not in self._sums:
            self._sums[name] = [np.lib.format.open_memmap(self._dir / f"{len(self._sums)}-{start}.npy", mode="w+",
                                                          dtype=np.float32, shape=(stop - start, stop - start))
                                for start, stop in windows(x.shape[1])]
            self._counts[name] = 0
        for (start, stop), s in zip(windows(x.shape[1]), self._sums[name]):
            xw = x[:, start:stop]
            torch.from_numpy(s).add_(xw.T @ xw)
        self._counts[name] += x.shape[0]

    def finish(self) -> Covariances:
        """Every buffered row added; the means, read one matrix at a time."""
        for name in list(self._buffers):
            self._flush(name)
        for blocks in self._sums.values():
            for s in blocks:
                s.flush()
        return Covariances(self._sums, self._counts, self.close)

    def close(self) -> None:
        self._sums.clear()
        shutil.rmtree(self._dir, ignore_errors=True)


class Covariances:
    """The collected covariances: :meth:`for_tensor` reads one matrix's diagonal blocks (float64 means of
    ``x x^T``, in column order, :func:`windows`) or None. ``close`` deletes their files."""

    def __init__(self, sums: Mapping[str, list[np.ndarray]] | None = None, counts: Mapping[str, int] | None = None,
                 close: Callable[[], None] = lambda: None) -> None:
        self._sums = sums or {}
        self._counts = counts or {}
        self.close = close

    def __len__(self) -> int:
        return len(self._sums)

    def for_tensor(self, name: str, ne0: int) -> list[np.ndarray] | None:
        blocks = self._sums.get(name)
        if blocks is None or [b.shape[0] for b in blocks] != [stop - start for start, stop in windows(ne0)]:
            return None
        n = max(self._counts[name], 1)
        return [np.asarray(b, dtype=np.float64) / n for b in blocks]
