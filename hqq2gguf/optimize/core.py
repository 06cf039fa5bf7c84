"""Building blocks shared by the block-scale and the K-quant solvers (all over (..., group) tensors).

Conventions: a group is the set of elements sharing one effective scale; its reconstruction is
``x_hat = scale * level(q) + offset`` (offset = m for Q4_1/Q5_1, -dmin*mn for K-quants, 0 when symmetric).

Everything runs in float32 (:data:`WORK`): codes and sub-scales are small integers, fp16 super-scales times
them are exact in float32, so ``scale * level + offset`` is ggml's own float32 reconstruction, bit for bit.
Objectives are float32 sums here; :func:`hqq2gguf.optimize.solve` re-checks every block in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hqq2gguf.qtypes import QuantSpec

WORK = torch.float32
FP16_MAX = 65504.0
TINY = 1e-30
_SHRINK_FROM = 0.999  # hq_target: |u|*c at or below this is certainly not shrunk


@dataclass(frozen=True)
class Grid:
    """The code range of one type: levels (float32, indexed by q - qmin) and how q maps to a level."""

    qmin: int
    qmax: int
    levels: torch.Tensor  # (n_levels,) float32, level of code qmin + i (codebook types: index i)
    mids: torch.Tensor | None  # codebook types: midpoints between sorted levels (for nearest search)

    @classmethod
    def of(cls, spec: QuantSpec) -> Grid:
        if spec.codebook is not None:
            lv = torch.tensor(spec.codebook, dtype=WORK)
            if not bool((lv[1:] > lv[:-1]).all()):  # a bug in the table, not user input
                raise RuntimeError(f"{spec.name}: codebook must be increasing")
            return cls(spec.qmin, spec.qmax, lv, (lv[1:] + lv[:-1]) / 2)
        return cls(spec.qmin, spec.qmax, torch.arange(spec.qmin, spec.qmax + 1, dtype=WORK), None)

    @property
    def lo(self) -> float:
        return float(self.levels[0])

    @property
    def hi(self) -> float:
        return float(self.levels[-1])

    def codes(self, x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | float
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest code of every element: (q as the format stores it, as float32; its level, float32).

        For non-codebook types both are the same tensor. ``scale``/``offset`` broadcast against ``x``;
        a zero scale gives the level nearest 0."""
        v = (x - offset) * inverse(scale) if isinstance(offset, torch.Tensor) else x * inverse(scale)
        return self.nearest(v)

    def nearest(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`codes`, from ``v`` = (x - offset) * :func:`inverse` (scale) already computed (overwritten)."""
        if self.mids is None:
            q = v.round_().clamp_(self.qmin, self.qmax)
            return q, q
        idx = torch.searchsorted(self.mids, v.contiguous())
        return idx.to(WORK), self.levels[idx]


def inverse(scale: torch.Tensor) -> torch.Tensor:
    """1 / scale, 0 where the scale is 0 (its codes are then the level nearest 0)."""
    return torch.where(scale != 0, 1.0 / torch.where(scale != 0, scale, 1.0), 0.0)


def fp16(v: torch.Tensor) -> torch.Tensor:
    """The nearest fp16 value (saturated at +-65504), back as float32."""
    return v.clamp(-FP16_MAX, FP16_MAX).to(torch.float16).to(WORK)


def hq_target(x: torch.Tensor, x_hat: torch.Tensor, step: torch.Tensor, p: float | None, beta: float
              ) -> torch.Tensor:
    """What the free parameters are refit to: ``x - W_e``, W_e the shrunk error in quantization steps.

    Shrinkage is HQQ's lp proximal step ``sign(u) * relu(|u| - |u|**(p-1) / beta)`` on u = error / step
    (soft threshold at p = 1). ``p`` None: no shrinkage (the target is x itself)."""
    if p is None:
        return x
    # x - sign(u)*relu(|u| - |u|**(p-1)/beta)*step == x - e*relu(1 - |u|**(p-2)/beta), u = e/step; the
    # 1/beta is folded into u: |u|**(p-2)/beta == (|u|*c)**(p-2) with c = beta**(1/(2-p))
    c = beta ** (1.0 / (2.0 - p))
    e = x - x_hat
    a = e.abs().mul_(c / step.abs().clamp_min(TINY))  # |u|*c
    # where |u|*c <= 1 the factor relu(1 - (|u|*c)**(p-2)) is 0 and the target is x: nearest-rounded errors
    # within the grid stay below half a step, so only clipped elements are shrunk. The formula runs on those
    # alone (a margin below 1 keeps float32 pow's rounding near 1 on the formula's side).
    idx = (a > _SHRINK_FROM).reshape(-1).nonzero().squeeze(1)
    if idx.numel() == 0:
        return x
    g = a.reshape(-1).index_select(0, idx).clamp_min_(1e-12).pow_(p - 2.0).neg_().add_(1.0).clamp_min_(0.0)
    t = x.clone(memory_format=torch.contiguous_format)
    flat = t.view(-1)
    flat.index_copy_(0, idx, flat.index_select(0, idx) - e.reshape(-1).index_select(0, idx) * g)
    return t


def fit_scale(lv: torch.Tensor, t: torch.Tensor, w: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """Weighted least-squares scale of ``t ~ s * lv`` over the last axis; ``prev`` where degenerate."""
    wl = w * lv
    den = (wl * lv).sum(-1)
    num = (wl * t).sum(-1)
    ok = den > TINY
    return torch.where(ok, num / torch.where(ok, den, 1.0), prev)


def fit_affine(lv: torch.Tensor, t: torch.Tensor, w: torch.Tensor, prev_s: torch.Tensor, prev_b: torch.Tensor,
               *, offset_nonpos: bool = False, scale_nonneg: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted least squares of ``t ~ s * lv + b`` over the last axis (the 2x2 normal equations).

    Constraints (K-quants): ``b <= 0`` refits s with b = 0; ``s >= 0`` keeps the previous pair."""
    wl = w * lv
    sw, sl, st = w.sum(-1), wl.sum(-1), (w * t).sum(-1)
    sll, slt = (wl * lv).sum(-1), (wl * t).sum(-1)
    det = sll * sw - sl * sl
    ok = det > 1e-6 * (sll * sw).clamp_min(TINY)
    safe = torch.where(ok, det, 1.0)
    s = torch.where(ok, (slt * sw - sl * st) / safe, prev_s)
    b = torch.where(ok, (sll * st - sl * slt) / safe, prev_b)
    if offset_nonpos:
        pos = b > 0
        s = torch.where(pos, torch.where(sll > TINY, slt / torch.where(sll > TINY, sll, 1.0), prev_s), s)
        b = torch.where(pos, torch.zeros_like(b), b)
    if scale_nonneg:
        bad = s < 0
        s = torch.where(bad, prev_s, s)
        b = torch.where(bad, prev_b, b)
    return s, b


def weighted_sse(x: torch.Tensor, x_hat: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``sum w * (x - x_hat)**2`` over the last axis."""
    e = x - x_hat
    return (e.mul_(e).mul_(w)).sum(-1)


class BestOfStarts:
    """The multi-start bookkeeping both solvers share: the best fields seen per (start, block), which blocks
    still iterate, and how long each has gone without improving.

    Rows ``[s*n:(s+1)*n]`` of every working tensor belong to start ``s``. Every start's initial best is
    llama.cpp's answer ``base`` (scored ``base_obj``), so no block can end worse than llama.cpp on the
    objective; ties keep the earlier start, so llama.cpp's answer wins them."""

    def __init__(self, base: dict[str, torch.Tensor], base_obj: torch.Tensor, n_starts: int) -> None:
        self.n, self.n_starts = base_obj.shape[0], n_starts
        self.best = {k: v.repeat(n_starts, *([1] * (v.dim() - 1))) for k, v in base.items()} | {
            "obj": base_obj.repeat(n_starts)}
        self.idx = torch.arange(n_starts * self.n)  # rows still iterating, into the full (start, block) arrays
        self.stall = torch.zeros(n_starts * self.n, dtype=torch.int64)

    def record(self, obj: torch.Tensor, fields: dict[str, torch.Tensor]) -> torch.Tensor:
        """Keep ``fields`` (rows of the iterating blocks) where ``obj`` beats the best so far; the mask."""
        better = obj < self.best["obj"][self.idx]
        if bool(better.any()):
            rows = self.idx[better]
            self.best["obj"][rows] = obj[better]
            for k, v in fields.items():
                self.best[k][rows] = v[better]
        return better

    def drop_repeats(self, key: torch.Tensor) -> torch.Tensor | None:
        """Before the first iteration: stop every start whose ``key`` row equals an earlier start's for the same
        block. ``key`` (n_starts * n, k) holds what decides a start's whole trajectory (the bits of its snapped
        scale and offset): a repeat would retrace the earlier start step for step and lose every tie to it, so
        dropping it changes no byte. The mask of the rows that go on, or None when nothing repeats."""
        if self.idx.numel() != self.n_starts * self.n:
            raise RuntimeError("drop_repeats must come before any row stops")  # a bug, not user input
        k = key.reshape(self.n_starts, self.n, -1)
        repeat = torch.zeros(self.n_starts, self.n, dtype=torch.bool)
        for later in range(1, self.n_starts):
            for earlier in range(later):
                repeat[later] |= (k[later] == k[earlier]).all(dim=-1)
        keep = ~repeat.reshape(-1)
        if bool(keep.all()):
            return None
        self.idx, self.stall = self.idx[keep], self.stall[keep]
        return keep

    def keep_iterating(self, better: torch.Tensor, patience: int, it: int) -> torch.Tensor | None:
        """After iteration ``it``: the mask of the iterating rows that go on (a block stops after ``patience``
        iterations without improving its best), or None when they all do. The test is per block, so the
        result does not depend on how blocks are chunked."""
        if not patience or it == 0:
            return None
        self.stall = torch.where(better, 0, self.stall + 1)
        keep = self.stall < patience
        if bool(keep.all()):
            return None
        self.idx, self.stall = self.idx[keep], self.stall[keep]
        return keep

    @property
    def finished(self) -> bool:
        return self.idx.numel() == 0

    def result(self) -> dict[str, torch.Tensor]:
        """Per block, the fields of the start with the lowest objective (the first on ties)."""
        pick = self.best["obj"].reshape(self.n_starts, self.n).argmin(dim=0)
        rows = pick * self.n + torch.arange(self.n)
        return {k: v[rows] for k, v in self.best.items()}
