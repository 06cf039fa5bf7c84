"""The allocation's windows against the whole ladder, on one model: every candidate of every matrix costed once
(every llama.cpp recipe's candidates, each costing timed), then at each recipe's bytes the allocation chosen
from the whole ladder and the one the product makes in widening windows (hqq2gguf.allocate.choose_in_windows,
here measuring from the costed tables). Same sensitivities for both (one measurement, seed 0); nothing is
written but the results. Also the whole ladder's allocation by the Lagrangian answer alone (hqq2gguf.allocate.choose
without its knapsack, as it chose before 2026-12-06), and the seconds the windows' choosing takes (its measuring
here is a table lookup). One JSON line per budget appended to benchmarks/results/allocation_windows.jsonl.

    python benchmarks/allocation_windows.py /work/models/ref/Qwen2.5-Coder-1.5B-Instruct.dithered-s1234.F16.gguf \
        --name qwen2.5-coder-1.5b
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import shlex
import sys
import time
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sensitivity_common import allocation_inputs  # noqa: E402

import hqq2gguf.allocate as A  # noqa: E402
from hqq2gguf.allocate.choose import Option, TensorOptions  # noqa: E402
from hqq2gguf.allocate.costs import file_bytes, tensor_cost  # noqa: E402
from hqq2gguf.calibrate import measure_sensitivity  # noqa: E402
from hqq2gguf.options import ConvertOptions  # noqa: E402
from quality import RESULTS_DIR, code_version, machine  # noqa: E402

BUDGETS = ("Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K")


@click.command()
@click.argument("reference", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True)
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path),
              default=RESULTS_DIR / "allocation_windows.jsonl")
def main(reference: Path, name: str, out_file: Path) -> None:
    logging.basicConfig(level=logging.WARNING)
    options, source, _, importance = allocation_inputs(reference, "Q4_K_M")
    layouts = {}
    for budget_name in BUDGETS:
        o = dataclasses.replace(ConvertOptions.from_args(recipe=budget_name, allocate=True, seed=0),
                                device=options.device)
        layouts[budget_name] = A._checked_budget(source, o)
    wanted: dict[str, list] = {}
    for layout, _, _ in layouts.values():
        for n, types in layout.candidates.items():
            wanted.setdefault(n, []).extend(t for t in types if t not in wanted.get(n, []))
    sensitivity = measure_sensitivity(reference, list(wanted), seed=0, written=importance.sequences)
    costs: dict[str, dict] = {}
    seconds: dict[tuple[str, object], float] = {}
    for n, data in source.tensors_named(set(wanted)):
        shape = tuple(data.shape)
        imp, act = importance.for_tensor(n, shape), sensitivity.activations.for_tensor(n, shape)
        for t in wanted[n]:  # as measure_costs costs it, one type at a time, timed
            t0 = time.perf_counter()
            cost = sensitivity.gain_of(n) * tensor_cost(data, t, options.solver, imp, act, options.device)
            seconds[n, t] = time.perf_counter() - t0
            costs.setdefault(n, {})[t] = Option(t, file_bytes(shape, t), cost)
    with out_file.open("a") as f:
        for budget_name, (layout, target, budget) in layouts.items():
            whole = [TensorOptions(n, tuple(costs[n][t] for t in types)) for n, types in layout.candidates.items()]
            recipe = {n: costs[n][layout.recipe[n].out_type] for n in layout.candidates}
            reference_choice = A._within_recipe_file(target, budget, A._Measured(whole, recipe, {}, 0.0), layout)
            asked: list[tuple[str, object]] = []

            def measure(w, layout=layout):
                asked.extend((n, t) for n, types in w.items() for t in types)
                return [TensorOptions(n, tuple(costs[n][t] for t in types)) for n, types in w.items()]

            t0 = time.perf_counter()
            windowed, _ = A.choose_in_windows(layout, target, budget, True, measure, {}, 0.0)
            choose_seconds = time.perf_counter() - t0
            lagrangian = _lagrangian_only(target, budget, A._Measured(whole, recipe, {}, 0.0), layout)
            every = [(n, t) for n, types in layout.candidates.items() for t in types]
            differ = [c.name for c, r in zip(windowed.choices, reference_choice.choices) if c.qtype != r.qtype]
            row = {"name": name, "budget": budget_name, "reference": str(reference), "code": code_version(),
                   "machine": machine(), "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
                   "tensors": len(layout.candidates), "differing_types": len(differ), "differing": differ[:20],
                   "predicted_cost_windowed": windowed.cost, "predicted_cost_whole": reference_choice.cost,
                   "bytes_windowed": windowed.nbytes, "bytes_whole": reference_choice.nbytes,
                   "predicted_cost_whole_lagrangian_only": lagrangian.cost, "bytes_whole_lagrangian_only":
                   lagrangian.nbytes, "differing_types_lagrangian_only":
                   sum(c.qtype != r.qtype for c, r in zip(lagrangian.choices, reference_choice.choices)),
                   "choose_seconds_windowed": round(choose_seconds, 2),
                   "candidates_measured": len(set(asked)), "candidates_whole": len(every),
                   "cost_seconds_measured": round(sum(seconds[k] for k in set(asked)), 2),
                   "cost_seconds_whole": round(sum(seconds[k] for k in every), 2)}
            f.write(json.dumps(row) + "\n")
            click.echo(f"{name} {budget_name}: {len(differ)} of {len(layout.candidates)} types differ; measured "
                       f"{row['candidates_measured']} of {row['candidates_whole']} candidates, "
                       f"{row['cost_seconds_measured']} of {row['cost_seconds_whole']} s of costing; predicted cost "
                       f"{reference_choice.cost:.4g} (Lagrangian alone {lagrangian.cost:.4g})")


def _lagrangian_only(target: str, budget: int, measured: A._Measured, layout: A._Layout) -> A.Allocation:
    """The whole ladder's allocation as choose made it before the knapsack: its trusted share at 0, so the
    Lagrangian answer and the greedy spending of what it leaves."""
    module = importlib.import_module("hqq2gguf.allocate.choose")
    trust, module.KNAPSACK_TRUST = module.KNAPSACK_TRUST, 0.0
    try:
        return A._within_recipe_file(target, budget, measured, layout)
    finally:
        module.KNAPSACK_TRUST = trust

if __name__ == "__main__":
    main()
