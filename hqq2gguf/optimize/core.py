"""Building blocks shared by the block-scale and the K-quant solvers (all over (..., group) tensors).

Conventions: a group is the set of elements sharing one effective scale; its reconstruction is
``x_hat = scale * level(q) + offset`` (offset = m for Q4_1/Q5_1, -dmin*mn for K-quants, 0 when symmetric).
Fitting runs in float64; the exact ggml reconstruction is done by the solvers in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hqq2gguf.qtypes import QuantSpec

FP16_MAX = 65504.0
_TINY = 1e-300


@dataclass(frozen=True)
class Grid:
    """The code range of one type: levels (float64, indexed by q - qmin) and how q maps to a level."""

    qmin: int
    qmax: int
    levels: torch.Tensor  # (n_levels,) float64, level of code qmin + i (codebook types: index i)
    mids: torch.Tensor | None  # codebook types: midpoints between sorted levels (for nearest search)

    @classmethod
    def of(cls, spec: QuantSpec) -> Grid:
        if spec.codebook is not None:
            lv = torch.tensor(spec.codebook, dtype=torch.float64)
            if not bool((lv[1:] > lv[:-1]).all()):  # a bug in the table, not user input
                raise RuntimeError(f"{spec.name}: codebook must be increasing")
            return cls(spec.qmin, spec.qmax, lv, (lv[1:] + lv[:-1]) / 2)
        return cls(spec.qmin, spec.qmax, torch.arange(spec.qmin, spec.qmax + 1, dtype=torch.float64), None)

    @property
    def lo(self) -> float:
        return float(self.levels[0])

    @property
    def hi(self) -> float:
        return float(self.levels[-1])

    def codes(self, x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | float
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest code of every element: (q as the format stores it, int64; its level, float64).

        ``scale``/``offset`` broadcast against ``x``; a zero scale gives the level nearest 0."""
        nz = scale != 0
        v = torch.where(nz, (x - offset) / torch.where(nz, scale, 1.0), 0.0)
        if self.mids is None:
            q = v.round().clamp(self.qmin, self.qmax)
            return q.to(torch.int64), q
        idx = torch.searchsorted(self.mids, v.contiguous())
        return idx, self.levels[idx]


def fp16(v: torch.Tensor) -> torch.Tensor:
    """The nearest fp16 value (saturated at +-65504), back as float64."""
    return v.clamp(-FP16_MAX, FP16_MAX).to(torch.float16).to(torch.float64)


def shrink(u: torch.Tensor, p: float, beta: float) -> torch.Tensor:
    """lp proximal step of HQQ: ``sign(u) * relu(|u| - |u|**(p-1) / beta)`` (soft threshold at p = 1)."""
    a = u.abs()
    return torch.sign(u) * torch.relu(a - a.clamp_min(1e-12).pow(p - 1.0) / beta)


def hq_target(x: torch.Tensor, x_hat: torch.Tensor, step: torch.Tensor, p: float | None, beta: float
              ) -> torch.Tensor:
    """What the free parameters are refit to: ``x - W_e``, W_e the shrunk error in quantization steps.

    ``p`` None: no shrinkage (the target is x itself)."""
    if p is None:
        return x
    step = step.abs().clamp_min(_TINY)
    return x - shrink((x - x_hat) / step, p, beta) * step


def fit_scale(lv: torch.Tensor, t: torch.Tensor, w: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """Weighted least-squares scale of ``t ~ s * lv`` over the last axis; ``prev`` where degenerate."""
    den = (w * lv * lv).sum(-1)
    num = (w * lv * t).sum(-1)
    ok = den > _TINY
    return torch.where(ok, num / torch.where(ok, den, 1.0), prev)


def fit_affine(lv: torch.Tensor, t: torch.Tensor, w: torch.Tensor, prev_s: torch.Tensor, prev_b: torch.Tensor,
               *, offset_nonpos: bool = False, scale_nonneg: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted least squares of ``t ~ s * lv + b`` over the last axis (the 2x2 normal equations).

    Constraints (K-quants): ``b <= 0`` refits s with b = 0; ``s >= 0`` keeps the previous pair."""
    sw, sl, st = w.sum(-1), (w * lv).sum(-1), (w * t).sum(-1)
    sll, slt = (w * lv * lv).sum(-1), (w * lv * t).sum(-1)
    det = sll * sw - sl * sl
    ok = det > 1e-9 * (sll * sw).clamp_min(_TINY)
    safe = torch.where(ok, det, 1.0)
    s = torch.where(ok, (slt * sw - sl * st) / safe, prev_s)
    b = torch.where(ok, (sll * st - sl * slt) / safe, prev_b)
    if offset_nonpos:
        pos = b > 0
        s = torch.where(pos, torch.where(sll > _TINY, slt / torch.where(sll > _TINY, sll, 1.0), prev_s), s)
        b = torch.where(pos, torch.zeros_like(b), b)
    if scale_nonneg:
        bad = s < 0
        s = torch.where(bad, prev_s, s)
        b = torch.where(bad, prev_b, b)
    return s, b


def weighted_sse(x: torch.Tensor, x_hat: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``sum w * (x - x_hat)**2`` over the last axis, float64."""
    e = x - x_hat.to(torch.float64)
    return (w * e * e).sum(-1)


def keep_better(better: torch.Tensor, new: dict[str, torch.Tensor], best: dict[str, torch.Tensor]) -> None:
    """In place: every tensor of ``best`` takes ``new``'s rows where ``better`` (axis 0) is set."""
    for k, v in new.items():
        m = better.reshape(-1, *([1] * (v.dim() - 1)))
        best[k] = torch.where(m, v, best[k])
