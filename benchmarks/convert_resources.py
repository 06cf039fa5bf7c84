"""Wall time and peak memory of a conversion, against the streaming bound ``3 x largest tensor + 1 GiB``.

Each conversion runs as a child process; its peak RSS comes from ``os.wait4`` (the kernel's
``ru_maxrss`` of that child and the descendants it waited for), so runs do not mask each other as
``getrusage(RUSAGE_CHILDREN)`` would. The largest tensor is read from the input's safetensors
headers (no tensor data is loaded). ``--oracle`` measures llama.cpp's ``convert_hf_to_gguf.py``
the same way, as a baseline.

    python benchmarks/convert_resources.py /work/models/SmolLM2-135M-Instruct-hf \\
        /work/models/Qwen2.5-Coder-1.5B-Instruct-hf --oracle --llama-cpp path/to/llama.cpp

Writes ``RESULTS/convert_resources.json`` and ``RESULTS/convert_resources.md``. The page cache is
not dropped between runs: a first run that reads the input from disk is slower than the next.
``{python}``, ``{model}``, ``{out}`` and ``{outtype}`` are substituted in ``--command``.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import click

GIB = 1 << 30
OURS = "{python} -m hqq2gguf.cli convert {model} -o {out} --outtype {outtype} --force"
ORACLE = "{python} {llama_cpp}/convert_hf_to_gguf.py {model} --outtype {outtype} --outfile {out}"
MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux


@dataclass(frozen=True)
class LargestTensor:
    name: str
    nbytes: int
    total_bytes: int  # all tensors of the input, for scale


@dataclass
class Run:
    tool: str
    model: str
    command: str
    returncode: int
    wall_s: float
    peak_rss_bytes: int
    output_bytes: int | None
    largest_tensor: str
    largest_tensor_bytes: int
    input_tensor_bytes: int
    bound_bytes: int
    bound_holds: bool
    stderr_tail: str


def largest_tensor(model_dir: Path) -> LargestTensor:
    """Largest tensor over all ``*.safetensors`` files of a directory, from the headers alone."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise click.ClickException(f"{model_dir}: no *.safetensors files")
    best, best_bytes, total = "", -1, 0
    for file in files:
        with file.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = info["data_offsets"]
            total += end - start
            if end - start > best_bytes:
                best, best_bytes = name, end - start
    return LargestTensor(best, best_bytes, total)


def measure(argv: list[str], log: Path) -> tuple[int, float, int, str]:
    """Run argv to completion; (returncode, wall seconds, peak RSS bytes, stderr tail)."""
    with log.open("wb") as sink:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    tail = log.read_text(errors="replace")[-2000:]
    return proc.returncode, wall, usage.ru_maxrss * MAXRSS_UNIT, tail


def run_one(tool: str, template: str, model_dir: Path, workdir: Path, outtype: str,
            llama_cpp: Path | None) -> Run:
    largest = largest_tensor(model_dir)
    out = workdir / f"{model_dir.name}-{tool}-{outtype}.gguf"
    out.unlink(missing_ok=True)
    command = template.format(python=shlex.quote(sys.executable), model=shlex.quote(str(model_dir)),
                              out=shlex.quote(str(out)), outtype=outtype,
                              llama_cpp=shlex.quote(str(llama_cpp)) if llama_cpp else "")
    click.echo(f"[{tool}] {model_dir.name}: {command}", err=True)
    rc, wall, rss, tail = measure(shlex.split(command), workdir / f"{out.stem}.log")
    bound = 3 * largest.nbytes + GIB
    run = Run(tool=tool, model=model_dir.name, command=command, returncode=rc, wall_s=round(wall, 2),
              peak_rss_bytes=rss, output_bytes=out.stat().st_size if out.is_file() else None,
              largest_tensor=largest.name, largest_tensor_bytes=largest.nbytes,
              input_tensor_bytes=largest.total_bytes, bound_bytes=bound, bound_holds=rc == 0 and rss <= bound,
              stderr_tail=tail if rc else "")
    click.echo(f"[{tool}] {model_dir.name}: rc={rc} {wall:.1f} s, peak RSS {rss / GIB:.2f} GiB "
               f"(bound {bound / GIB:.2f} GiB: {'holds' if run.bound_holds else 'EXCEEDED'})", err=True)
    return run


