"""Which candidates to measure: the whole ladder's choice, measured on a window of each matrix's candidates.

    windows = Windows.around(ladders, start, budget)    # candidates fewest bytes first; a start type each
    while True:
        measure windows.unmeasured(measured)             # name -> the window's types not measured yet
        chosen = the choice from windows.tables(measured)
        if not windows.widen(chosen, left): break        # left: the bytes the choice left unspent

A window starts one step either side of its matrix's start type (the recipe's; for a size or bpw target, every
matrix shifted by the same number of steps, to the mix nearest the budget) and widens by one step on a side the
choice could move past:

- down, when the matrix took its window's smallest type (a smaller type may serve it better still);
- up, when even an error-free next type would save more per extra byte than the least saving per byte of any step
  the choice took (each matrix's from the next smaller measured type that costs more), or would fit in the bytes
  the choice left unspent.

Measured against the whole ladder (every candidate costed, the same sensitivities): the same types for every
tensor on SmolLM2-135M, Qwen2.5-Coder-0.5B, Qwen2.5-Coder-1.5B and Gemma-3-270M at the byte sizes of llama.cpp's
Q2_K, Q3_K_M, Q4_K_M, Q5_K_M and Q6_K files (20 of 20 allocations identical), costing 0.46-0.99 of the whole
ladder's time (Qwen2.5-Coder-1.5B at Q4_K_M's bytes: 19.2 of 31.3 s; benchmarks/allocation_windows.py,
results/allocation_windows.jsonl). Measured on the same tables before settling on these rules: the least saving
per byte of an accepted step as the bar (not the best step left undone) and the unspent bytes both count; without
them Gemma-3-270M (whose tied token embedding moves several steps) lost up to 6 % in predicted cost. Not
guaranteed: the rules assume a type below the window costs no less than the window's smallest (a matrix whose
smaller type encodes it better would keep the window's), and the choice's last, greedy spending of leftover bytes
can land elsewhere with fewer candidates; on synthetic tables of 9 matrices, each step a large share of the budget,
6 of 1000 choices differ from the whole ladder's (up to 1.28x its predicted cost); of 60 matrices, none in 30.
The rules follow the Lagrangian answer's structure; where the choice is the knapsack's instead (:mod:`.choose`:
Gemma-3-270M at Q6_K's bytes, of the 20 above) its predicted cost measured 1.004x the whole ladder's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import gguf

from hqq2gguf.allocate.choose import Option, TensorOptions

Ladder = Sequence[tuple[gguf.GGMLQuantizationType, int]]
"""A matrix's candidate types with their bytes, fewest bytes first (ties by type id)."""


class Windows:
    """The measured window ``[lo, hi]`` (indices into its ladder) of every matrix."""

    def __init__(self, ladders: Mapping[str, Ladder], start: Mapping[str, int],
                 pinned: Mapping[str, gguf.GGMLQuantizationType] | None = None) -> None:
        self.ladders = {n: tuple(ladder) for n, ladder in ladders.items()}
        self.span = {n: [max(0, i - 1), min(len(self.ladders[n]) - 1, i + 1)] for n, i in start.items()}
        self.pinned = dict(pinned or {})

    @classmethod
    def around(cls, ladders: Mapping[str, Ladder], start: Mapping[str, gguf.GGMLQuantizationType],
               budget: int) -> Windows:
        """Windows around each matrix's ``start`` type, all shifted by the number of ladder steps whose mix of
        types is nearest ``budget`` (the matrices' bytes): none when the start types' own mix is. The start types
        are measured even when the windows leave them (the recipe's cost is reported beside the choice)."""
        index = {n: [t for t, _ in ladder].index(start[n]) for n, ladder in ladders.items()}
        longest = max(map(len, ladders.values()), default=1)

        def mix(shift: int) -> int:
            return sum(ladder[min(max(index[n] + shift, 0), len(ladder) - 1)][1] for n, ladder in ladders.items())

        shift = min(range(-longest, longest + 1), key=lambda k: (abs(mix(k) - budget), abs(k)))
        return cls(ladders, {n: min(max(i + shift, 0), len(ladders[n]) - 1) for n, i in index.items()}, start)

    def types(self, name: str) -> tuple[gguf.GGMLQuantizationType, ...]:
        lo, hi = self.span[name]
        return tuple(t for t, _ in self.ladders[name][lo:hi + 1])

    def unmeasured(self, measured: Mapping[str, Mapping[gguf.GGMLQuantizationType, Option]]
                   ) -> dict[str, tuple[gguf.GGMLQuantizationType, ...]]:
        """Every matrix with window (or pinned) types not in ``measured`` yet: those types, in ladder order."""
        out = {}
        for name in self.span:
            wanted = set(self.types(name)) | ({self.pinned[name]} if name in self.pinned else set())
            new = tuple(t for t, _ in self.ladders[name] if t in wanted and t not in measured.get(name, {}))
            if new:
                out[name] = new
        return out

    def tables(self, measured: Mapping[str, Mapping[gguf.GGMLQuantizationType, Option]]) -> list[TensorOptions]:
        """Each matrix's measured options within its window (the order of ``ladders``)."""
        return [TensorOptions(n, tuple(measured[n][t] for t in self.types(n))) for n in self.span]

    def widen_down(self) -> bool:
        """Every window one step down (the windows' smallest mix did not fit); False when none could."""
        grew = False
        for span in self.span.values():
            if span[0] > 0:
                span[0] -= 1
                grew = True
        return grew

    def widen(self, chosen: Mapping[str, Option], tables: Sequence[TensorOptions], left: int) -> bool:
        """Widen by the rules above, after a choice ``chosen`` from ``tables`` that left ``left`` bytes unspent;
        False when no window grew (the choice is the whole ladder's)."""
        accepted = [min((o.cost - c.cost) / (c.nbytes - o.nbytes) for o in below)
                    for t in tables
                    for c in (chosen[t.name],)
                    if (below := [o for o in t.options if o.nbytes < c.nbytes and o.cost > c.cost])]
        least = min(accepted, default=0.0)
        grew = False
        for t in tables:
            c, span, ladder = chosen[t.name], self.span[t.name], self.ladders[t.name]
            if c.qtype == ladder[span[0]][0] and span[0] > 0:
                span[0] -= 1
                grew = True
            if span[1] + 1 < len(ladder) and c.cost > 0:
                extra = ladder[span[1] + 1][1] - c.nbytes
                if extra <= left or c.cost / extra > least:
                    span[1] += 1
                    grew = True
        return grew
