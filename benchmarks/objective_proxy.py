"""Screen solver objectives per block type on a real model, without a full KLD run (minutes, not hours).

For sampled rows of each layer's matrices, every objective's solution is compared with llama.cpp's own answer on:
- the activation-weighted error ``sum_j imp_j * sum_i (w_ij - q_ij)**2`` (imp: an imatrix's mean squared
  activations: the diagonal of the first-order output error), and
- the plain squared error.

Ratios below 1 favour the objective over llama.cpp. It is a PROXY: it ranked Q3_K's objectives as KLD did on
Qwen2.5-Coder-1.5B (|x| best), but preferred llama.cpp's weights for Q4_K where KLD did not; defaults are
chosen by KLD (benchmarks/quality.py), this only says which runs are worth making. The imatrix is evaluation
data here, never an input of the product's defaults.

    python benchmarks/objective_proxy.py REF.F16.gguf IMATRIX.gguf --name qwen2.5-coder-1.5b \\
        --types Q3_K,Q4_K --weights llama,abs,none
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
import gguf
import numpy as np
import torch

from hqq2gguf import ggml_ref, pack
from hqq2gguf.calibrate import read_imatrix
from hqq2gguf.optimize import SolverConfig, WeightMode, solve

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MATRICES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def errors(x: np.ndarray, values: np.ndarray, imp: np.ndarray) -> tuple[float, float]:
    e2 = np.square(x.astype(np.float64) - values.astype(np.float64))
    return float((e2 * imp).sum()), float(e2.sum())


@click.command()
@click.argument("reference", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("imatrix", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True)
@click.option("--types", default="Q3_K,Q4_K,Q5_K,Q6_K,Q2_K,IQ4_XS,IQ4_NL", show_default=True)
@click.option("--weights", default="llama,abs,none", show_default=True, help="WeightMode values, comma-separated")
@click.option("--layers", default="2,14,27", show_default=True)
@click.option("--rows", type=int, default=256, show_default=True, help="rows sampled evenly from each matrix")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=RESULTS_DIR)
def main(reference: Path, imatrix: Path, name: str, types: str, weights: str, layers: str, rows: int,
         out_dir: Path) -> None:
    reader = gguf.GGUFReader(reference)
    tensors = {t.name: t for t in reader.tensors}
    importance = read_imatrix(imatrix)
    qtypes = [gguf.GGMLQuantizationType[t] for t in types.split(",")]
    modes = [WeightMode(w) for w in weights.split(",")]
    names = [f"blk.{layer}.{m}.weight" for layer in layers.split(",") for m in MATRICES]
    totals: dict[str, dict[str, list[float]]] = {}
    t0 = time.perf_counter()
    for tname in names:
        full = np.asarray(tensors[tname].data, dtype=np.float32)
        x = np.ascontiguousarray(full[np.linspace(0, full.shape[0] - 1, min(rows, full.shape[0])).astype(int)])
        imp = np.asarray(importance.for_tensor(tname, full.shape)[0], np.float64)
        for qt in qtypes:
            base = pack.decode(qt, pack.unpack(qt, ggml_ref.ggml_quantize(qt, x))).reshape(x.shape)
            base_err = errors(x, base, imp)
            for mode in modes:
                ours = solve(torch.from_numpy(x), qt, config=SolverConfig(weights=mode)).values
                acc = totals.setdefault(qt.name, {}).setdefault(mode.value, [0.0, 0.0, 0.0, 0.0])
                for i, v in enumerate((*errors(x, ours, imp), *base_err)):
                    acc[i] += v
        click.echo(f"{tname} done ({time.perf_counter() - t0:.0f} s)", err=True)
    table = {qt: {m: {"activation_weighted": a / c, "mse": b / d} for m, (a, b, c, d) in per.items()}
             for qt, per in totals.items()}
    doc = {"name": name, "reference": str(reference), "imatrix": str(imatrix), "tensors": names, "rows": rows,
           "command": " ".join([sys.executable, *sys.argv]), "ratios_vs_llama_cpp": table}
    out_dir.mkdir(parents=True, exist_ok=True)
    js = out_dir / f"objective_proxy_{name}.json"
    js.write_text(json.dumps(doc, indent=1) + "\n")
    lines = [f"# Objective screening proxy: {name}", "",
             f"Command: `{doc['command']}`", "",
             f"{len(names)} matrices (layers {layers}), {rows} rows each; ratios of ours / llama.cpp's answer "
             "(below 1: ours better). Activation-weighted: the imatrix's diagonal (evaluation data only). "
             "A proxy for choosing KLD runs, not a quality result (see the module docstring).", "",
             "| type | " + " | ".join(f"{m.value}: act.-weighted / MSE" for m in modes) + " |",
             "|---|" + "---|" * len(modes)]
    for qt, per in table.items():
        lines.append(f"| {qt} | " + " | ".join(
            f"{per[m.value]['activation_weighted']:.3f} / {per[m.value]['mse']:.3f}" for m in modes) + " |")
    md = js.with_suffix(".md")
    md.write_text("\n".join(lines) + "\n")
    click.echo(f"wrote {js} and {md}")


if __name__ == "__main__":
    main()
