"""The choice: one type per tensor, the least total predicted cost whose bytes fit a budget.

    choice = choose(tables, budget)      # {name: Option}, sum of nbytes <= budget

Per tensor, only the lower convex hull of its (bytes, cost) points can be a Lagrangian answer: minimizing
``sum(cost) + lam * sum(bytes)`` picks, for each tensor, the hull vertex where the upgrade to the next one
saves less than ``lam`` per byte. Every hull segment (an upgrade) is therefore taken in the order of its
saving per byte; the multiplier is bisected over those breakpoints to the largest total that fits, and the
bytes left over go, greedily, to the best remaining cost-per-byte upgrades (hull or not) that still fit.
Pure and deterministic: equal savings are broken by tensor name, then by type bytes and id.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import gguf


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
    """The option of every tensor: the Lagrangian answer that fits ``budget`` bytes, then leftover upgrades.

    ``budget`` must be at least :func:`feasible_range`'s lower end (a ValueError otherwise: callers check)."""
    names = [t.name for t in tables]
    if len(set(names)) != len(names):
        raise ValueError("duplicate tensor names (internal error)")
    low, _ = feasible_range(tables)
    if budget < low:
        raise ValueError(f"budget {budget} below the smallest mix {low} (internal error)")
    hulls = {t.name: lower_hull(t.options) for t in tables}
    chosen = {name: hull[0] for name, hull in hulls.items()}
    upgrades = sorted((_Upgrade(name, b, b.nbytes - a.nbytes, _saving(a, b))
                       for name, hull in hulls.items() for a, b in zip(hull, hull[1:])), key=lambda u: u.key)
    spent: list[int] = []  # bytes of the first k upgrades: bisecting it bisects the multiplier
    for u in upgrades:
        spent.append((spent[-1] if spent else 0) + u.extra_bytes)
    taken = bisect.bisect_right(spent, budget - low)
    for u in upgrades[:taken]:
        chosen[u.name] = u.to
    _spend_leftover(tables, chosen, budget)
    return chosen


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
