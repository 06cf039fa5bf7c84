"""Quantization wall time: hqq2gguf --type RECIPE (torch CPU path) vs llama.cpp's llama_model_quantize on the
same F16 GGUF, same machine, same thread count; the issue's target is <= 3x llama.cpp's time.

    python benchmarks/quantize_speed.py /work/models/ref/Qwen2.5-Coder-1.5B-Instruct.dithered-s1234.F16.gguf \\
        --name qwen2.5-1.5b --recipes Q4_K_M

Writes benchmarks/results/quantize_speed_<name>.json and .md. The two quantizers alternate (llama.cpp, ours,
llama.cpp, ...) ``--repeats`` times and the best time of each is reported, with the load average before every
run: a busy machine shows in the numbers instead of hiding in them.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import click
import gguf

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _llama_cpp(src: Path, dst: Path, recipe: str, threads: int) -> float:
    from hqq2gguf.baseline import llama_quantize

    return llama_quantize(src, dst, gguf.LlamaFileType[f"MOSTLY_{recipe}"], nthread=threads)


def _ours(src: Path, dst: Path, recipe: str, threads: int) -> float:
    from hqq2gguf.convert import convert
    from hqq2gguf.optimize import SolverConfig
    from hqq2gguf.options import ConvertOptions
    from hqq2gguf.recipes import Recipe

    t0 = time.perf_counter()
    convert(src, ConvertOptions(recipe=Recipe.parse(recipe), output=dst, force=True,
                                solver=SolverConfig(workers=threads)))
    return time.perf_counter() - t0


@click.command()
@click.argument("reference", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True)
@click.option("--recipes", default="Q4_K_M", show_default=True)
@click.option("--threads", type=int, default=os.cpu_count(), show_default=True)
@click.option("--repeats", type=int, default=1, show_default=True)
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              default=Path(__file__).resolve().parents[1] / ".cache" / "speed", show_default=True)
def main(reference: Path, name: str, recipes: str, threads: int, repeats: int, workdir: Path) -> None:
    logging.basicConfig(level=logging.WARNING)
    workdir.mkdir(parents=True, exist_ok=True)
    doc = {"name": name, "reference": str(reference), "threads": threads, "repeats": repeats,
           "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
           "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()}, "rows": []}
    for recipe in [r.strip() for r in recipes.split(",") if r.strip()]:
        runs: dict[str, list[tuple[float, float]]] = {"llama.cpp": [], "hqq2gguf": []}
        for _ in range(repeats):
            for quantizer, fn in (("llama.cpp", _llama_cpp), ("hqq2gguf", _ours)):
                load = os.getloadavg()[0]
                seconds = fn(reference, workdir / f"{name}.{quantizer}.{recipe}.gguf", recipe, threads)
                runs[quantizer].append((seconds, load))
                click.echo(f"{recipe} {quantizer}: {seconds:.1f} s (load average before: {load:.2f})")
        best = {q: min(r)[0] for q, r in runs.items()}
        doc["rows"].append({"recipe": recipe, "runs": runs, "best_seconds": best,
                            "ratio": best["hqq2gguf"] / best["llama.cpp"]})
    lines = [f"# Quantization wall time: {name}", "", f"Command: `{doc['command']}`", "",
             f"Input `{reference}`; {threads} threads for both; best of {repeats} alternating run(s); "
             f"machine {doc['machine']['platform']}, {os.cpu_count()} CPUs. Target: hqq2gguf <= 3x llama.cpp.", "",
             "| recipe | llama.cpp s | hqq2gguf s | ratio | target met | load averages (llama.cpp; ours) |",
             "|---|---|---|---|---|---|"]
    for row in doc["rows"]:
        loads = "; ".join(", ".join(f"{load:.1f}" for _, load in row["runs"][q]) for q in ("llama.cpp", "hqq2gguf"))
        lines.append(f"| {row['recipe']} | {row['best_seconds']['llama.cpp']:.1f} | "
                     f"{row['best_seconds']['hqq2gguf']:.1f} | {row['ratio']:.1f}x | "
                     f"{'yes' if row['ratio'] <= 3 else 'NO'} | {loads} |")
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / f"quantize_speed_{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    (RESULTS_DIR / f"quantize_speed_{name}.md").write_text("\n".join(lines) + "\n")
    click.echo("\n".join(lines))


if __name__ == "__main__":
    main()
