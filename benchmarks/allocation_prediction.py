"""Is the allocator's prediction right? For the recipe's types and for the allocated mix of ``--type RECIPE
--allocate``: the predicted KLD (the sum of the chosen options' costs: error energy x the layer x kind gain), and the
KLD measured when every allocated matrix's output carries isotropic noise of exactly its predicted error energy
(all at once, on the probes' text: what the per-matrix sensitivities, not their layer x kind model, say the mix
costs). The real KLD of the files is in allocation_<name>.json. An experiment: it patches the probe's noise.

    python benchmarks/allocation_prediction.py REF.F16.gguf --name smollm2 --recipe Q4_K_M

Appends one JSON line per run to benchmarks/results/allocation_prediction.jsonl.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import math
import shlex
import sys
import time
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import hqq2gguf.allocate as allocate_module  # noqa: E402
import hqq2gguf.calibrate.sensitivity as S  # noqa: E402
from hqq2gguf.calibrate import column_importance  # noqa: E402
from hqq2gguf.cuda import resolve_device  # noqa: E402
from hqq2gguf.options import ConvertOptions  # noqa: E402
from hqq2gguf.sources import open_source  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quantize_speed import code_version  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "allocation_prediction.jsonl"


@click.command()
@click.argument("reference", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True)
@click.option("--recipe", default="Q4_K_M", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--noise-seeds", type=int, default=3, show_default=True)
def main(reference: Path, name: str, recipe: str, seed: int, noise_seeds: int) -> None:
    options = ConvertOptions.from_args(recipe=recipe, allocate=True, seed=seed)
    options = dataclasses.replace(options, device=resolve_device(options.device))
    source = open_source(reference, options)
    importance = column_importance(source, options, reference)
    measured = {}
    measure = allocate_module.measure_sensitivity

    def keep(*args, **kwargs):
        measured["s"] = measure(*args, **kwargs)
        return measured["s"]

    allocate_module.measure_sensitivity = keep
    allocation = allocate_module.allocate(source, options, importance, reference)
    gain = measured["s"].gain
    energy = {"recipe": {c.name: c.recipe_cost / gain[c.name] for c in allocation.choices},
              "allocated": {c.name: c.cost / gain[c.name] for c in allocation.choices}}
    row = {"name": name, "recipe": recipe, "seed": seed, "code": code_version(),
           "command": shlex.join([sys.executable, *sys.argv]), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "predicted": {"recipe": allocation.recipe_cost, "allocated": allocation.cost}}
    absolute: dict[str, float] = {}

    def inject(self, t, tensor_name):  # the predicted energy per token, spread evenly over the outputs
        n_out, n_tok = int(t.ne[0]), int(t.ne[1]) * int(t.ne[2]) * int(t.ne[3])
        y = np.ctypeslib.as_array((ctypes.c_float * (n_out * n_tok)).from_address(t.data))
        var = absolute[tensor_name] / n_out
        y += self.rng.standard_normal(y.size, dtype=np.float32) * np.float32(math.sqrt(var))
        self.energy[tensor_name] = self.energy.get(tensor_name, 0.0) + var * n_out * n_tok
        self.tokens[tensor_name] = self.tokens.get(tensor_name, 0) + n_tok

    S._Probe._inject = inject
    text = S.SelfText(**{**S.PROBE_TEXT.__dict__, "seed": seed})
    with S._Probe(reference, text, set(energy["recipe"]), None, S.probe_sequences(importance.sequences, text)) as p:
        for mix, e in energy.items():
            absolute.clear()
            absolute.update(e)
            row[f"noise_{mix}"] = [p.kld(dict.fromkeys(e, 1.0), seed=s)[0] for s in range(noise_seeds)]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(row) + "\n")
    click.echo(json.dumps(row))


if __name__ == "__main__":
    main()
