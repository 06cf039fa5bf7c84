"""Convert under a hard memory cap: address space limited with RLIMIT_AS in the child, no cgroups needed.

The conversion runs as ``python -m hqq2gguf convert`` in a child process whose virtual address space is
capped (``ulimit -v``, i.e. RLIMIT_AS, set by the shell that execs it): a conversion that is not streaming — one that holds
the model, or several tensors, at once — dies with MemoryError (``error: out of memory``, exit 1). The
default cap is ``3 x largest tensor + 2.5 GiB``: one tensor as read, its transformed copy and its encoding,
plus the address space that Python, torch and transformers reserve without using (thread stacks, arenas,
shared libraries). Several caps can be given to find the floor.

While the child runs, the output directory is polled: it must hold at most one file, the temporary
``.<name>.<pid>.partial``, renamed into place at the end; its largest size is the temporary space used.
Peak RSS is the kernel's ``ru_maxrss`` of the child (``os.wait4``).

    python benchmarks/convert_memory_cap.py /work/models/Qwen2.5-Coder-1.5B-Instruct-hf

Writes ``RESULTS/convert_memory_cap.json`` and ``RESULTS/convert_memory_cap.md``.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click

from hqq2gguf.read.safetensors import read_safetensors_header

GIB, MIB = 1 << 30, 1 << 20
MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
POLL_S = 0.05


@dataclass(frozen=True)
class LargestTensor:
    name: str
    nbytes: int
    total_bytes: int


def largest_tensor(model_dir: Path) -> LargestTensor:
    """Largest tensor over the directory's safetensors files, from the (validated) headers alone."""
    tensors = [t for f in sorted(model_dir.glob("*.safetensors")) for t in read_safetensors_header(f)[0].values()]
    if not tensors:
        raise click.ClickException(f"{model_dir}: no *.safetensors files")
    best = max(tensors, key=lambda t: t.nbytes)
    return LargestTensor(best.name, best.nbytes, sum(t.nbytes for t in tensors))


@dataclass
class CappedRun:
    model: str
    command: str
    cap_bytes: int
    returncode: int
    wall_s: float
    peak_rss_bytes: int
    output_bytes: int | None
    max_temp_bytes: int
    """Largest total size of the output directory seen while the conversion ran."""
    max_files_seen: int
    """Most entries seen at once in the output directory (1: only the temporary file)."""
    names_seen: list[str] = field(default_factory=list)
    left_after: list[str] = field(default_factory=list)
    """What the output directory holds once the child has exited (the output alone, or nothing)."""
    largest_tensor: str = ""
    largest_tensor_bytes: int = 0
    input_tensor_bytes: int = 0
    error_line: str = ""


def capped_command(argv: list[str], cap: int) -> str:
    """A shell line running ``argv`` with RLIMIT_AS = ``cap`` (``ulimit -v`` counts KiB); ``exec`` keeps the
    pid, so that wait4 measures the conversion itself."""
    return f"ulimit -v {cap // 1024} && exec " + " ".join(shlex.quote(a) for a in argv)


def run_capped(command: str, out_dir: Path, log: Path) -> tuple[int, float, int, int, int, set[str]]:
    """Run the shell ``command``, polling ``out_dir``. Returns (rc, wall s, peak RSS, max dir bytes,
    max entries, names seen)."""
    max_bytes, max_files, names = 0, 0, set()
    with log.open("wb") as sink:
        start = time.perf_counter()
        proc = subprocess.Popen(["bash", "-c", command], stdout=sink, stderr=subprocess.STDOUT)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            entries = list(out_dir.iterdir())
            names.update(p.name for p in entries)
            max_files = max(max_files, len(entries))
            sizes = 0
            for p in entries:
                try:
                    sizes += p.stat().st_size
                except FileNotFoundError:  # renamed or removed between listing and stat
                    pass
            max_bytes = max(max_bytes, sizes)
            if pid:
                break
            time.sleep(POLL_S)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, wall, usage.ru_maxrss * MAXRSS_UNIT, max_bytes, max_files, names


