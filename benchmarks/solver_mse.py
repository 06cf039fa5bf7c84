"""Weighted MSE of the HQQ solver relative to llama.cpp's own quantizer, per type and solver config.

Data: slices of real weights from the DITHERED F16 references (shared/eval/README.md: dequantized source
+ uniform +-step/2 noise, seed 1234) -- the very files KLD is measured against. Undithered weights sit
exactly on their source grids and would make the numbers meaningless.

    python benchmarks/solver_mse.py --rows 32            # writes benchmarks/results/solver_mse.{json,md}

Per (type, config): ``ratio`` = sum of the config's objective over all blocks / the same for llama.cpp's
answer (< 1 = better); ``mse_ratio`` = the same for the plain unweighted MSE (comparable across configs);
``weights_per_s`` = solver throughput (whole ``solve`` incl. llama.cpp's start). MSE is not KLD.
"""

from __future__ import annotations

import json
import logging
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import click
import gguf
import numpy as np
import torch

from hqq2gguf import ggml_ref
from hqq2gguf.optimize import SOLVER_TYPES, Preset, SolverConfig, WeightMode, solve
from hqq2gguf.qtypes import spec

logger = logging.getLogger("solver_mse")
SOURCES = {  # file names in --ref-dir (benchmarks/dither.py writes them)
    "Qwen2.5-Coder-1.5B-Instruct.dithered-s1234.F16.gguf":
        ("blk.5.attn_q.weight", "blk.5.attn_v.weight", "blk.5.ffn_gate.weight", "blk.5.ffn_down.weight"),
    "SmolLM2-135M-Instruct.dithered-s1234.F16.gguf":
        ("blk.5.attn_q.weight", "blk.5.ffn_up.weight", "blk.5.ffn_down.weight"),
}
_THOROUGH = SolverConfig.preset(Preset.THOROUGH)
CONFIGS: dict[str, SolverConfig] = {
    "fast": SolverConfig(),  # the default: llama weights, p = 0.7, one extra (full-range) start, <= 4 iterations (Q4_K 2)
    "thorough": _THOROUGH,  # 5 extra starts, 12 iterations, no early stop
    "plain-ls": replace(_THOROUGH, p=2.0),  # same weights, no shrinkage (alternating least squares)
    "square": replace(_THOROUGH, weights=WeightMode.SQUARE),  # x^2 weights, p = 0.7
    "unweighted": replace(_THOROUGH, weights=WeightMode.NONE),  # w = 1, p = 0.7
    "strong-shrink": replace(_THOROUGH, beta0=3.0),  # llama weights, p = 0.7, shrink from 0.2 steps on
}
OUT = Path(__file__).parent / "results" / "solver_mse"
TYPE_ORDER = [t.name for t in SOLVER_TYPES]


def _previous(configs: set[str], types: set[str]) -> list[dict]:
    """Results of earlier runs kept in the json, except the (type, config) pairs this run measures again."""
    path = OUT.with_suffix(".json")
    if not path.exists():
        return []
    old = json.loads(path.read_text())["results"]
    for r in old:  # before the fast default existed, "default" was today's "thorough"
        r["config"] = "thorough" if r["config"] == "default" else r["config"]
    return [r for r in old if r["config"] in CONFIGS and not (r["config"] in configs and r["type"] in types)]


def load_slices(ref_dir: Path, rows: int) -> dict[str, np.ndarray]:
    """The first ``rows`` rows of each benchmark tensor, float32 (rows, ne0), keyed 'model:tensor'."""
    out = {}
    for file_name, names in SOURCES.items():
        path = ref_dir / file_name
        reader = gguf.GGUFReader(path)
        by_name = {t.name: t for t in reader.tensors}
        for name in names:
            out[f"{path.name.split('.dithered')[0]}:{name}"] = np.asarray(by_name[name].data[:rows], dtype=np.float32)
    return out


