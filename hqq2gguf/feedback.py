"""Error feedback across a row's blocks (GPTQ's, one block at a time): each block is solved, and what it could
not represent is handed to the blocks not yet solved, in the proportions that keep the tensor's *output* error
smallest on the calibration text.

    fb = Feedback.of(blocks)                         # the input covariance's diagonal blocks (calibrate.covariance)
    encoded = fb.solve(rows, qtype, step, solve_block)   # solve_block(rows_part, start, stop) -> Encoded

With ``H`` the input's covariance, a row's output error on the text is ``e H e^T``. Once the blocks of columns
``B`` are fixed with error ``e_B``, the columns ``R`` still to solve are best moved by ``-e_B H_BR H_RR^-1``,
which the upper Cholesky factor ``U`` of ``H^-1`` gives without inverting anything per block:
``-e_B U_BB^-1 U_BR`` (GPTQ, Frantar et al. 2022, with a block as the unit instead of a column, because a
block's scales and codes are solved together). ``H`` is known only in diagonal blocks of columns
(:data:`~hqq2gguf.calibrate.covariance.WINDOW`): the feedback stays within each. Rows are independent: a sampled
row gets exactly the blocks it gets in the file. ``H`` is damped by :data:`DAMP` x its mean diagonal (the
calibration text is about a thousand tokens, not many more than the columns: undamped, ``H`` would fit the text's
own quirks, or be singular); a column the text
never reached is left alone. One difference from solving whole rows: llama.cpp's element weights of the 32-blocks
(Q4_0 ... Q8_0, IQ4_NL) floor each element by the mean square of what is solved at once, here the block, not
the row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import gguf
import numpy as np
import torch

from hqq2gguf import ggml_ref
from hqq2gguf.optimize import Encoded

#: Damping, a share of the covariance's mean diagonal added to it: strong, because the default calibration text
#: (1,024 tokens) is short against the columns. Mean KLD (wiki chunks) with the self-calibration's 1,024 tokens,
#: SmolLM2-135M at Q5_K_M's types: no feedback 0.0234; damping 0.1 / 0.3 / 1.0 / 3.0: 0.0246 / 0.0221 / 0.0214
#: / 0.0220 (chosen on this model). With 1.0, against no feedback (chunk-paired +- 2 s.e.): SmolLM2 0.915 +- 0.026,
#: Qwen2.5-Coder-0.5B Q4_K_M 0.902 +- 0.073, Gemma-3-270M Q4_K_M 0.781 +- 0.025, Qwen2.5-Coder-1.5B Q4_K_M (20 chunks)
#: 0.999 +- 0.088 (benchmarks/results/feedback_pairs.md). With 8x the text and 0.1 SmolLM2 reached 0.889 and Qwen-0.5B
#: 0.822, at 3-6x the conversion's time.
DAMP = 1.0

#: Rows solved at a time (memory: this many rows x ne0 in float64).
ROW_PART = 4096


@dataclass(frozen=True)
class Feedback:
    """The propagation within each diagonal block of one input covariance."""

    covariances: tuple[torch.Tensor, ...]  # float64, undamped: the output error they measure
    factors: tuple[torch.Tensor, ...]  # the upper Cholesky factor of each damped block's inverse
    cache: dict = field(default_factory=dict, compare=False, repr=False)  # :meth:`_moves`

    @classmethod
    def of(cls, blocks: Sequence[np.ndarray], damp: float = DAMP) -> Feedback:
        covariances = tuple(torch.from_numpy(np.asarray(b, dtype=np.float64)) for b in blocks)
        return cls(covariances, tuple(_inverse_factor(h, damp) for h in covariances))

    @property
    def ne0(self) -> int:
        return sum(h.shape[0] for h in self.covariances)

    def solve(self, rows: np.ndarray, qtype: gguf.GGMLQuantizationType, step: int,
              solve_block: Callable[[np.ndarray, int, int], Encoded]) -> Encoded:
        """The blocks of ``rows`` (rows, ne0) solved ``step`` columns at a time, left to right, each after the
        errors of those before it (in its window) were fed forward. ``solve_block(part, start, stop)`` solves
        ``part``, columns ``start:stop`` of the rows (a block-aligned slice), and returns its :class:`Encoded`.
        ``objective`` / ``baseline_objective`` of the answer: the output's squared error and squared norm."""
        ne0 = rows.shape[-1]
        if ne0 != self.ne0 or any(h.shape[0] % step for h in self.covariances):
            raise ValueError(f"covariance blocks {[h.shape[0] for h in self.covariances]} do not fit rows of "
                             f"{ne0} solved {step} at a time")
        parts = []
        for r0 in range(0, rows.shape[0], ROW_PART):
            x = np.asarray(rows[r0:r0 + ROW_PART], dtype=np.float32)
            w = torch.from_numpy(x.astype(np.float64))  # a copy: the rows as the feedback moves them
            packed = []
            w0 = 0
            for i, u in enumerate(self.factors):
                width = u.shape[0]
                for c0, move in zip(range(0, width, step), self._moves(i, step)):
                    c1 = c0 + step
                    block = solve_block(np.ascontiguousarray(w[:, w0 + c0:w0 + c1].numpy(), dtype=np.float32),
                                        w0 + c0, w0 + c1)
                    packed.append(block.packed)
                    if c1 < width:
                        err = w[:, w0 + c0:w0 + c1] - torch.from_numpy(decode(block.packed, qtype)).double()
                        w[:, w0 + c1:w0 + width] -= err @ move
                w0 += width
            joined = np.concatenate(packed, axis=1)
            error = decode(joined, qtype) - x
            parts.append(Encoded(joined, float(np.square(error, dtype=np.float64).sum()),
                                 float(np.square(x, dtype=np.float64).sum()),
                                 self.output_error(error), self.output_error(x)))
        return Encoded.join(parts)

    def _moves(self, window: int, step: int) -> list[torch.Tensor]:
        """``U_BB^-1 U_BR`` of each block ``B`` of ``step`` columns of ``window``, ``R`` the
        columns after it: what the block's error moves them by. Computed once per window and step, whatever the
        rows (every row part)."""
        key = (window, step)
        if key not in self.cache:
            u = self.factors[window]
            width = u.shape[0]
            self.cache[key] = [torch.linalg.solve_triangular(u[c0:c0 + step, c0:c0 + step], u[c0:c0 + step, c0 + step:],
                                                             upper=True) for c0 in range(0, width, step)]
        return self.cache[key]

    def output_error(self, error: np.ndarray) -> float:
        """``sum over rows of e H e^T`` (H's diagonal blocks): the squared output error of ``error`` rows on the
        calibration text. In float32 (it is reported, not optimized: float64 took a fifth of the feedback's time)."""
        e = torch.from_numpy(np.asarray(error, dtype=np.float32))
        total, w0 = 0.0, 0
        for h in self.covariances:
            ew = e[:, w0:w0 + h.shape[0]]
            total += float(((ew @ h.float()) * ew).sum(dtype=torch.float64))
            w0 += h.shape[0]
        return total


def _inverse_factor(h: torch.Tensor, damp: float) -> torch.Tensor:
    """The upper Cholesky factor ``U`` of ``(h + damp x mean diag)^-1`` (``U^T U``), from the Cholesky factor of
    ``h`` in reversed order: ``U = P L^-1 P`` with ``P h P = L L^T`` (one factorization and one triangular
    inverse, three times faster than inverting and factoring again). Dead columns get 1 on the diagonal."""
    h = h.clone()
    diag = torch.diagonal(h)
    dead = diag <= 0
    h[dead, :] = 0.0
    h[:, dead] = 0.0
    live = diag[~dead]
    diag += damp * float(live.mean()) if live.numel() else 0.0
    diag[dead] = 1.0
    lower = torch.linalg.cholesky(h.flip(0, 1))
    eye = torch.eye(h.shape[0], dtype=h.dtype)
    return torch.linalg.solve_triangular(lower, eye, upper=False).flip(0, 1)


def decode(packed: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    """What ggml decodes from ``packed`` (rows, row_bytes): float32 (rows, ne0)."""
    return ggml_ref.ggml_dequantize(qtype, np.ascontiguousarray(packed))
