"""Solver for K-quant super-blocks: fp16 super-scale(s) times small-integer sub-scales (and mins).

Q4_K, Q5_K, Q2_K (``x = (d*sc)*q - dmin*mn``, sc/mn unsigned), Q3_K, Q6_K (``x = (d*sc)*q``, sc signed),
IQ4_XS (``x = (d*sc)*kvalues[q]``). One half-quadratic iteration is a block-coordinate pass:

1. codes: nearest under the current snapped (d, sc, dmin, mn); score the exact objective, keep the best;
2. HQ target ``t = x - W_e`` (shrunk error in steps of the sub-block scale);
3. sub-blocks: weighted least squares of (scale, offset) to t, then the integer sub-scale/min chosen among
   the current one and round(value / d) +- radius, on the exact objective with codes re-fit under each;
4. super-block: (d, dmin) by weighted least squares to t under the chosen integers and codes, snapped to fp16.

Starts run side by side along axis 0 (:class:`~hqq2gguf.optimize.core.BestOfStarts` keeps the best), and blocks
stop after ``cfg.patience`` iterations without improvement. Integers (sc, mn, q) are held as float32.
"""

from __future__ import annotations

import torch

from hqq2gguf.optimize.config import SolverConfig
from hqq2gguf.optimize.core import (
    TINY, BestOfStarts, Grid, fit_affine, fit_scale, fp16, hq_target, inverse, weighted_sse,
)
from hqq2gguf.qtypes import QuantSpec

State = dict[str, torch.Tensor]


class _Super:
    """Geometry and exact arithmetic of one K-quant type."""

    def __init__(self, spec: QuantSpec) -> None:
        self.spec, self.grid = spec, Grid.of(spec)
        self.G, self.S = spec.n_sub, spec.sub_block
        self.sc_lo, self.sc_hi = spec.sc_range
        self.mn_hi = spec.mn_range[1]
        self.affine = spec.affine

    def level(self, q: torch.Tensor) -> torch.Tensor:
        return q if self.grid.mids is None else self.grid.levels[q.long()]

    def scales(self, st: State) -> tuple[torch.Tensor, torch.Tensor | float]:
        """Per sub-block (scale, offset) as ggml computes them in float32: (d*sc, -(dmin*mn)), (n, G)."""
        D = st["d"][:, None] * st["sc"]
        return D, (-(st["dmin"][:, None] * st["mn"]) if self.affine else 0.0)

    def snap(self, s: torch.Tensor, b: torch.Tensor) -> State:
        """Float per-sub-block (scale, offset) (n, G) -> fp16 super-scales and rounded integers."""
        if self.sc_lo < 0:  # signed sub-scales: the largest |scale| goes to the negative end, as llama.cpp
            sm = s.gather(1, s.abs().argmax(dim=1, keepdim=True))[:, 0]
            d = fp16(sm / self.sc_lo)
        else:
            d = fp16(s.max(dim=1).values / self.sc_hi)
        st = {"d": d, "sc": _ratio(s, d).round().clamp(self.sc_lo, self.sc_hi)}
        if self.affine:
            m = -b
            dmin = fp16(m.max(dim=1).values / self.mn_hi)
            st |= {"dmin": dmin, "mn": _ratio(m, dmin).round().clamp(0, self.mn_hi)}
        return st