def measure(qtype: gguf.GGMLQuantizationType, slices: dict[str, np.ndarray], name: str, cfg: SolverConfig) -> dict:
    obj = base = mse = base_mse = 0.0
    n_weights, t_solver, t_llama = 0, 0.0, 0.0
    used = []
    for key, x in slices.items():
        if x.shape[1] % spec(qtype).block_size:
            continue
        t0 = time.perf_counter()
        sol = solve(torch.from_numpy(x), qtype, config=cfg)
        t1 = time.perf_counter()
        llama = ggml_ref.ggml_dequantize(qtype, ggml_ref.ggml_quantize(qtype, x))
        t_llama += time.perf_counter() - t1
        t_solver += t1 - t0
        obj, base = obj + sol.objective.sum(), base + sol.baseline_objective.sum()
        mse += float(((x.astype(np.float64) - sol.values) ** 2).sum())
        base_mse += float(((x.astype(np.float64) - llama) ** 2).sum())
        n_weights += x.size
        used.append(key)
    return {"type": qtype.name, "config": name, "ratio": obj / base if base else 1.0,
            "mse_ratio": mse / base_mse if base_mse else 1.0, "weights": n_weights,
            "weights_per_s": n_weights / t_solver, "llama_weights_per_s": n_weights / max(t_llama, 1e-9),
            "tensors": used}


def write_markdown(results: list[dict], meta: dict, path: Path) -> None:
    names = list(dict.fromkeys(r["config"] for r in results))
    lines = ["# HQQ solver vs llama.cpp: relative weighted MSE (< 1 = better)\n",
             f"Command: `{meta['command']}`  ", f"Data: {meta['data']}  ", f"Machine: {meta['machine']}\n",
             "Cell: objective ratio under the config's own weights / plain-MSE ratio / solver weights/s "
             "(wall clock, whole `solve`). Last column: llama.cpp's own quantizer (ggml_quantize_chunk, 1 thread). "
             "Columns for configs not named in the command come from earlier runs (their speeds from older code).\n",
             "| type | " + " | ".join(names) + " | llama.cpp |", "|---|" + "---|" * (len(names) + 1)]
    for t in dict.fromkeys(r["type"] for r in results):
        cells = []
        for n in names:
            r = next((r for r in results if r["type"] == t and r["config"] == n), None)
            if r is None:
                cells.append("-")
                continue
            cells.append(f"{r['ratio']:.3f} / {r['mse_ratio']:.3f} / {r['weights_per_s'] / 1e3:.0f}k")
        llama = [r["llama_weights_per_s"] for r in results if r["type"] == t]
        cells.append(f"{max(llama) / 1e6:.1f}M" if llama else "-")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    lines.append("\nConfigs: " + "; ".join(f"**{n}**: `{c}`" for n, c in CONFIGS.items() if n in names))
    path.write_text("\n".join(lines) + "\n")


@click.command()
@click.option("--ref-dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="the directory of the dithered F16 references (benchmarks/dither.py)")
@click.option("--rows", default=32, show_default=True, help="rows taken from each tensor")
@click.option("--types", default=",".join(t.name for t in SOLVER_TYPES), show_default=True)
@click.option("--configs", default=",".join(CONFIGS), show_default=True, help="comma-separated config names")
def main(ref_dir: Path, rows: int, types: str, configs: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    slices = load_slices(ref_dir, rows)
    qtypes = [gguf.GGMLQuantizationType[t.strip()] for t in types.split(",")]
    results = _previous(set(configs.split(",")), {q.name for q in qtypes})
    meta = {"command": "python benchmarks/solver_mse.py " + " ".join(sys.argv[1:])
                       + "  (results of earlier runs for other configs/types are kept)",
            "data": f"first {rows} rows of {', '.join(slices)} (dithered F16 references, seed 1234)",
            "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                       f"solver threads per SolverConfig.threads (default 1)"}
    for qt in qtypes:
        for name in configs.split(","):
            r = measure(qt, slices, name, CONFIGS[name])
            logger.info("%-7s %-26s ratio %.4f  mse %.4f  %.0f w/s", qt.name, name, r["ratio"], r["mse_ratio"],
                        r["weights_per_s"])
            results.append(r)
            results.sort(key=lambda r: (TYPE_ORDER.index(r["type"]), list(CONFIGS).index(r["config"])))
            OUT.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    write_markdown(results, meta, OUT.with_suffix(".md"))


if __name__ == "__main__":
    main()
