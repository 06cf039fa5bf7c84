"""Quantization wall time, as a user sees it: ``hqq2gguf convert --type RECIPE`` against llama.cpp's quantizer on
the same F16 GGUF, same machine, same threads, each in its own child process (start-up and imports included).

    python benchmarks/quantize_speed.py /work/models/ref/Qwen2.5-Coder-1.5B-Instruct.dithered-s1234.F16.gguf \\
        --name qwen2.5-coder-1.5b --recipes all --llama-quantize .cache/llama-tools/build/bin/llama-quantize

Per recipe, alternating ``--repeats`` times: llama-quantize (the binary when given, else llama-cpp-python's
``llama_model_quantize`` in a child), ``hqq2gguf convert --calibration none`` (the solver alone: what the
speed target is about) and, with ``--default``, ``hqq2gguf convert`` with its defaults (self-calibration where
the recipe has it), reported beside it. The best time of each is kept; the load average before every run and
each child's peak RSS (against the streaming bound: the input once, whose memory-mapped pages count in RSS, + 3 x
the largest tensor + 1 GiB) are recorded, so a busy machine shows in the numbers instead of hiding in them.
Target (issue 16): hqq2gguf --calibration none <= 3x llama.cpp's time + ``--slack`` seconds (0 for
Qwen2.5-Coder-1.5B, 5 for SmolLM2: start-up). Writes benchmarks/results/quantize_speed_<name>.{json,md}.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent))
from convert_resources import GIB, environment, measure, write_results  # noqa: E402
from default_convert import largest_tensor_bytes, quantize_command  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
ALL_RECIPES = ("Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_1", "Q4_0", "IQ4_NL",
               "IQ4_XS", "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K", "TQ2_0", "TQ1_0")
LLAMA, NONE, DEFAULT = "llama.cpp", "hqq2gguf --calibration none", "hqq2gguf default"


def commands(reference: Path, work: Path, name: str, recipe: str, threads: int, llama_quantize: Path | None,
             default: bool) -> dict[str, list[str]]:
    hqq = [sys.executable, "-m", "hqq2gguf", "-v", "convert", str(reference), "--type", recipe, "--force"]
    runs = {LLAMA: quantize_command(llama_quantize, reference, work / f"{name}.llama.{recipe}.gguf", recipe, threads),
            NONE: [*hqq, "-o", str(work / f"{name}.none.{recipe}.gguf"), "--calibration", "none"]}
    if default:
        runs[DEFAULT] = [*hqq, "-o", str(work / f"{name}.default.{recipe}.gguf")]
    return runs


def code_version() -> str:
    """The commit the measured hqq2gguf comes from (the tree this script lives in)."""
    done = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


@click.command()
@click.argument("reference", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True)
@click.option("--recipes", default="all", show_default=True, help="Comma-separated, or 'all' (the 18).")
@click.option("--threads", type=int, default=os.cpu_count(), show_default=True,
              help="llama.cpp's threads; hqq2gguf uses every CPU the process may run on (the same here).")
@click.option("--repeats", type=int, default=1, show_default=True)
@click.option("--slack", type=float, default=0.0, show_default=True, help="Seconds added to 3x llama.cpp's time.")
@click.option("--default/--no-default", "default", default=False, help="Also time the default convert.")
@click.option("--llama-quantize", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              default=Path(__file__).resolve().parents[1] / ".cache" / "speed", show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=RESULTS_DIR)
@click.option("--update", is_flag=True,
              help="Re-measure only --recipes in an existing results file: their rows are replaced (each row names "
                   "the code it measured), the others kept, the command of the update recorded beside the first.")
def main(reference: Path, name: str, recipes: str, threads: int, repeats: int, slack: float, default: bool,
         llama_quantize: Path | None, workdir: Path, out_dir: Path, update: bool) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    big_name, big = largest_tensor_bytes(reference)
    bound = reference.stat().st_size + 3 * big + GIB  # a memory-mapped input's pages count in RSS
    wanted = ALL_RECIPES if recipes == "all" else tuple(r.strip() for r in recipes.split(",") if r.strip())
    doc = {"name": name, "reference": str(reference), "threads": threads, "repeats": repeats, "slack_s": slack,
           "command": shlex.join([sys.executable, *sys.argv]), "environment": environment(), "code": code_version(),
           "largest_tensor": big_name, "bound_bytes": bound, "rows": []}
    existing = out_dir / f"quantize_speed_{name}.json"
    if update and existing.is_file():
        old = json.loads(existing.read_text())
        doc = old | {"updates": old.get("updates", []) + [{"command": doc["command"], "code": doc["code"],
                                                          "recipes": list(wanted), "time": doc["environment"]["time"]}]}
    for recipe in wanted:
        runs = commands(reference, workdir, name, recipe, threads, llama_quantize, default)
        row: dict = {"recipe": recipe, "code": code_version(), "runs": {label: [] for label in runs}}
        for _ in range(repeats):
            for label, argv in runs.items():
                load = os.getloadavg()[0]
                log = workdir / f"{name}.{recipe}.{label.replace(' ', '_')}.log"
                rc, wall, rss, tail = measure(argv, log)
                for out in workdir.glob(f"{name}.*.{recipe}.gguf"):  # 18 recipes x 2 files filled a 25 GB disk
                    out.unlink()
                if rc != 0:
                    raise click.ClickException(f"{recipe} {label} failed ({rc}): {tail}")
                row["runs"][label].append({"seconds": round(wall, 2), "load": round(load, 2), "peak_rss_bytes": rss})
                click.echo(f"{recipe} {label}: {wall:.1f} s, peak RSS {rss / GIB:.2f} GiB (load before {load:.2f})",
                           err=True)
        best = {label: min(r["seconds"] for r in rs) for label, rs in row["runs"].items()}
        row |= {"best_seconds": best, "ratio": best[NONE] / best[LLAMA],
                "target_met": best[NONE] <= 3 * best[LLAMA] + slack}
        at = [i for i, r in enumerate(doc["rows"]) if r["recipe"] == recipe]
        if at:
            doc["rows"][at[0]] = row
        else:
            doc["rows"].append(row)
        write_results(out_dir, f"quantize_speed_{name}", doc, render)  # after every recipe: a cut-short run keeps its rows


def render(doc: dict) -> str:
    env, slack = doc["environment"], doc["slack_s"]
    target = "3x llama.cpp" + (f" + {slack:g} s" if slack else "")
    has_default = any(DEFAULT in r["runs"] for r in doc["rows"])
    lines = [f"# Quantization wall time: {doc['name']}", "",
             f"Command: `{doc['command']}` (hqq2gguf at {doc.get('code', 'unknown')})", "",
             f"Input `{doc['reference']}`; {env['platform']}, {env['cpus']} CPUs, llama.cpp on {doc['threads']} "
             f"threads, hqq2gguf on every CPU; each run a child process (start-up included); best of "
             f"{doc['repeats']} alternating run(s); {env['time']}. Target: hqq2gguf --calibration none <= {target}. "
             f"Peak RSS bound {doc['bound_bytes'] / GIB:.2f} GiB: the input once (memory-mapped; its pages count "
             f"in RSS) + 3 x the largest tensor (`{doc['largest_tensor']}`) + 1 GiB.", "",
             "| recipe | llama.cpp s | hqq2gguf --calibration none s | ratio | target met |"
             + (" hqq2gguf default s | default ratio |" if has_default else "")
             + " peak RSS GiB (none" + ("; default" if has_default else "") + ") | bound holds | load before runs |",
             "|---|---|---|---|---|" + ("---|---|" if has_default else "") + "---|---|---|"]
    for row in doc["rows"]:
        best, runs = row["best_seconds"], row["runs"]
        rss = {label: max(r["peak_rss_bytes"] for r in rs) for label, rs in runs.items()}
        holds = max(rss[NONE], rss.get(DEFAULT, 0)) <= doc["bound_bytes"]
        cells = [row["recipe"], f"{best[LLAMA]:.1f}", f"{best[NONE]:.1f}", f"{row['ratio']:.2f}x",
                 "yes" if row["target_met"] else "NO"]
        if has_default:
            cells += ([f"{best[DEFAULT]:.1f}", f"{best[DEFAULT] / best[LLAMA]:.2f}x"] if DEFAULT in best else ["", ""])
        cells += ["; ".join(f"{rss[label] / GIB:.2f}" for label in (NONE, DEFAULT) if label in rss),
                  "yes" if holds else "NO",
                  "; ".join(",".join(f"{r['load']:.1f}" for r in rs) for rs in runs.values())]
        lines.append("| " + " | ".join(cells) + " |")
    met = sum(r["target_met"] for r in doc["rows"])
    lines += ["", f"Target met on {met} of {len(doc['rows'])} recipes."]
    for u in doc.get("updates", []):
        lines += ["", f"Rows {', '.join(u['recipes'])} re-measured at {u['code']} ({u['time']}): `{u['command']}`"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
