"""Host memory of the CUDA path per row part, measured on the CPU with the emulated kernels.

    python benchmarks/cuda_host_memory.py                        # 8192 x 4096 realistic weights, Q4_0 and Q4_K
    python benchmarks/cuda_host_memory.py --rows 4096 --types Q4_K --parts 20,24

Each run is a child process (peak RSS from ``os.wait4``, as benchmarks/convert_resources.py measures a
conversion): it makes a (rows x 4096) matrix of realistic bf16 weights (cuda_throughput.realistic), converts
it to float32 as the pipeline does, and runs ``hqq2gguf.cuda.encode_cuda`` with ``PART_ELEMENTS`` = 2**k on the
emulated kernels (hqq2gguf/cuda/emulate.py; the launcher has no bearing on host memory, the GPU's copies being
on the device). A baseline child does everything but the encode; the difference is the CUDA path's own peak,
reported per element of a part (the bound cuda/README.md states) and per element of the tensor. The last
``--parts`` entry ``whole`` makes the whole tensor one part: the memory the path used before it was cut.

Writes RESULTS/cuda_host_memory.json and .md.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path

import click

from convert_resources import GIB, environment, measure

RESULTS_DIR = Path(__file__).resolve().parent / "results"
NE0 = 4096


def run_child(rows: int, qtype_name: str, part_log2: int | None, encode: bool) -> None:
    """One measured process: build the weights, load the emulated kernels, encode (or not)."""
    import gguf
    import torch

    from cuda_throughput import realistic
    from hqq2gguf.cuda import encode_cuda
    from hqq2gguf.cuda.emulate import HostLauncher

    solve_cuda_module = importlib.import_module("hqq2gguf.cuda.solve_cuda")  # the package's name is the function
    qtype = gguf.GGMLQuantizationType[qtype_name]
    x = realistic((rows, NE0), torch.Generator().manual_seed(7)).float()
    launcher = HostLauncher()
    encode_cuda(x[:1], qtype, launcher=launcher)  # compile/load the kernels and import everything
    if part_log2 is not None:
        solve_cuda_module.PART_ELEMENTS = 1 << part_log2
    if encode:
        t0 = time.perf_counter()
        done = encode_cuda(x, qtype, launcher=launcher)
        print(json.dumps({"seconds": time.perf_counter() - t0, "packed_bytes": int(done.packed.nbytes)}))


def run(rows: int, qtype: str, part: str | None, workdir: Path) -> dict[str, object]:
    args = [sys.executable, __file__, "--child", "--rows", str(rows), "--types", qtype]
    if part is not None:
        args += ["--parts", part]
    else:
        args += ["--no-encode"]
    rc, wall, rss, tail = measure(args, workdir / f"{qtype}-{part}.log")
    if rc != 0:
        raise click.ClickException(f"{' '.join(args)} failed ({rc}):\n{tail}")
    report = json.loads(tail.strip().splitlines()[-1]) if part is not None else {}
    return {"type": qtype, "part": part or "baseline", "peak_rss_bytes": rss, "wall_s": round(wall, 2), **report}


def markdown(doc: dict) -> str:
    env, rows = doc["environment"], doc["rows"]
    lines = ["# CUDA path: host memory per row part (emulated kernels)", "",
             f"{rows} x {NE0} realistic weights (bf16 -> float32, {rows * NE0 * 4 / 2**20:.0f} MiB), "
             f"{env['platform']}, {env['cpus']} CPUs, Python {env['python']}, {env['time']}. Peak RSS from wait4; "
             "'extra' is the peak above a baseline child that does everything but the encode.", "",
             "Command: `python benchmarks/cuda_host_memory.py " + doc["argv"] + "`", "",
             "| type | part (elements) | peak RSS GiB | extra MiB | extra bytes / part element | "
             "extra bytes / tensor element | encode s |", "|---|---|---|---|---|---|---|"]
    for r in doc["runs"]:
        if r["part"] == "baseline":
            lines.append(f"| {r['type']} | baseline | {r['peak_rss_bytes'] / GIB:.2f} | | | | |")
            continue
        part_elems = rows * NE0 if r["part"] == "whole" else min(1 << int(r["part"]), rows * NE0)
        label = f"whole tensor ({rows * NE0:,})" if r["part"] == "whole" else f"2^{r['part']}"
        lines.append(f"| {r['type']} | {label} | {r['peak_rss_bytes'] / GIB:.2f} | {r['extra_bytes'] / 2**20:.0f} | "
                     f"{r['extra_bytes'] / part_elems:.1f} | {r['extra_bytes'] / (rows * NE0):.2f} | "
                     f"{r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--rows", type=click.IntRange(1), default=8192, show_default=True)
@click.option("--types", default="Q4_0,Q4_K", show_default=True)
@click.option("--parts", default="20,22,24,whole", show_default=True,
              help="PART_ELEMENTS as log2 values; 'whole': the whole tensor as one part.")
@click.option("--child", is_flag=True, hidden=True)
@click.option("--no-encode", is_flag=True, hidden=True)
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("/tmp/hqq2gguf-cuda-memory"), show_default=True)
@click.option("--results", type=click.Path(file_okay=False, path_type=Path), default=RESULTS_DIR, show_default=True)
def main(rows: int, types: str, parts: str, child: bool, no_encode: bool, workdir: Path, results: Path) -> None:
    """Peak host memory of encode_cuda per row part size (emulated kernels)."""
    if child:
        part = None if no_encode else (30 if parts == "whole" else int(parts))
        run_child(rows, types, part, not no_encode)
        return
    workdir.mkdir(parents=True, exist_ok=True)
    runs = []
    for qtype in types.split(","):
        base = run(rows, qtype, None, workdir)
        runs.append(base)
        for part in parts.split(","):
            r = run(rows, qtype, part, workdir)
            r["extra_bytes"] = r["peak_rss_bytes"] - base["peak_rss_bytes"]
            click.echo(f"{qtype} part {part}: peak {r['peak_rss_bytes'] / GIB:.2f} GiB, extra "
                       f"{r['extra_bytes'] / 2**20:.0f} MiB, {r['seconds']:.1f} s", err=True)
            runs.append(r)
    argv = " ".join(sys.argv[1:])
    doc = {"environment": environment(), "rows": rows, "ne0": NE0, "argv": argv, "runs": runs}
    results.mkdir(parents=True, exist_ok=True)
    (results / "cuda_host_memory.json").write_text(json.dumps(doc, indent=2) + "\n")
    (results / "cuda_host_memory.md").write_text(markdown(doc))
    click.echo(f"wrote {results / 'cuda_host_memory.md'}")


if __name__ == "__main__":
    main()
