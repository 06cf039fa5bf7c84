"""The choice: one type per tensor, the least total predicted cost whose bytes fit a budget.

    choice = choose(tables, budget)      # {name: Option}, sum of nbytes <= budget

The Lagrangian answer; a knapsack's instead where the knapsack predicts well under the Lagrangian's cost.

- Lagrangian: per tensor, only the lower convex hull of its (bytes, cost) points can be a Lagrangian answer:
  minimizing ``sum(cost) + lam * sum(bytes)`` picks, for each tensor, the hull vertex where the upgrade to the
  next one saves less than ``lam`` per byte. Every hull segment (an upgrade) is therefore taken in the order of
  its saving per byte; the multiplier is bisected over those breakpoints to the largest total that fits.
- Knapsack, solved only where the linear relaxation's bound leaves room for an answer under
  :data:`KNAPSACK_TRUST` x the Lagrangian's cost: a dynamic program over the bytes above the smallest mix in
  :data:`KNAPSACK_UNITS` units (each option's extra bytes rounded up, so whatever it picks fits), exact up to that
  rounding.

The Lagrangian answer is optimal where it spends the budget exactly; it stops before an upgrade that does not fit
whole, and where one tensor's step is a large share of the budget (the tied token embedding of a large vocabulary)
that can leave it far from the optimum: Gemma-3-270M at Q6_K's bytes kept its embedding at Q5_1 and spread the
bytes over F16 copies of small matrices, at 2.2x the knapsack's predicted cost. In both answers the bytes left
over then go, greedily, to the best remaining cost-per-byte upgrades (hull or not) that still fit.
Pure and deterministic: equal savings are broken by tensor name, then by type bytes and id; the knapsack visits
tensors by name.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import gguf
import numpy as np


#: The knapsack's answer is taken only where it predicts less than this share of the Lagrangian answer's cost. It
#: rearranges many matrices at once, and the predicted cost of a rearranged mix is off by about 2x (README,
#: "Per-tensor allocation"): a modest predicted gain is no evidence. Measured, the knapsack's answer against the
#: Lagrangian's (mean KLD, 40 wiki chunks, seed 0, chunk-paired; benchmarks/results/allocation_settings_*.jsonl, tags
#: *-knapsack-* and *-trust*): predicted 0.46x / 0.60x / 0.57x gave 0.555 +- 0.027x / 0.654 +- 0.034x / 0.965 +-
#: 0.039x (Gemma-3-270M at Q6_K's bytes and at 273.9 MB, SmolLM2-135M at 176.0 MB); predicted 0.77x / 0.80x / 0.94x
#: gave 1.152 +- 0.043x / 1.470 +- 0.166x / 1.462 +- 0.102x (SmolLM2-135M at 102.8 MB, Qwen2.5-Coder-0.5B at 518.6 MB
#: and at Q5_K_M's bytes). 0.7 lies between the two groups: set on these six, not derived.
KNAPSACK_TRUST = 0.7
#: The knapsack counts the bytes above the smallest mix in at most this many units: each of N tensors' options
#: rounds up by less than one unit, so at most N units of the budget can go unused before the greedy spending
#: of what is left. Where it is solved the windows' choosing took 0.33 s in all (Gemma-3-270M at Q6_K's bytes, 127
#: tensors; choose_seconds_windowed in benchmarks/results/allocation_windows.jsonl); elsewhere <= 0.07 s.
KNAPSACK_UNITS = 32_768


@dataclass(frozen=True)
class Option:
    """One candidate type of one tensor: the bytes it takes in the file and the error it is predicted to cost."""

    qtype: gguf.GGMLQuantizationType
    nbytes: int
    cost: float

    @property
    def order(self) -> tuple[int, int]:
        """Tie-break order among a tensor's options: fewer bytes first, then the ggml type id."""
        return self.nbytes, int(self.qtype)


@dataclass(frozen=True)
class TensorOptions:
    """Every candidate of one tensor."""

    name: str
    options: tuple[Option, ...]

    def smallest(self) -> Option:
        return min(self.options, key=lambda o: (o.order, o.cost))

    def largest(self) -> Option:
        return max(self.options, key=lambda o: o.order)


@dataclass(frozen=True)
class _Upgrade:
    name: str
    to: Option
    extra_bytes: int
    saving: float  # cost saved per byte

    @property
    def key(self) -> tuple[float, str, int, int]:
        return -self.saving, self.name, *self.to.order


def feasible_range(tables: Sequence[TensorOptions]) -> tuple[int, int]:
    """The bytes of the smallest and of the largest mix."""
    return sum(t.smallest().nbytes for t in tables), sum(t.largest().nbytes for t in tables)


def lower_hull(options: Sequence[Option]) -> list[Option]:
    """The options on the lower convex hull of (bytes, cost), fewest bytes first: each one costs strictly less
    than the one before, and the saving per extra byte strictly falls along the hull."""
    hull: list[Option] = []
    for o in sorted(options, key=lambda o: (o.nbytes, o.cost, int(o.qtype))):
        if hull and (o.nbytes == hull[-1].nbytes or o.cost >= hull[-1].cost):
            continue  # as many bytes as a cheaper one, or no cheaper than one with fewer bytes
        while len(hull) >= 2 and _saving(hull[-2], hull[-1]) <= _saving(hull[-1], o):
            hull.pop()  # not convex: the middle point is never a Lagrangian answer
        hull.append(o)
    return hull


