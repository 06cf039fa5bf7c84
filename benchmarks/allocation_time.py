"""What allocation adds to a conversion's time: ``hqq2gguf convert --type RECIPE`` (its defaults: self-calibration
where the recipe has it) against the same with ``--allocate``, same input, each in its own child process
(start-up and imports included), alternating. Target (issue 15): the allocated conversion's extra wall time is at
most the plain conversion's own (Qwen2.5-Coder-1.5B, 2 cores, one run). The stages the conversions log
(calibration, sensitivity probes, allocation, whole conversion) are parsed from each child's log and reported.

    python benchmarks/allocation_time.py /work/models/ref/Qwen2.5-Coder-1.5B-Instruct.dithered-s1234.F16.gguf \\
        --name qwen2.5-coder-1.5b --recipes Q4_K_M

Writes benchmarks/results/allocation_time_<name>.{json,md}.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent))
from convert_resources import GIB, environment, measure, write_results  # noqa: E402
from quantize_speed import code_version  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PLAIN, ALLOCATED = "hqq2gguf", "hqq2gguf --allocate"
#: Stage seconds as the conversion logs them (hqq2gguf.calibrate.activations, .sensitivity, .allocate, .convert).
STAGES = {"calibration": r"calibration: \d+ sequences, .* \(([\d.]+) s\)",
          "sensitivity": r"sensitivity: \d+ matrices, .*, ([\d.]+) s",
          "allocation": r"allocation: \d+ tensors typed in ([\d.]+) s",
          "convert": r"wrote \S+ in ([\d.]+) s"}


def stages(log: Path) -> dict[str, float]:
    text = log.read_text(errors="replace")
    found = {name: re.search(pattern, text) for name, pattern in STAGES.items()}
    return {name: float(m[1]) for name, m in found.items() if m}


@click.command()
@click.argument("reference", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True)
@click.option("--recipes", default="Q4_K_M", show_default=True, help="Comma-separated.")
@click.option("--repeats", type=int, default=1, show_default=True)
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              default=Path(__file__).resolve().parents[1] / ".cache" / "speed", show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=RESULTS_DIR)
def main(reference: Path, name: str, recipes: str, repeats: int, workdir: Path, out_dir: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    doc = {"name": name, "reference": str(reference), "repeats": repeats, "command": shlex.join([sys.executable, *sys.argv]),
           "environment": environment(), "code": code_version(), "rows": []}
    for recipe in (r.strip() for r in recipes.split(",") if r.strip()):
        row: dict = {"recipe": recipe, "runs": {PLAIN: [], ALLOCATED: []}}
        for _ in range(repeats):
            for label in (PLAIN, ALLOCATED):
                out = workdir / f"{name}.{recipe}.{'alloc' if label == ALLOCATED else 'plain'}.gguf"
                argv = [sys.executable, "-m", "hqq2gguf", "-v", "convert", str(reference), "--type", recipe,
                        "-o", str(out), "--force", *(["--allocate"] if label == ALLOCATED else [])]
                load = os.getloadavg()[0]
                log = out.with_suffix(".log")
                rc, wall, rss, tail = measure(argv, log)
                size = out.stat().st_size if out.is_file() else None
                out.unlink(missing_ok=True)
                if rc != 0:
                    raise click.ClickException(f"{recipe} {label} failed ({rc}): {tail}")
                row["runs"][label].append({"seconds": round(wall, 2), "load": round(load, 2), "peak_rss_bytes": rss,
                                           "bytes": size, "stages": stages(log)})
                click.echo(f"{recipe} {label}: {wall:.1f} s {stages(log)} (load before {load:.2f})", err=True)
        best = {label: min(runs, key=lambda r: r["seconds"]) for label, runs in row["runs"].items()}
        added = best[ALLOCATED]["seconds"] - best[PLAIN]["seconds"]
        row |= {"added_seconds": round(added, 2), "ratio": added / best[PLAIN]["seconds"],
                "target_met": added <= best[PLAIN]["seconds"]}
        doc["rows"].append(row)
        write_results(out_dir, f"allocation_time_{name}", doc, render)


def render(doc: dict) -> str:
    env = doc["environment"]
    lines = [f"# What allocation adds to a conversion's time: {doc['name']}", "",
             f"Command: `{doc['command']}` (hqq2gguf at {doc['code']})", "",
             f"Input `{doc['reference']}`; {env['platform']}, {env['cpus']} CPUs; each conversion a child process "
             f"(start-up included), its defaults (self-calibration) with and without `--allocate`, best of "
             f"{doc['repeats']} alternating run(s); {env['time']}. Target: the allocated conversion's extra time <= "
             "the plain conversion's own. Stage seconds are the conversions' own log lines.", "",
             "| recipe | plain s | allocated s | added s | added / plain | target met | allocated: calibration s "
             "| sensitivity s | allocation stage s (sensitivity + costs) | peak RSS GiB (plain; allocated) "
             "| load before runs |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in doc["rows"]:
        best = {label: min(runs, key=lambda r: r["seconds"]) for label, runs in row["runs"].items()}
        st = best[ALLOCATED]["stages"]
        lines.append("| " + " | ".join([
            row["recipe"], f"{best[PLAIN]['seconds']:.1f}", f"{best[ALLOCATED]['seconds']:.1f}",
            f"{row['added_seconds']:.1f}", f"{row['ratio']:.2f}", "yes" if row["target_met"] else "NO",
            f"{st.get('calibration', float('nan')):.1f}", f"{st.get('sensitivity', float('nan')):.1f}",
            f"{st.get('allocation', float('nan')):.1f}",
            "; ".join(f"{best[label]['peak_rss_bytes'] / GIB:.2f}" for label in (PLAIN, ALLOCATED)),
            "; ".join(",".join(f"{r['load']:.1f}" for r in runs) for runs in row["runs"].values())]) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
