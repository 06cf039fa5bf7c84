"""``hqq2gguf validate`` against llama.cpp's ``llama-perplexity --kl-divergence`` on real files.

validate claims to compute KL-divergence, top-1 agreement and perplexity exactly as llama-perplexity does
(hqq2gguf.runtime.evaluate). This runs both on the same reference, models, text and chunks and writes
``<out>/validate_vs_llama_perplexity.json`` (every number, both command lines, machine, versions) and
``.md`` (one row per model and metric, with the relative difference; the claim is "within 2%").

    python benchmarks/validate_vs_llama_perplexity.py \\
        /work/models/ref/SmolLM2-135M-Instruct.dithered-s1234.F16.gguf \\
        /work/models/quality/SmolLM2-135M-Instruct.dithered-s1234.F16.hqq2gguf.Q4_K_M.gguf \\
        /work/models/quality/SmolLM2-135M-Instruct.dithered-s1234.F16.llama.cpp.Q4_K_M.gguf \\
        --text /work/shared/eval/wiki.test.raw --chunks 10

llama-perplexity comes from HQQ2GGUF_LLAMA_PERPLEXITY, PATH, or --binary (build: see
hqq2gguf/runtime/llama_perplexity.py).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shlex
import sys
from pathlib import Path

import click
from hqq2gguf.runtime import llama_perplexity
from hqq2gguf.runtime.validate import ValidateOptions, validate

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TOLERANCE = 0.02
METRICS = (  # (label, key in both results, format)
    ("mean KLD", "kld_mean", "{:.6f}"),
    ("median KLD", "kld_median", "{:.6f}"),
    ("KLD p99", "kld_p99", "{:.6f}"),
    ("max KLD", "kld_max", "{:.6f}"),
    ("top-1 agreement", "same_top", "{:.4%}"),
    ("PPL", "ppl", "{:.4f}"),
    ("PPL (reference)", "ppl_ref", "{:.4f}"),
)


def compare(model: Path, reference: Path, text: Path, binary: Path, n_ctx: int, n_chunks: int,
            n_threads: int) -> dict:
    """Both tools on one model: their numbers, and the relative difference per metric."""
    click.echo(f"== {model.name}: llama-perplexity")
    theirs = llama_perplexity.kl_divergence(binary, model, reference, text, n_ctx=n_ctx, n_chunks=n_chunks,
                                            n_threads=n_threads)
    click.echo(f"== {model.name}: hqq2gguf validate")
    report = validate(model, ValidateOptions(reference=reference, text=text, n_ctx=n_ctx, n_chunks=n_chunks,
                                             n_threads=n_threads))
    ours = report.measurements[0].result
    rows = []
    for label, key, _ in METRICS:
        a, b = getattr(ours, key), getattr(theirs, key)
        rel = abs(a - b) / abs(b) if b else abs(a - b)
        rows.append({"metric": label, "key": key, "hqq2gguf": a, "llama_perplexity": b, "rel_diff": rel})
    return {"model": str(model), "validate_passed": report.passed, "n_tokens_scored": ours.n_tokens_scored,
            "rows": rows, "llama_perplexity_commands": list(theirs.commands),
            "seconds": {"hqq2gguf_model": ours.test_seconds, "hqq2gguf_reference": ours.ref_seconds}}


def write_markdown(path: Path, payload: dict) -> None:
    lines = ["# hqq2gguf validate vs llama-perplexity --kl-divergence", "",
             (f"Reference `{payload['reference']}`; text `{payload['text']}`, first {payload['chunks']} chunks x "
             f"{payload['n_ctx']} tokens, second halves scored."), "",
             f"Command: `{payload['command']}`", "",
             f"Machine: {payload['machine']}; llama-cpp-python {payload['llama_cpp_python']}.", "",
             "| model | metric | hqq2gguf validate | llama-perplexity | relative difference |",
             "|---|---|---|---|---|"]
    fmt = {key: f for _, key, f in METRICS}
    for result in payload["results"]:
        name = Path(result["model"]).name
        for row in result["rows"]:
            lines.append(f"| {name} | {row['metric']} | {fmt[row['key']].format(row['hqq2gguf'])} | "
                         f"{fmt[row['key']].format(row['llama_perplexity'])} | {row['rel_diff']:.2e} |")
    worst = max(r["rel_diff"] for res in payload["results"] for r in res["rows"] if r["key"].startswith("kld"))
    lines += ["", (f"Largest relative KLD difference: {worst:.2e} (claim: within {TOLERANCE:.0%}: "
                  f"{'holds' if worst <= TOLERANCE else 'DOES NOT HOLD'}).")]
    lines += ["", "llama-perplexity command lines (per model):", ""]
    for result in payload["results"]:
        lines += [f"- `{c}`" for c in result["llama_perplexity_commands"]]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@click.command()
@click.argument("reference", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("models", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--text", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@click.option("--chunks", type=click.IntRange(1), default=10, show_default=True)
@click.option("--ctx-size", type=click.IntRange(16), default=512, show_default=True)
@click.option("--threads", type=click.IntRange(1), default=os.cpu_count() or 1, show_default=True)
@click.option("--binary", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="llama-perplexity (default: $HQQ2GGUF_LLAMA_PERPLEXITY or PATH).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=RESULTS_DIR, show_default=True)
def main(reference: Path, models: tuple[Path, ...], text: Path, chunks: int, ctx_size: int, threads: int,
         binary: Path | None, out: Path) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    binary = binary or llama_perplexity.find_binary()
    if binary is None:
        raise click.UsageError(llama_perplexity.missing_reason() or "no llama-perplexity")
    import llama_cpp

    payload = {"reference": str(reference), "text": str(text), "chunks": chunks, "n_ctx": ctx_size,
               "threads": threads, "binary": str(binary),
               "command": shlex.join(["python", *[os.path.relpath(a) if a == __file__ else a for a in sys.argv]]),
               "machine": f"{platform.platform()}, {os.cpu_count()} CPUs", "llama_cpp_python": llama_cpp.__version__,
               "results": [compare(m, reference, text, binary, ctx_size, chunks, threads) for m in models]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "validate_vs_llama_perplexity.json").write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    write_markdown(out / "validate_vs_llama_perplexity.md", payload)
    click.echo((out / "validate_vs_llama_perplexity.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