def _saving(a: Option, b: Option) -> float:
    """Cost saved per extra byte going from ``a`` to ``b`` (b has more bytes)."""
    return (a.cost - b.cost) / (b.nbytes - a.nbytes)


def choose(tables: Sequence[TensorOptions], budget: int) -> dict[str, Option]:
    """The option of every tensor: the Lagrangian answer that fits ``budget`` bytes, or the knapsack's where that
    predicts under :data:`KNAPSACK_TRUST` x its cost, each completed by the greedy leftover upgrades.

    ``budget`` must be at least :func:`feasible_range`'s lower end (a ValueError otherwise: callers check)."""
    names = [t.name for t in tables]
    if len(set(names)) != len(names):
        raise ValueError("duplicate tensor names (internal error)")
    low, _ = feasible_range(tables)
    if budget < low:
        raise ValueError(f"budget {budget} below the smallest mix {low} (internal error)")
    lagrangian, bound = _lagrangian(tables, budget - low)
    _spend_leftover(tables, lagrangian, budget)
    trusted = KNAPSACK_TRUST * _cost(lagrangian)
    if bound >= trusted:
        return lagrangian  # no choice can predict less than that
    knapsack = _knapsack(tables, budget - low)
    _spend_leftover(tables, knapsack, budget)
    return knapsack if _cost(knapsack) < trusted else lagrangian


def _cost(chosen: Mapping[str, Option]) -> float:
    return math.fsum(chosen[n].cost for n in sorted(chosen))


def _lagrangian(tables: Sequence[TensorOptions], extra: int) -> tuple[dict[str, Option], float]:
    """The hull upgrades in order of saving per byte, as many as fit in ``extra`` bytes above the smallest mix;
    and a lower bound of every choice's cost (the linear relaxation's: those upgrades and the part of the next
    one that fits)."""
    hulls = {t.name: lower_hull(t.options) for t in tables}
    chosen = {name: hull[0] for name, hull in hulls.items()}
    upgrades = sorted((_Upgrade(name, b, b.nbytes - a.nbytes, _saving(a, b))
                       for name, hull in hulls.items() for a, b in zip(hull, hull[1:])), key=lambda u: u.key)
    spent: list[int] = []  # bytes of the first k upgrades: bisecting it bisects the multiplier
    for u in upgrades:
        spent.append((spent[-1] if spent else 0) + u.extra_bytes)
    taken = bisect.bisect_right(spent, extra)
    for u in upgrades[:taken]:
        chosen[u.name] = u.to
    bound = _cost(chosen)
    if taken < len(upgrades):
        bound -= upgrades[taken].saving * (extra - (spent[taken - 1] if taken else 0))
    return chosen, bound


def _knapsack(tables: Sequence[TensorOptions], extra: int) -> dict[str, Option]:
    """The least-cost choice whose bytes above the smallest mix, each option's rounded up to whole units of
    ``ceil(extra / KNAPSACK_UNITS)`` bytes, fit in ``extra`` (a multiple-choice knapsack, by dynamic program)."""
    unit = max(1, -(-extra // KNAPSACK_UNITS))
    capacity = extra // unit
    ordered = sorted(tables, key=lambda t: t.name)
    if any(len(t.options) > 127 for t in ordered):
        raise ValueError("more than 127 candidate types for one tensor (internal error)")
    # each tensor's options, fewest bytes first, with the units each takes above its smallest
    weighted = []
    for t in ordered:
        options = sorted(t.options, key=lambda o: (o.order, o.cost))
        weighted.append([(o, -(-(o.nbytes - options[0].nbytes) // unit)) for o in options])
    best = np.zeros(capacity + 1)  # least cost of the tensors so far within each capacity
    picks = np.empty((len(ordered), capacity + 1), dtype=np.int8)
    for k, options in enumerate(weighted):
        new = np.full(capacity + 1, np.inf)
        for i, (o, w) in enumerate(options):
            if w > capacity:
                continue
            candidate = np.full(capacity + 1, np.inf)
            candidate[w:] = best[:capacity + 1 - w] + o.cost
            better = candidate < new
            new[better] = candidate[better]
            picks[k, better] = i
        best = new
    chosen, left = {}, capacity
    for k in reversed(range(len(ordered))):
        o, w = weighted[k][picks[k, left]]
        chosen[ordered[k].name] = o
        left -= w
    return {t.name: chosen[t.name] for t in tables}


def _spend_leftover(tables: Sequence[TensorOptions], chosen: dict[str, Option], budget: int) -> None:
    """Greedily take the upgrade with the best saving per byte that still fits, until none does."""
    while True:
        left = budget - sum(o.nbytes for o in chosen.values())
        best: _Upgrade | None = None
        for t in tables:
            now = chosen[t.name]
            for o in t.options:
                extra = o.nbytes - now.nbytes
                if 0 < extra <= left and o.cost < now.cost:
                    u = _Upgrade(t.name, o, extra, (now.cost - o.cost) / extra)
                    if best is None or u.key < best.key:
                        best = u
        if best is None:
            return
        chosen[best.name] = best.to


def total(chosen: Mapping[str, Option]) -> tuple[int, float]:
    """Bytes and predicted cost of a choice."""
    return sum(o.nbytes for o in chosen.values()), sum(o.cost for o in chosen.values())