def _ratio(v: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """v / d per block (d (n,)), 0 where d is 0."""
    nz = (d != 0)[:, None]
    return torch.where(nz, v / torch.where(nz, d[:, None], 1.0), 0.0)


def _fit_pair(a: torch.Tensor, c: torch.Tensor, t: torch.Tensor, w: torch.Tensor, prev_a: torch.Tensor,
              prev_c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted least squares ``t ~ u*a + v*c`` over the last axis with u, v >= 0; previous where not."""
    wa, wc = w * a, w * c
    saa, scc, sac = (wa * a).sum(-1), (wc * c).sum(-1), (wa * c).sum(-1)
    sat, sct = (wa * t).sum(-1), (wc * t).sum(-1)
    det = saa * scc - sac * sac
    ok = det > 1e-6 * (saa * scc).clamp_min(TINY)
    safe = torch.where(ok, det, 1.0)
    u, v = (sat * scc - sac * sct) / safe, (saa * sct - sac * sat) / safe
    ok &= (u >= 0) & (v >= 0)
    return torch.where(ok, u, prev_a), torch.where(ok, v, prev_c)


def _extra_starts(k: _Super, xg: torch.Tensor, cfg: SolverConfig) -> list[State]:
    """Per-sub-block range fits shrunk by each range factor, snapped."""
    parts: list[State] = []
    if not cfg.super_range_factors:
        return parts
    if k.affine:
        lo = xg.min(dim=2).values.clamp_max(0.0)  # the offset must be <= 0 (mn >= 0)
        hi = xg.max(dim=2).values
        r = hi - lo
        for f in cfg.super_range_factors:
            s = f * r / (k.grid.hi - k.grid.lo)
            parts.append(k.snap(s, (lo + (1 - f) * r / 2 - s * k.grid.lo).clamp_max(0.0)))
    else:
        xm = xg.gather(2, xg.abs().argmax(dim=2, keepdim=True))[..., 0]
        sides = (k.grid.lo, k.grid.hi) if k.sc_lo < 0 else (k.grid.hi,)
        for f in cfg.super_range_factors:
            for side in sides:
                parts.append(k.snap(f * xm / side, torch.zeros_like(xm)))
    return parts


def _pick_sub(k: _Super, st: State, s: torch.Tensor, b: torch.Tensor | float, xg: torch.Tensor,
              wg: torch.Tensor, radius: int, cur_err: torch.Tensor) -> State:
    """Integer sub-scales (and mins) per sub-block: the current ones (error ``cur_err`` (n, G)) or
    round(target / d) +- radius, whichever reconstructs best on the objective with codes re-fit."""
    ks = [0] + [v for r in range(1, radius + 1) for v in (-r, r)]
    sc0 = _ratio(s, st["d"]).round()
    best_err, best_sc, best_mn = cur_err, st["sc"], st.get("mn")
    if k.affine:  # x - offset once per min candidate, not once per (scale, min) pair
        mn0 = _ratio(-b, st["dmin"]).round()
        mins = [(mn, -(st["dmin"][:, None] * mn)) for mn in ((mn0 + j).clamp(0, k.mn_hi) for j in ks)]
        shifted = [xg - B[..., None] for _, B in mins]
    else:
        mins, shifted = [(None, None)], [xg]
    for i in ks:
        sc = (sc0 + i).clamp(k.sc_lo, k.sc_hi)
        D = st["d"][:, None] * sc
        inv = inverse(D[..., None])
        for (mn, B), xb in zip(mins, shifted):
            _, lv = k.grid.nearest(xb * inv)
            x_hat = D[..., None] * lv
            err = weighted_sse(xg, x_hat if B is None else x_hat + B[..., None], wg)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_sc = torch.where(better, sc, best_sc)
            best_mn = None if mn is None else torch.where(better, mn, best_mn)
    return st | {"sc": best_sc} | ({"mn": best_mn} if k.affine else {})


def solve_super(spec: QuantSpec, x: torch.Tensor, w: torch.Tensor, wfit: torch.Tensor, base: State,
                cfg: SolverConfig) -> State:
    """Best fields per super-block: ``{"d", "sc", "q", "obj"}`` (+ ``"dmin", "mn"`` when affine).

    x, w, wfit: (n, 256) float32; ``base``: llama.cpp's fields (d, dmin (n,); sc, mn (n, G); q (n, 256),
    all float32); its objective is scored here."""
    k = _Super(spec)
    n = x.shape[0]
    xg0 = x.reshape(n, k.G, k.S)
    wg0 = w.reshape(n, k.G, k.S)
    names = ("d", "sc", "dmin", "mn") if k.affine else ("d", "sc")
    parts = [{name: base[name] for name in names}] + _extra_starts(k, xg0, cfg)
    n_starts = len(parts)
    st = {name: torch.cat([p[name] for p in parts]) for name in names}
    xg, wg = xg0.repeat(n_starts, 1, 1), wg0.repeat(n_starts, 1, 1)
    wf = wfit.reshape(n, k.G, k.S).repeat(n_starts, 1, 1)
    D0, B0 = k.scales(base)
    x_hat0 = D0[..., None] * k.level(base["q"].reshape(n, k.G, k.S))
    base_obj = weighted_sse(xg0, x_hat0 + B0[..., None] if k.affine else x_hat0, wg0).sum(-1)
    best = BestOfStarts(base, base_obj, n_starts)
    beta, p = cfg.beta0, (cfg.p if cfg.shrinks else None)
    for it in range(cfg.iterations + 1):
        D, B = k.scales(st)
        Bx = B[..., None] if k.affine else 0.0
        q, lv = k.grid.codes(xg, D[..., None], Bx)
        x_hat = D[..., None] * lv + Bx
        err = weighted_sse(xg, x_hat, wg)
        better = best.record(err.sum(-1), {"q": q.flatten(1)} | {name: st[name] for name in names})
        if it == cfg.iterations:
            break
        t = hq_target(xg, x_hat, D[..., None], p, beta)
        if k.affine:
            s, b = fit_affine(lv, t, wf, D, B, offset_nonpos=True, scale_nonneg=True)
        else:
            s, b = fit_scale(lv, t, wf, D), 0.0
        st = _pick_sub(k, st, s, b, xg, wg, cfg.sub_scale_radius, err)
        st = _refit_super(k, st, xg, wf, p, beta)
        beta *= cfg.kappa
        if (keep := best.keep_iterating(better, cfg.patience, it)) is not None:
            xg, wg, wf = xg[keep], wg[keep], wf[keep]
            st = {name: v[keep] for name, v in st.items()}
            if best.finished:
                break
    return best.result()


def _refit_super(k: _Super, st: State, xg: torch.Tensor, wf: torch.Tensor, p: float | None, beta: float) -> State:
    """(d, dmin) by weighted least squares to the HQ target under the current integers, snapped to fp16."""
    D, B = k.scales(st)
    _, lv = k.grid.codes(xg, D[..., None], B[..., None] if k.affine else 0.0)
    x_hat = D[..., None] * lv + (B[..., None] if k.affine else 0.0)
    t = hq_target(xg, x_hat, D[..., None], p, beta).flatten(1)
    a = (st["sc"][..., None] * lv).flatten(1)
    wflat = wf.flatten(1)
    if not k.affine:
        return st | {"d": fp16(fit_scale(a, t, wflat, st["d"]))}
    c = -st["mn"][..., None].expand_as(lv).flatten(1)  # x = d*a + dmin*c
    d, dmin = _fit_pair(a, c, t, wflat, st["d"], st["dmin"])
    return st | {"d": fp16(d), "dmin": fp16(dmin)}
