"""What each solver setting buys and costs, per block type, on sampled rows of a real model: the objective ratio
to llama.cpp's own answer and the solve seconds (one thread), with and without column importance.

It screens speed levers (fewer iterations, no extra start) before any KLD run: a setting that leaves the
objective where it is, at a fraction of the time, is worth a quality run; one that loses objective is not.
The objective is the solver's own (what it minimizes), not KLD.

    python benchmarks/solver_levers.py /work/models/ref/Qwen2.5-Coder-1.5B-Instruct.dithered-s1234.F16.gguf \\
        --name qwen2.5-coder-1.5b --imatrix /work/models/imatrix/qwen1.5b-self.gguf

Rows: 192 sampled rows (seed 0) of attn_q, ffn_down and ffn_up in three layers (early, middle, late). The
imatrix, if given, is any llama.cpp imatrix of the model (e.g. ``hqq2gguf imatrix``: the model's own text).
Writes benchmarks/results/solver_levers_<name>.{json,md}.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
import time
from pathlib import Path

import click
import gguf
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from convert_resources import write_results  # noqa: E402
from hqq2gguf.calibrate.imatrix import read_imatrix
from hqq2gguf.optimize import SolverConfig, WeightMode, solve
from hqq2gguf.optimize.config import TYPE_ITERATIONS

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TYPES = ("Q4_0", "Q5_0", "Q4_1", "Q5_1", "IQ4_NL", "TQ2_0", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS")
SETTINGS: dict[str, dict[str, object]] = {
    "default": {},
    "0 iterations": {"iterations": 0},
    "1 iteration": {"iterations": 1},
    "2 iterations": {"iterations": 2},
    "llama.cpp's start only": {"range_factors": ()},
    "llama.cpp's start only, 1 iteration": {"range_factors": (), "iterations": 1},
}


def sample_rows(path: Path, rows: int, layers: tuple[int, ...]) -> list[tuple[str, np.ndarray]]:
    reader = gguf.GGUFReader(path)
    by_name = {t.name: t for t in reader.tensors}
    rng = np.random.default_rng(0)
    out = []
    for layer in layers:
        for matrix in ("attn_q", "ffn_down", "ffn_up"):
            name = f"blk.{layer}.{matrix}.weight"
            data = np.asarray(by_name[name].data).astype(np.float32)
            pick = np.sort(rng.choice(data.shape[0], min(rows, data.shape[0]), replace=False))
            out.append((name, data[pick]))
    return out


@click.command()
@click.argument("reference", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True)
@click.option("--imatrix", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.option("--types", default=",".join(TYPES), show_default=True)
@click.option("--rows", type=int, default=192, show_default=True)
@click.option("--layers", default="3,14,26", show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=RESULTS_DIR)
def main(reference: Path, name: str, imatrix: Path | None, types: str, rows: int, layers: str, out_dir: Path) -> None:
    mats = sample_rows(reference, rows, tuple(int(v) for v in layers.split(",")))
    imp = read_imatrix(imatrix) if imatrix is not None else None
    doc = {"name": name, "reference": str(reference), "imatrix": None if imatrix is None else str(imatrix),
           "command": shlex.join([sys.executable, *sys.argv]), "matrices": [n for n, _ in mats], "rows": rows,
           "type_iterations": TYPE_ITERATIONS, "results": []}
    modes = [("no importance", WeightMode.AUTO)] + ([("importance", WeightMode.IMPORTANCE)] if imp else [])
    for qname in types.split(","):
        qtype = gguf.GGMLQuantizationType[qname]
        for mode_name, mode in modes:
            for label, overrides in SETTINGS.items():
                cfg = dataclasses.replace(SolverConfig(workers=1, weights=mode, llama_cpp_types=()), **overrides)
                obj = base = seconds = 0.0
                for tensor, x in mats:
                    vec = None
                    if mode is WeightMode.IMPORTANCE:
                        vec = torch.from_numpy(np.asarray(imp.entries[tensor], dtype=np.float32).reshape(-1))
                    t0 = time.perf_counter()
                    s = solve(torch.from_numpy(x), qtype, importance=vec, config=cfg)
                    seconds += time.perf_counter() - t0
                    obj += float(s.objective.sum())
                    base += float(s.baseline_objective.sum())
                doc["results"].append({"type": qname, "importance": mode_name, "setting": label,
                                       "ratio": obj / base, "seconds": seconds})
                click.echo(f"{qname} {mode_name} {label}: {obj / base:.4f} {seconds:.2f} s", err=True)
    write_results(out_dir, f"solver_levers_{name}", doc, render)


def render(doc: dict) -> str:
    labels = list(SETTINGS)
    lines = [f"# Solver levers: {doc['name']}", "", f"Command: `{doc['command']}`", "",
             f"{len(doc['matrices'])} matrices ({', '.join(doc['matrices'])}), {doc['rows']} sampled rows each. "
             "Each cell: the solver's objective / llama.cpp's answer's on the same objective (lower is better; "
             "1.0000 = llama.cpp's blocks) and the solve seconds on ONE thread (llama.cpp's own answer, the "
             "weights and the float64 re-check included). Importance: "
             + (f"`{doc['imatrix']}` (its llama.cpp answer is then llama.cpp's imatrix path)." if doc["imatrix"]
                else "none.") + f" Default iterations: 4, except {doc['type_iterations']}.", "",
             "| type | importance | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    cells: dict[tuple[str, str], dict[str, dict]] = {}
    for r in doc["results"]:
        cells.setdefault((r["type"], r["importance"]), {})[r["setting"]] = r
    for (qtype, imp), row in cells.items():
        lines.append(f"| {qtype} | {imp} | " + " | ".join(
            f"{row[label]['ratio']:.4f}, {row[label]['seconds']:.2f} s" if label in row else "" for label in labels)
            + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