def measure(model_dir: Path, cap: int, outtype: str, workdir: Path) -> CappedRun:
    largest = largest_tensor(model_dir)
    out_dir = workdir / f"cap-{cap // MIB}MiB"
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.iterdir():
        stale.unlink()
    out = out_dir / f"{model_dir.name}-{outtype}.gguf"
    argv = [sys.executable, "-m", "hqq2gguf", "convert", str(model_dir), "-o", str(out), "--outtype", outtype]
    command = capped_command(argv, cap)
    click.echo(f"cap {cap / GIB:.2f} GiB: {command}", err=True)
    log = workdir / f"cap-{cap // MIB}MiB.log"
    rc, wall, rss, max_bytes, max_files, names = run_capped(command, out_dir, log)
    left = sorted(p.name for p in out_dir.iterdir())
    text = log.read_text(errors="replace")
    error = next((line for line in text.splitlines() if line.startswith(("error:", "Traceback"))), "")
    run = CappedRun(model=model_dir.name, command=command, cap_bytes=cap, returncode=rc, wall_s=round(wall, 2),
                    peak_rss_bytes=rss, output_bytes=out.stat().st_size if out.is_file() else None,
                    max_temp_bytes=max_bytes, max_files_seen=max_files, names_seen=sorted(names), left_after=left,
                    largest_tensor=largest.name, largest_tensor_bytes=largest.nbytes,
                    input_tensor_bytes=largest.total_bytes, error_line=error)
    click.echo(f"  rc={rc} {wall:.1f} s, peak RSS {rss / GIB:.2f} GiB, output dir max {max_bytes / MIB:,.1f} MiB "
               f"in {max_files} file(s) {sorted(names)}, left {left} {error}", err=True)
    out.unlink(missing_ok=True)
    return run


def environment() -> dict[str, object]:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
            "memory_bytes": mem, "load_avg_at_start": os.getloadavg(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def markdown(runs: list[CappedRun], env: dict[str, object], argv: list[str]) -> str:
    r0 = runs[0]
    lines = [
        "# Conversion under a memory cap (RLIMIT_AS)",
        "",
        (f"{env['platform']}, {env['cpus']} CPUs, {int(env['memory_bytes']) / GIB:.0f} GiB RAM, "
         f"Python {env['python']}, {env['time']}, load average at start "
         f"{', '.join(f'{x:.2f}' for x in env['load_avg_at_start'])}."),
        "",
        (f"Model `{r0.model}`: {r0.input_tensor_bytes / GIB:.2f} GiB of tensors, largest `{r0.largest_tensor}` "
         f"{r0.largest_tensor_bytes / MIB:,.1f} MiB. Benchmark command: `{' '.join(shlex.quote(a) for a in argv)}`."),
        "",
        "| cap GiB | = | rc | wall s | peak RSS GiB | output MiB | output dir max MiB | files at once | left after | error |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        extra = (r.cap_bytes - 3 * r.largest_tensor_bytes) / GIB
        formula = f"3 x largest {'+' if extra >= 0 else '-'} {abs(extra):.2f} GiB"
        out = f"{r.output_bytes / MIB:,.1f}" if r.output_bytes is not None else "-"
        lines.append(f"| {r.cap_bytes / GIB:.2f} | {formula} | {r.returncode} | {r.wall_s:.1f} | "
                     f"{r.peak_rss_bytes / GIB:.2f} | {out} | {r.max_temp_bytes / MIB:,.1f} | {r.max_files_seen} | "
                     f"{', '.join(r.left_after) or 'nothing'} | {r.error_line or '-'} |")
    lines += ["", "Each conversion: `" + r0.command + "` (with the cap of its row).", "",
              ("Peak RSS: the child's ru_maxrss. Output dir max: the most the output directory held while the "
              "conversion ran, i.e. the temporary space used (the `.partial` file grows to the output's size and "
              "is renamed into place). Files at once: never more than that one temporary file. Left after: what "
              "the directory holds once the child exited (a failed run leaves nothing).")]
    return "\n".join(lines) + "\n"


@click.command()
@click.argument("model", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--cap-gib", "caps", type=float, multiple=True,
              help="Address-space cap in GiB (repeatable). Default: 3 x largest tensor + 2.5 GiB.")
@click.option("--outtype", default="f16", show_default=True)
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("out/convert_memory_cap"),
              show_default=True)
@click.option("--results", type=click.Path(file_okay=False, path_type=Path),
              default=Path(__file__).resolve().parent / "results", show_default=True)
def main(model: Path, caps: tuple[float, ...], outtype: str, workdir: Path, results: Path) -> None:
    """Convert MODEL (a Hugging Face directory) under each memory cap and record what it took."""
    model = model.resolve()
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    cap_bytes = [int(c * GIB) for c in caps] or [3 * largest_tensor(model).nbytes + int(2.5 * GIB)]
    env = environment()
    runs = [measure(model, cap, outtype, workdir) for cap in cap_bytes]
    (results / "convert_memory_cap.json").write_text(json.dumps(
        {"argv": sys.argv, "environment": env, "runs": [asdict(r) for r in runs]}, indent=2) + "\n")
    (results / "convert_memory_cap.md").write_text(markdown(runs, env, sys.argv))
    click.echo(markdown(runs, env, sys.argv))


if __name__ == "__main__":
    main()
