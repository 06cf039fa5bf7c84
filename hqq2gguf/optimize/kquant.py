"""Solver for K-quant super-blocks: fp16 super-scale(s) times small-integer sub-scales (and mins).

Q4_K, Q5_K, Q2_K (``x = (d*sc)*q - dmin*mn``, sc/mn unsigned), Q3_K, Q6_K (``x = (d*sc)*q``, sc signed),
IQ4_XS (``x = (d*sc)*kvalues[q]``). One half-quadratic iteration is a block-coordinate pass:

1. codes: nearest under the current snapped (d, sc, dmin, mn); score the exact objective, keep the best;
2. HQ target ``t = x - W_e`` (shrunk error in steps of the sub-block scale);
3. sub-blocks: weighted least squares of (scale, offset) to t, then the integer sub-scale/min chosen among
   the current one and round(value / d) +- radius, on the exact objective with codes re-fit under each;
4. super-block: (d, dmin) by weighted least squares to t under the chosen integers, snapped to fp16.

Starts run side by side along axis 0, as in :mod:`hqq2gguf.optimize.block_scale`.
"""

from __future__ import annotations

import torch

from hqq2gguf.optimize.config import SolverConfig
from hqq2gguf.optimize.core import Grid, fit_affine, fit_scale, fp16, hq_target, keep_better, weighted_sse
from hqq2gguf.qtypes import QuantSpec

State = dict[str, torch.Tensor]
_TINY = 1e-300


class _Super:
    """Geometry and exact arithmetic of one K-quant type."""

    def __init__(self, spec: QuantSpec) -> None:
        self.spec, self.grid = spec, Grid.of(spec)
        self.G, self.S = spec.n_sub, spec.sub_block
        self.sc_lo, self.sc_hi = spec.sc_range
        self.mn_hi = spec.mn_range[1]
        self.affine = spec.affine

    def level(self, q: torch.Tensor) -> torch.Tensor:
        return self.grid.levels[q - self.grid.qmin] if self.grid.mids is None else self.grid.levels[q]

    def scales(self, d: torch.Tensor, sc: torch.Tensor, dmin: torch.Tensor | None, mn: torch.Tensor | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sub-block (scale, offset) as ggml computes them in float32: (d*sc, -(dmin*mn)), (n, G)."""
        D = (d.to(torch.float32)[:, None] * sc.to(torch.float32)).to(torch.float64)
        if dmin is None:
            return D, torch.zeros_like(D)
        return D, -(dmin.to(torch.float32)[:, None] * mn.to(torch.float32)).to(torch.float64)

    def decode(self, q: torch.Tensor, D: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
        """Exact float32 ``(d*sc)*level - dmin*mn``, (n, G, S); D, B from :meth:`scales`."""
        y = D.to(torch.float32)[..., None] * self.level(q).to(torch.float32)
        return y if not self.affine else y + B.to(torch.float32)[..., None]

    def snap(self, s: torch.Tensor, b: torch.Tensor) -> State:
        """Float per-sub-block (scale, offset) (n, G) -> fp16 super-scales and rounded integers."""
        if self.sc_lo < 0:  # signed sub-scales: the largest |scale| goes to the negative end, as llama.cpp
            sm = s.gather(1, s.abs().argmax(dim=1, keepdim=True))[:, 0]
            d = fp16(sm / self.sc_lo)
        else:
            d = fp16(s.max(dim=1).values / self.sc_hi)
        st = {"d": d, "sc": _ratio(s, d).round().clamp(self.sc_lo, self.sc_hi).to(torch.int64)}
        if self.affine:
            m = -b
            dmin = fp16(m.max(dim=1).values / self.mn_hi)
            st |= {"dmin": dmin, "mn": _ratio(m, dmin).round().clamp(0, self.mn_hi).to(torch.int64)}
        return st


def _ratio(v: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """v / d per block (d (n,)), 0 where d is 0."""
    nz = (d != 0)[:, None]
    return torch.where(nz, v / torch.where(nz, d[:, None], 1.0), 0.0)


def _fit_pair(a: torch.Tensor, c: torch.Tensor, t: torch.Tensor, w: torch.Tensor, prev_a: torch.Tensor,
              prev_c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted least squares ``t ~ u*a + v*c`` over the last axis with u, v >= 0; previous where not."""
    saa, scc, sac = (w * a * a).sum(-1), (w * c * c).sum(-1), (w * a * c).sum(-1)
    sat, sct = (w * a * t).sum(-1), (w * c * t).sum(-1)
    det = saa * scc - sac * sac
    ok = det > 1e-9 * (saa * scc).clamp_min(_TINY)
    safe = torch.where(ok, det, 1.0)
    u, v = (sat * scc - sac * sct) / safe, (saa * sct - sac * sat) / safe
    ok &= (u >= 0) & (v >= 0)
    return torch.where(ok, u, prev_a), torch.where(ok, v, prev_c)


def _extra_starts(k: _Super, xg: torch.Tensor, cfg: SolverConfig) -> State:
    """Per-sub-block range fits shrunk by each range factor, snapped; stacked along axis 0."""
    parts = []
    if k.affine:
        lo = xg.min(dim=2).values.clamp_max(0.0)  # the offset must be <= 0 (mn >= 0)
        hi = xg.max(dim=2).values
        r = hi - lo
        for f in cfg.range_factors:
            s = f * r / (k.grid.hi - k.grid.lo)
            parts.append(k.snap(s, (lo + (1 - f) * r / 2 - s * k.grid.lo).clamp_max(0.0)))
    else:
        xm = xg.gather(2, xg.abs().argmax(dim=2, keepdim=True))[..., 0]
        sides = (k.grid.lo, k.grid.hi) if k.sc_lo < 0 else (k.grid.hi,)
        for f in cfg.range_factors:
            for side in sides:
                parts.append(k.snap(f * xm / side, torch.zeros_like(xm)))
    return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}


