"""The allocation's windows: measuring each matrix's candidates in a window around its start type, widened where
the choice could move past it, gives the choice of measuring the whole ladder, on fewer candidates. Synthetic cost
tables here (costs fall about 4x per bit, with noise, some not convex); the stage end to end in test_allocate.py."""

from __future__ import annotations

import random

import gguf
import pytest

from hqq2gguf.allocate.choose import Option, TensorOptions, choose, feasible_range, total
from hqq2gguf.allocate.windows import Windows

Q = gguf.GGMLQuantizationType
BPW = {Q.Q2_K: 2.625, Q.Q3_K: 3.4375, Q.Q4_K: 4.5, Q.Q5_K: 5.5, Q.Q6_K: 6.5625, Q.Q8_0: 8.5, Q.F16: 16.0}


def _tensor(name: str, n_weights: int, gain: float, rng: random.Random, *, bump: float = 0.0) -> TensorOptions:
    """Costs ``gain * 4**-bpw`` times noise, F16 error-free; ``bump``: Q8_0 costs that much more (not convex)."""
    options = []
    for t, bpw in BPW.items():
        cost = 0.0 if t is Q.F16 else gain * 4.0 ** -bpw * rng.uniform(0.7, 1.3) * (1 + bump * (t is Q.Q8_0))
        options.append(Option(t, int(n_weights * bpw / 8), cost))
    return TensorOptions(name, tuple(options))


def _windowed(tables: list[TensorOptions], start: dict[str, Q], budget: int) -> tuple[dict[str, Option], int]:
    """The choice made as the allocation makes it (measure the windows, choose, widen), and how many candidates
    were measured."""
    full = {t.name: {o.qtype: o for o in t.options} for t in tables}
    ladders = {t.name: [(o.qtype, o.nbytes) for o in sorted(t.options, key=lambda o: o.order)] for t in tables}
    windows = Windows.around(ladders, start, budget)
    measured: dict[str, dict[Q, Option]] = {}
    while True:
        for name, types in windows.unmeasured(measured).items():
            measured.setdefault(name, {}).update((q, full[name][q]) for q in types)
        tables_now = windows.tables(measured)
        if feasible_range(tables_now)[0] > budget:
            assert windows.widen_down()
            continue
        chosen = choose(tables_now, budget)
        if not windows.widen(chosen, tables_now, budget - total(chosen)[0]):
            return chosen, sum(map(len, measured.values()))


def _random_model(seed: int, n: int = 60) -> tuple[list[TensorOptions], dict[str, Q]]:
    rng = random.Random(seed)
    tables = [_tensor(f"t{i:02d}", rng.choice([2**16, 2**18, 2**20]), 10 ** rng.uniform(0, 4), rng,
                      bump=rng.choice([0.0, 0.0, 0.0, 3.0])) for i in range(n)]
    start = {t.name: rng.choice([Q.Q3_K, Q.Q4_K, Q.Q4_K, Q.Q6_K]) for t in tables}
    return tables, start


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("where", [0.05, 0.3, 0.5, 0.7, 0.95])
def test_windows_choose_what_the_whole_ladder_chooses(seed: int, where: float) -> None:
    tables, start = _random_model(seed)
    low, high = feasible_range(tables)
    budget = int(low + where * (high - low))
    chosen, n_measured = _windowed(tables, start, budget)
    whole = choose(tables, budget)
    assert {n: o.qtype for n, o in chosen.items()} == {n: o.qtype for n, o in whole.items()}
    assert total(chosen)[0] <= budget


def test_windows_measure_fewer_candidates_near_the_start_types() -> None:
    tables, start = _random_model(0)
    start_bytes = sum(next(o.nbytes for o in t.options if o.qtype == start[t.name]) for t in tables)
    _, n_measured = _windowed(tables, start, start_bytes)
    assert n_measured < 0.75 * sum(len(t.options) for t in tables)


def test_a_tensor_moves_as_far_as_the_whole_ladder_moves_it() -> None:
    """A large, sensitive matrix started at Q2_K (a tied token embedding under a low recipe) whose whole-ladder
    choice is several steps up; the others near their start. It takes rounds of widening to get there."""
    rng = random.Random(7)
    tables = [_tensor(f"t{i:02d}", 2**16, 1.0, rng) for i in range(30)] + [_tensor("embd", 2**20, 1e6, rng)]
    start = {t.name: Q.Q4_K for t in tables} | {"embd": Q.Q2_K}
    budget = sum(int(2**16 * 4.5 / 8) for _ in range(30)) + int(2**20 * 8.5 / 8)
    whole = choose(tables, budget)
    assert whole["embd"].qtype in (Q.Q6_K, Q.Q8_0, Q.F16)
    chosen, _ = _windowed(tables, start, budget)
    assert {n: o.qtype for n, o in chosen.items()} == {n: o.qtype for n, o in whole.items()}


def test_an_error_free_top_past_a_non_convex_step_is_found() -> None:
    """Q8_0 no better than Q6_K (the convex hull jumps from Q6_K to F16): the window ending at Q8_0 must still
    widen to F16 when an error-free F16 saves more per byte than steps the choice took."""
    rng = random.Random(3)
    odd = TensorOptions("odd", tuple(Option(t, int(2**18 * b / 8), 0.0 if t is Q.F16 else
                                            (50.0 if t is Q.Q8_0 else 60.0 * 4.0 ** (6.5625 - b)))
                                     for t, b in BPW.items()))
    tables = [_tensor(f"t{i:02d}", 2**16, 1.0, rng) for i in range(30)] + [odd]
    start = {t.name: Q.Q4_K for t in tables} | {"odd": Q.Q6_K}
    budget = sum(int(2**16 * 4.5 / 8) for _ in range(30)) + 2**18 * 2
    whole = choose(tables, budget)
    assert whole["odd"].qtype is Q.F16
    chosen, _ = _windowed(tables, start, budget)
    assert {n: o.qtype for n, o in chosen.items()} == {n: o.qtype for n, o in whole.items()}


def test_a_size_target_shifts_every_window_to_the_nearest_mix() -> None:
    ladder = [(t, int(1000 * b)) for t, b in BPW.items()]
    ladders = {f"t{i}": ladder for i in range(4)}
    start = dict.fromkeys(ladders, Q.Q4_K)
    assert Windows.around(ladders, start, 4 * 4500).types("t0") == (Q.Q3_K, Q.Q4_K, Q.Q5_K)
    assert Windows.around(ladders, start, 4 * 8500).types("t0") == (Q.Q6_K, Q.Q8_0, Q.F16)
    low = Windows.around(ladders, start, 0)
    assert low.types("t0") == (Q.Q2_K, Q.Q3_K)
    assert low.unmeasured({}) == {f"t{i}": (Q.Q2_K, Q.Q3_K, Q.Q4_K) for i in range(4)}  # the start type too
