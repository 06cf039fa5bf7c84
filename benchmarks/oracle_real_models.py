"""Real models through hqq2gguf and llama.cpp's own converter: are the two files equivalent?

For each Hugging Face directory: convert with hqq2gguf (Python API) and with llama.cpp's
convert_hf_to_gguf.py at the same outtype, then compare tensors (names, order, shapes, types, bytes) and
metadata (keys, types, values, order; hqq2gguf's own documented keys excluded) with hqq2gguf.gguf_diff.
Writes benchmarks/results/oracle_real_models.{json,md}.

    python benchmarks/oracle_real_models.py MODEL_DIR... --llama-cpp .cache/sdist/llama_cpp_python-0.3.36/vendor/llama.cpp
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import click

from hqq2gguf import __version__
from hqq2gguf.convert import convert
from hqq2gguf.gguf_diff import IGNORED_PREFIXES, compare_gguf, read_gguf
from hqq2gguf.options import ConvertOptions, OutType

RESULTS = Path(__file__).resolve().parent / "results"


def run_oracle(llama_cpp: Path, model: Path, outtype: str, out: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, str(llama_cpp / "convert_hf_to_gguf.py"), str(model), "--outtype", outtype,
                    "--outfile", str(out)], check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def check_model(model: Path, llama_cpp: Path, outtype: str, workdir: Path) -> dict[str, object]:
    ours_path = workdir / f"{model.name}-hqq2gguf-{outtype}.gguf"
    theirs_path = workdir / f"{model.name}-llama.cpp-{outtype}.gguf"
    ours = convert(model, ConvertOptions(outtype=OutType(outtype), output=ours_path, force=True))
    oracle_s = run_oracle(llama_cpp, model, outtype, theirs_path)
    diffs = compare_gguf(ours_path, theirs_path)
    fields, tensors = read_gguf(theirs_path)
    row = {"model": model.name, "outtype": outtype, "tensors": len(tensors), "kv_pairs": len(fields),
           "bytes_ours": ours_path.stat().st_size, "bytes_llama_cpp": theirs_path.stat().st_size,
           "differences": diffs, "equivalent": not diffs, "seconds_ours": round(ours.seconds, 1),
           "seconds_llama_cpp": round(oracle_s, 1)}
    ours_path.unlink()
    theirs_path.unlink()
    return row


@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--llama-cpp", "llama_cpp", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="llama.cpp source tree holding convert_hf_to_gguf.py.")
@click.option("--outtype", default="f16", show_default=True)
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("out/oracle_real_models"),
              show_default=True)
def main(models: tuple[Path, ...], llama_cpp: Path, outtype: str, workdir: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in models:
        click.echo(f"{model.name}: converting with hqq2gguf and llama.cpp ({outtype})", err=True)
        rows.append(check_model(model, llama_cpp, outtype, workdir))
        click.echo(f"{model.name}: {'equivalent' if rows[-1]['equivalent'] else rows[-1]['differences']}", err=True)
    meta = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "hqq2gguf": __version__,
            "machine": f"{platform.platform()}, Python {platform.python_version()}",
            "ignored_keys": list(IGNORED_PREFIXES), "results": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "oracle_real_models.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    lines = ["# Real models: hqq2gguf vs llama.cpp's convert_hf_to_gguf.py", "",
             f"`{meta['command']}` — {meta['machine']}. Keys excluded from the comparison (documented in "
             f"docs/metadata.md): {', '.join(IGNORED_PREFIXES)}.", "",
             "| model | outtype | tensors | KV pairs | bytes (ours) | bytes (llama.cpp) | equivalent | s (ours) | s (llama.cpp) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['outtype']} | {r['tensors']} | {r['kv_pairs']} | {r['bytes_ours']:,} | "
                     f"{r['bytes_llama_cpp']:,} | {'yes' if r['equivalent'] else 'NO: ' + '; '.join(r['differences'])} | "
                     f"{r['seconds_ours']} | {r['seconds_llama_cpp']} |")
    (RESULTS / "oracle_real_models.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    click.echo("\n".join(lines))


if __name__ == "__main__":
    main()
