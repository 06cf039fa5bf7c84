"""The default convert end to end (self-calibration + quantization) against llama-quantize: time per stage and
peak memory, each tool in its own child process, on the same threads.

    python benchmarks/default_convert.py /work/models/ref/Qwen2.5-Coder-1.5B-Instruct.dithered-s1234.F16.gguf \\
        --name qwen2.5-coder-1.5b --recipe Q4_K_M

Runs, in order: llama-quantize RECIPE (no imatrix; the llama-quantize binary when given, else llama-cpp-python's
``llama_model_quantize`` in a child), ``hqq2gguf convert --type RECIPE`` with the defaults (self-calibration),
and ``hqq2gguf convert --type RECIPE --calibration none`` (the quantization stage alone). Peak RSS is each
child's ``ru_maxrss`` (os.wait4): the model is memory-mapped by llama.cpp during calibration, so the bound is
the input file once plus the streaming bound (3 x largest tensor + 1 GiB). Stage seconds come from the
convert's own log lines. Writes benchmarks/results/default_convert_<name>.{json,md}.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path

import click
import gguf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from convert_resources import GIB, environment, measure, write_results  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CALIBRATION = re.compile(r"calibration: (\d+) sequences, (\d+) tokens read while written, \d+ matrices \(([\d.]+) s\)")


def largest_tensor_bytes(path: Path) -> tuple[str, int]:
    reader = gguf.GGUFReader(path)
    t = max(reader.tensors, key=lambda t: int(t.n_bytes))
    return t.name, int(t.n_bytes)


def quantize_command(llama_quantize: Path | None, src: Path, dst: Path, recipe: str, threads: int) -> list[str]:
    if llama_quantize is not None:
        return [str(llama_quantize), str(src), str(dst), recipe, str(threads)]
    code = ("import sys, gguf; from hqq2gguf.baseline import llama_quantize; "
            "llama_quantize(sys.argv[1], sys.argv[2], gguf.LlamaFileType['MOSTLY_' + sys.argv[3]], "
            "nthread=int(sys.argv[4]))")
    return [sys.executable, "-c", code, str(src), str(dst), recipe, str(threads)]


@click.command()
@click.argument("reference", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True)
@click.option("--recipe", default="Q4_K_M", show_default=True)
@click.option("--threads", type=int, default=os.cpu_count(), show_default=True)
@click.option("--llama-quantize", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              default=Path(__file__).resolve().parents[1] / ".cache" / "default_convert")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=RESULTS)
def main(reference: Path, name: str, recipe: str, threads: int, llama_quantize: Path | None, workdir: Path,
         out_dir: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    big_name, big = largest_tensor_bytes(reference)
    bound = reference.stat().st_size + 3 * big + GIB
    hqq = [sys.executable, "-m", "hqq2gguf", "-v", "convert", str(reference), "--type", recipe, "--force"]
    runs = {
        "llama-quantize": quantize_command(llama_quantize, reference, workdir / f"{name}.llama.{recipe}.gguf",
                                           recipe, threads),
        "hqq2gguf default": hqq + ["-o", str(workdir / f"{name}.default.{recipe}.gguf")],
        "hqq2gguf --calibration none": hqq + ["-o", str(workdir / f"{name}.none.{recipe}.gguf"),
                                              "--calibration", "none"],
    }
    doc = {"name": name, "reference": str(reference), "recipe": recipe, "threads": threads,
           "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]), "environment": environment(),
           "largest_tensor": big_name, "largest_tensor_bytes": big, "input_bytes": reference.stat().st_size,
           "bound_bytes": bound, "runs": {}}
    for label, argv in runs.items():
        click.echo(f"[{label}] {shlex.join(argv)}", err=True)
        rc, wall, rss, _ = measure(argv, workdir / f"{name}.{label.replace(' ', '_')}.log")
        log = (workdir / f"{name}.{label.replace(' ', '_')}.log").read_text(errors="replace")
        if rc != 0:
            raise click.ClickException(f"{label} failed ({rc}): {log[-2000:]}")
        run = {"argv": argv, "wall_s": round(wall, 1), "peak_rss_bytes": rss, "bound_holds": rss <= bound}
        found = CALIBRATION.search(log)
        if found:
            run |= {"calibration_sequences": int(found[1]), "calibration_tokens": int(found[2]),
                    "calibration_s": float(found[3])}
        doc["runs"][label] = run
        click.echo(f"[{label}] {wall:.1f} s, peak RSS {rss / GIB:.2f} GiB", err=True)
    write_results(out_dir, f"default_convert_{name}", doc, render)


def render(doc: dict) -> str:
    base = doc["runs"]["llama-quantize"]["wall_s"]
    env = doc["environment"]
    lines = [f"# Default convert vs llama-quantize: {doc['name']} {doc['recipe']}", "",
             f"{env['platform']}, {env['cpus']} CPUs, {doc['threads']} threads, {env['time']}. Reference "
             f"`{doc['reference']}` ({doc['input_bytes'] / GIB:.2f} GiB). Peak RSS bound: the input once + 3 x "
             f"largest tensor (`{doc['largest_tensor']}`) + 1 GiB = {doc['bound_bytes'] / GIB:.2f} GiB.", "",
             f"Command: `{doc['command']}`", "",
             "| run | wall s | x llama-quantize | calibration s (tokens) | quantization s | peak RSS GiB | bound holds |",
             "|---|---|---|---|---|---|---|"]
    for label, r in doc["runs"].items():
        cal = f"{r['calibration_s']:.1f} ({r['calibration_tokens']})" if "calibration_s" in r else ""
        quant = f"{r['wall_s'] - r.get('calibration_s', 0):.1f}" if label != "llama-quantize" else ""
        lines.append(f"| {label} | {r['wall_s']:.1f} | {r['wall_s'] / base:.2f} | {cal} | {quant} | "
                     f"{r['peak_rss_bytes'] / GIB:.2f} | {'yes' if r['bound_holds'] else 'NO'} |")
    lines += ["", "quantization s: the rest of the wall time (reading, planning, solving, writing, start-up)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
