"""llama.cpp's importance matrix for the "with imatrix" comparison (benchmarks only; the product never
needs calibration data).

Runs llama.cpp's ``llama-imatrix`` on the calibration text in benchmarks/data (Newton's *Opticks*, a domain
unrelated to the evaluation text wiki.test.raw), 512-token chunks, and writes the GGUF imatrix that both
quantizers then get in ``benchmarks/quality.py --imatrix``:

    python benchmarks/imatrix.py REFERENCE.F16.gguf -o smollm2.imatrix.gguf \\
        --llama-imatrix /path/to/llama.cpp/build/bin/llama-imatrix

Build llama-imatrix and llama-quantize from the llama.cpp tree vendored in llama-cpp-python's sdist
(scripts/setup.sh downloads it to .cache/sdist): ``cmake -B build -DLLAMA_CURL=OFF && cmake --build build
--target llama-imatrix llama-quantize``.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import click

CALIBRATION = Path(__file__).resolve().parent / "data" / "opticks-calibration.txt"


@click.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--llama-imatrix", "binary", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True, help="llama.cpp's llama-imatrix binary")
@click.option("--text", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=CALIBRATION,
              show_default=True)
@click.option("--chunks", type=int, default=60, show_default=True, help="512-token chunks of the text")
@click.option("--threads", type=int, default=2, show_default=True)
def main(model: Path, output: Path, binary: Path, text: Path, chunks: int, threads: int) -> None:
    t0 = time.perf_counter()
    cmd = [str(binary), "-m", str(model), "-f", str(text), "-o", str(output), "-c", "512", "--chunks", str(chunks),
           "-t", str(threads)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise click.ClickException(f"llama-imatrix failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    record = {"command": " ".join([sys.executable, *sys.argv]), "llama_imatrix": cmd, "seconds": time.perf_counter() - t0,
              "text": str(text), "text_sha256": hashlib.sha256(text.read_bytes()).hexdigest(),
              "imatrix_sha256": hashlib.sha256(output.read_bytes()).hexdigest()}
    output.with_suffix(output.suffix + ".json").write_text(json.dumps(record, indent=2) + "\n")
    click.echo(f"wrote {output} ({record['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