def write_results(out_dir: Path, stem: str, doc: dict, render: Callable[[dict], str]) -> None:
    """``doc`` stamped as finished, written as ``<stem>.json`` and rendered as ``<stem>.md`` into ``out_dir``, and
    the rendering echoed: every benchmark's last step."""
    doc["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(doc, indent=1) + "\n")
    text = render(doc)
    (out_dir / f"{stem}.md").write_text(text)
    print(text)


def environment() -> dict[str, object]:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    return {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
            "memory_bytes": mem, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def markdown(runs: list[Run], env: dict[str, object]) -> str:
    lines = [
        "# Conversion time and peak memory",
        "",
        f"{env['platform']}, {env['cpus']} CPUs, {int(env['memory_bytes'] or 0) / GIB:.0f} GiB RAM, "
        f"Python {env['python']}, {env['time']}. Peak RSS from wait4 ru_maxrss; bound = 3 x largest "
        "input tensor + 1 GiB.",
        "",
        "| model | tool | rc | wall s | peak RSS GiB | largest tensor | its MiB | bound GiB | holds | output MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        out = f"{r.output_bytes / (1 << 20):,.1f}" if r.output_bytes is not None else "-"
        lines.append(
            f"| {r.model} | {r.tool} | {r.returncode} | {r.wall_s:.1f} | {r.peak_rss_bytes / GIB:.2f} | "
            f"`{r.largest_tensor}` | {r.largest_tensor_bytes / (1 << 20):,.1f} | {r.bound_bytes / GIB:.2f} | "
            f"{'yes' if r.bound_holds else 'NO'} | {out} |"
        )
    return "\n".join(lines) + "\n"


@click.command()
@click.argument("models", nargs=-1, required=True,
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--command", "template", default=OURS, show_default=True,
              help="Conversion command; {python} {model} {out} {outtype} are substituted.")
@click.option("--outtype", default="f16", show_default=True)
@click.option("--oracle", is_flag=True, help="Also measure llama.cpp's convert_hf_to_gguf.py.")
@click.option("--llama-cpp", "llama_cpp", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="llama.cpp source tree (needed with --oracle).")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("out/convert_resources"),
              show_default=True, help="Where the converted GGUF files and logs go.")
@click.option("--results", type=click.Path(file_okay=False, path_type=Path),
              default=Path(__file__).resolve().parent / "results", show_default=True)
@click.option("--keep-outputs", is_flag=True, help="Keep the converted GGUF files (deleted by default).")
def main(models: tuple[Path, ...], template: str, outtype: str, oracle: bool, llama_cpp: Path | None,
         workdir: Path, results: Path, keep_outputs: bool) -> None:
    """Measure converting each MODEL (a Hugging Face directory) to GGUF."""
    if oracle and llama_cpp is None:
        raise click.UsageError("--oracle needs --llama-cpp")
    workdir.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    tools = [("hqq2gguf", template)] + ([("llama.cpp", ORACLE)] if oracle else [])
    runs: list[Run] = []
    for model_dir in models:
        for tool, tmpl in tools:
            run = run_one(tool, tmpl, model_dir.resolve(), workdir.resolve(), outtype, llama_cpp)
            runs.append(run)
            if not keep_outputs:
                (workdir / f"{model_dir.resolve().name}-{tool}-{outtype}.gguf").unlink(missing_ok=True)
    env = environment()
    (results / "convert_resources.json").write_text(
        json.dumps({"environment": env, "runs": [asdict(r) for r in runs]}, indent=2) + "\n")
    (results / "convert_resources.md").write_text(markdown(runs, env))
    click.echo(markdown(runs, env))
    if any(r.returncode for r in runs):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
