"""Solver for the types with one fp16 scale (and maybe an fp16 min) per block.

Q4_0, Q5_0, Q8_0, TQ1_0, TQ2_0 (``x = d*q``), Q4_1, Q5_1 (``x = d*q + m``), IQ4_NL (``x = d*kvalues[q]``).
Free: d (and m), snapped to fp16 inside the loop; the codes are the nearest under the snapped values.

All starts run side by side: rows ``[s*n:(s+1)*n]`` of every working tensor belong to start ``s``; start 0
is llama.cpp's answer; :class:`~hqq2gguf.optimize.core.BestOfStarts` keeps the best per block (never worse
than llama.cpp's) and stops a block after ``cfg.patience`` iterations without improvement.
"""

from __future__ import annotations

import torch

from hqq2gguf.optimize.config import SolverConfig
from hqq2gguf.optimize.core import BestOfStarts, Grid, fit_affine, fit_scale, fp16, hq_target, weighted_sse
from hqq2gguf.qtypes import QuantSpec

State = dict[str, torch.Tensor]


def _starts(spec: QuantSpec, grid: Grid, x: torch.Tensor, cfg: SolverConfig
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial (scale, offset) of every extra start, stacked along axis 0: (n_extra * n,) each."""
    scales, offsets = [x.new_empty(0)], [x.new_empty(0)]
    if spec.affine:
        lo, hi = x.min(dim=1).values, x.max(dim=1).values
        r = hi - lo
        for f in cfg.range_factors:
            s = f * r / (grid.hi - grid.lo)
            scales.append(s)
            offsets.append(lo + (1 - f) * r / 2 - s * grid.lo)
    else:
        xm = x.gather(1, x.abs().argmax(dim=1, keepdim=True))[:, 0]
        for f in cfg.range_factors:
            for side in (grid.lo, grid.hi):
                scales.append(f * xm / side)
                offsets.append(torch.zeros_like(xm))
    return torch.cat(scales), torch.cat(offsets)


def solve_block_scale(spec: QuantSpec, x: torch.Tensor, w: torch.Tensor, wfit: torch.Tensor, base: State,
                      cfg: SolverConfig) -> State:
    """Best fields per block: ``{"d", "m" (affine), "q", "obj"}``.

    x, w, wfit: (n, B) float32 (values, objective weights, fitting weights); ``base``: llama.cpp's fields
    ``d`` (n,), ``m`` (n,) or absent, ``q`` (n, B) (codes as float32); its objective is scored here."""
    grid = Grid.of(spec)
    n = x.shape[0]
    s_extra, b_extra = _starts(spec, grid, x, cfg)
    n_starts = 1 + s_extra.shape[0] // max(n, 1)
    xs, ws, wf = x.repeat(n_starts, 1), w.repeat(n_starts, 1), wfit.repeat(n_starts, 1)
    s = torch.cat([base["d"], s_extra])
    b = torch.cat([base["m"], b_extra]) if spec.affine else None
    base_obj = weighted_sse(x, _decode(grid, base["q"], base["d"], base.get("m")), w)
    best = BestOfStarts(base, base_obj, n_starts)
    if n_starts > 1 and (keep := best.drop_repeats(_trajectory_key(grid, s, b))) is not None:
        s, xs, ws, wf = s[keep], xs[keep], ws[keep], wf[keep]
        b = b[keep] if spec.affine else None
    beta, p = cfg.beta0, (cfg.p if cfg.shrinks else None)
    for it in range(cfg.iterations + 1):
        d16 = fp16(s)
        m16 = fp16(b) if spec.affine else None
        off = 0.0 if m16 is None else m16[:, None]
        q, lv = grid.codes(xs, d16[:, None], off)
        x_hat = d16[:, None] * lv + off
        obj = weighted_sse(xs, x_hat, ws)
        better = best.record(obj, {"d": d16, "q": q} | ({"m": m16} if spec.affine else {}))
        if it == cfg.iterations:
            break
        t = hq_target(xs, x_hat, d16[:, None], p, beta)
        if spec.affine:
            s, b = fit_affine(lv, t, wf, d16, m16)
        else:
            s = fit_scale(lv, t, wf, d16)
        beta *= cfg.kappa
        if (keep := best.keep_iterating(better, cfg.patience, it)) is not None:
            s, xs, ws, wf = s[keep], xs[keep], ws[keep], wf[keep]
            b = b[keep] if spec.affine else None
            if best.finished:
                break
    return best.result()


def _trajectory_key(grid: Grid, s: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """Per start and block, the bits that decide the start's whole trajectory: its snapped scale (and offset).

    Every iteration depends on the unsnapped scale only through fp16(s). On a grid symmetric about 0 (TQ1_0,
    TQ2_0) the scale -d retraces d exactly mirrored (codes -q, the same reconstruction and objectives in IEEE
    arithmetic), so only |d| counts there. Llama.cpp's own start often IS one of the range starts (Q4_0's
    ``max / -8``, Q4_1's min/max): those repeats are dropped before they cost anything."""
    d16 = fp16(s)
    if grid.mids is None and grid.qmin == -grid.qmax:
        d16 = d16.abs()
    cols = [d16] if b is None else [d16, fp16(b)]
    return torch.stack(cols, dim=1).view(torch.int32)


def _decode(grid: Grid, q: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
    lv = grid.levels[q.long() - grid.qmin] if grid.mids is None else grid.levels[q.long()]
    y = lv * d[:, None]
    return y if m is None else y + m[:, None]