def _pick_sub(k: _Super, st: State, s: torch.Tensor, b: torch.Tensor, xg: torch.Tensor, wg: torch.Tensor,
              radius: int) -> State:
    """Integer sub-scales (and mins) per sub-block: the current ones or round(target / d) +- radius,
    whichever reconstructs best on the objective with codes re-fit; returns the updated state."""
    ks = [0] + [v for r in range(1, radius + 1) for v in (-r, r)]
    sc0 = _ratio(s, st["d"]).round()
    cands = [(st["sc"], st.get("mn"))]
    mn0 = _ratio(-b, st["dmin"]).round() if k.affine else None
    for i in ks:
        sc = (sc0 + i).clamp(k.sc_lo, k.sc_hi).to(torch.int64)
        for j in (ks if k.affine else [None]):
            cands.append((sc, None if j is None else (mn0 + j).clamp(0, k.mn_hi).to(torch.int64)))
    best_err = best_sc = best_mn = None
    for sc, mn in cands:
        D, B = k.scales(st["d"], sc, st.get("dmin"), mn)
        q, lv = k.grid.codes(xg, D[..., None], B[..., None])
        err = weighted_sse(xg, D[..., None] * lv + B[..., None], wg)
        if best_err is None:
            best_err, best_sc, best_mn = err, sc, mn
            continue
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_sc = torch.where(better, sc, best_sc)
        best_mn = None if mn is None else torch.where(better, mn, best_mn)
    return st | {"sc": best_sc} | ({"mn": best_mn} if k.affine else {})


def solve_super(spec: QuantSpec, x: torch.Tensor, w: torch.Tensor, wfit: torch.Tensor, base: State,
                cfg: SolverConfig) -> State:
    """Best fields per super-block: ``{"d", "sc", "q", "obj"}`` (+ ``"dmin", "mn"`` when affine).

    x, w, wfit: (n, 256) float64; ``base``: llama.cpp's fields (d, dmin (n,); sc, mn (n, G); q (n, 256)
    int64) and its objective ``obj`` (n,)."""
    k = _Super(spec)
    n = x.shape[0]
    xg0 = x.reshape(n, k.G, k.S)
    extra = _extra_starts(k, xg0, cfg)
    n_starts = 1 + extra["d"].shape[0] // max(n, 1)
    st = {name: torch.cat([base[name], extra[name]]) for name in extra}
    xg = xg0.repeat(n_starts, 1, 1)
    wg = w.reshape(n, k.G, k.S).repeat(n_starts, 1, 1)
    wf = wfit.reshape(n, k.G, k.S).repeat(n_starts, 1, 1)
    best = {name: v.repeat(n_starts, *([1] * (v.dim() - 1))) for name, v in base.items()}
    beta, p = cfg.beta0, (cfg.p if cfg.shrinks else None)
    N = xg.shape[0]
    for it in range(cfg.iterations + 1):
        D, B = k.scales(st["d"], st["sc"], st.get("dmin"), st.get("mn"))
        q, lv = k.grid.codes(xg, D[..., None], B[..., None])
        obj = weighted_sse(xg, k.decode(q, D, B), wg).sum(-1)
        keep_better(obj < best["obj"], st | {"q": q.reshape(N, -1), "obj": obj}, best)
        if it == cfg.iterations:
            break
        t = hq_target(xg, D[..., None] * lv + B[..., None], D[..., None], p, beta)
        if k.affine:
            s, b = fit_affine(lv, t, wf, D, B, offset_nonpos=True, scale_nonneg=True)
        else:
            s, b = fit_scale(lv, t, wf, D), B
        st = _pick_sub(k, st, s, b, xg, wg, cfg.sub_scale_radius)
        st = _refit_super(k, st, xg, wf, p, beta)
        beta *= cfg.kappa
    pick = best["obj"].reshape(n_starts, n).argmin(dim=0)
    rows = pick * n + torch.arange(n)
    return {name: v[rows] for name, v in best.items()}


def _refit_super(k: _Super, st: State, xg: torch.Tensor, wf: torch.Tensor, p: float | None, beta: float) -> State:
    """(d, dmin) by weighted least squares to the HQ target under the current integers, snapped to fp16."""
    D, B = k.scales(st["d"], st["sc"], st.get("dmin"), st.get("mn"))
    q, lv = k.grid.codes(xg, D[..., None], B[..., None])
    t = hq_target(xg, D[..., None] * lv + B[..., None], D[..., None], p, beta).flatten(1)
    a = (st["sc"].to(torch.float64)[..., None] * lv).flatten(1)
    wflat = wf.flatten(1)
    if not k.affine:
        return st | {"d": fp16(fit_scale(a, t, wflat, st["d"]))}
    c = -st["mn"].to(torch.float64)[..., None].expand_as(lv).flatten(1)  # x = d*a + dmin*c
    d, dmin = _fit_pair(a, c, t, wflat, st["d"], st["dmin"])
    return st | {"d": fp16(d), "dmin": fp16(dmin)}
