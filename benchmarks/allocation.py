"""Mean KLD against file size: llama.cpp's recipes (with and without an imatrix), hqq2gguf at llama.cpp's types,
hqq2gguf allocated within the same bytes, and llama.cpp's own quantizer given hqq2gguf's allocation (what the
allocation alone buys). Same dithered F16 reference, same wiki chunks, llama-perplexity's KLD.

Budgets are the byte sizes of llama.cpp's recipe files (``--type RECIPE --allocate`` keeps them). Writes
``<out>/allocation_<name>.json`` (every number, the command, the code version), ``.md`` (the table, paired
ratios) and ``.png`` (the picture). Rows of a quality_*.json made on the same reference and chunks can be
carried over (``--keep-rows``) instead of re-run.

    python benchmarks/allocation.py /work/models/ref/SmolLM2-135M-Instruct.dithered-s1234.F16.gguf \
        --name smollm2 --chunks 40 --imatrix /work/models/imatrix/smollm2-opticks.gguf
"""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
import sys
import time
from pathlib import Path

import click
import gguf

from quality import (
    DEFAULT_CORPUS, REPO, RESULTS_DIR, code_version, hqq2gguf_quantize, llama_cpp_quantize,
    llama_cpp_quantize_imatrix, machine,
)
from hqq2gguf.allocate.result import TENSORS_KEY
from hqq2gguf.runtime.evaluate import evaluate, reference_cache
from hqq2gguf.runtime.metrics import paired_kld_ratio

logger = logging.getLogger("allocation")

BUDGETS = ("Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K")
SERIES = ("llama.cpp", "llama.cpp + imatrix", "hqq2gguf", "hqq2gguf allocated", "llama.cpp given hqq2gguf's types")
BASE = "llama.cpp"
LLAMA_QUANTIZE = REPO / ".cache" / "llama-tools" / "build" / "bin" / "llama-quantize"


def quantize_with_types(src: Path, dst: Path, recipe: str, allocated: Path, binary: Path, threads: int) -> float:
    """llama.cpp's quantizer (the llama-quantize binary) given the allocated file's types as --tensor-type
    (anchored names, as hqq2gguf prints them); the types of the result are checked against the allocated file."""
    record = gguf.GGUFReader(allocated).get_field(TENSORS_KEY).contents()
    args = []
    for item in record:
        name, qtype = item.rsplit("=", 1)
        args += ["--tensor-type", f"^{name.replace('.', chr(92) + '.')}$={qtype.lower()}"]
    t0 = time.perf_counter()
    proc = subprocess.run([str(binary), *args, str(src), str(dst), recipe, str(threads)], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise click.ClickException(f"llama-quantize failed ({proc.returncode}): {proc.stderr[-2000:]}")
    seconds = time.perf_counter() - t0
    ours = {t.name: t.tensor_type for t in gguf.GGUFReader(allocated).tensors}
    theirs = {t.name: t.tensor_type for t in gguf.GGUFReader(dst).tensors}
    if ours != theirs:
        raise click.ClickException(f"llama-quantize's types differ from the allocation's: {dst}")
    return seconds


def _series(doc: dict, quantizer: str) -> str | None:
    """The series of a quality.py row: llama.cpp with or without the file's imatrix; hqq2gguf at the recipe's
    types only from a run with the default calibration and no imatrix."""
    if doc.get("imatrix"):
        return "llama.cpp + imatrix" if quantizer == "llama.cpp" else None
    if quantizer == "hqq2gguf":
        return "hqq2gguf" if doc.get("calibration") in ("auto", "self") and not doc.get("solver_weights") else None
    return quantizer


def render(doc: dict) -> str:
    rows = doc["rows"]
    by = {(r["budget"], r["series"]): r for r in rows}
    series = [s for s in SERIES if any(r["series"] == s for r in rows)]
    lines = [f"# KLD against file size: {doc['name']}", "",
             f"Reference `{doc['reference']}`; corpus `{doc['corpus']}`, first {doc['n_chunks']} chunks x "
             f"{doc['n_ctx']} tokens (llama-perplexity --kl-divergence, hqq2gguf.runtime.evaluate). Budgets: the "
             "bytes of llama.cpp's recipe file; `hqq2gguf allocated` is `--type RECIPE --allocate` (default "
             "calibration: the model's own text); `llama.cpp given hqq2gguf's types` is llama-quantize given that "
             "file's types as --tensor-type (no imatrix): what the allocation alone buys.", "",
             f"Command: `{doc['command']}` (code {doc['code']}); carried rows name their source in the JSON.", "",
             "| budget | series | bytes | mean KLD | top-1 | PPL | quantize s | KLD / llama.cpp (paired ± 2 s.e.) "
             "| KLD / llama.cpp + imatrix |", "|---|---|---|---|---|---|---|---|---|"]
    for budget in doc["budgets"]:
        base, imat = by.get((budget, BASE)), by.get((budget, "llama.cpp + imatrix"))
        for s in series:
            r = by.get((budget, s))
            if r is None:
                continue
            cells = [budget, s, f"{r['bytes']:,}", f"{r['kld_mean']:.5f} ± {r['kld_unc']:.5f}",
                     f"{100 * r['same_top']:.1f}%", f"{r['ppl']:.3f}", f"{r['quant_seconds']:.1f}"]
            for other in (base, imat):
                if other is None or other is r:
                    cells.append("")
                    continue
                pr, se = paired_kld_ratio(r["chunk_kld"], other["chunk_kld"])
                cells.append(f"{pr:.3f} ± {2 * se:.3f}")
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Picture: `allocation_{doc['name']}.png`."]
    lines += [f"Run {doc['stopped']}."] if doc.get("stopped") else []
    lines += [f"Note: {n}" for n in doc.get("notes", [])]  # added by hand where rows were carried or mixed
    lines.append("")
    return "\n".join(lines)


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    styles = {"llama.cpp": ("o-", "tab:gray"), "llama.cpp + imatrix": ("s--", "tab:blue"),
              "hqq2gguf": ("^-", "tab:orange"), "hqq2gguf allocated": ("D-", "tab:red"),
              "llama.cpp given hqq2gguf's types": ("v:", "tab:green")}
    for s in SERIES:
        pts = sorted((r["bytes"] / 1e6, r["kld_mean"]) for r in doc["rows"] if r["series"] == s)
        if pts:
            marker, color = styles[s]
            ax.plot(*zip(*pts), marker, color=color, label=s)
    ax.set_xlabel("file size (MB)")
    ax.set_ylabel("mean KLD to the F16 reference (log)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    by_size = sorted({r["budget"]: r["bytes"] for r in doc["rows"] if r["series"] == "llama.cpp"}.items(),
                     key=lambda kv: kv[1])
    for budget, nbytes in by_size:  # each budget named at its size, not in a title that outgrows the figure
        ax.annotate(budget, (nbytes / 1e6, 0), xycoords=("data", "axes fraction"), xytext=(0, 4),
                    textcoords="offset points", ha="center", fontsize=8, color="tab:gray")
    ax.set_title(f"{doc['name']}: mean KLD at the sizes of llama.cpp's recipe files")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(doc: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"allocation_{doc['name']}"  # names hold dots (qwen2.5-...): no with_suffix
    (out_dir / f"{stem}.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out_dir / f"{stem}.md").write_text(render(doc))
    plot(doc, out_dir / f"{stem}.png")


@click.command()
@click.argument("reference", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True)
@click.option("--budgets", default=",".join(BUDGETS), show_default=True, help="llama.cpp recipes whose sizes are used")
@click.option("--series", default=",".join(SERIES), show_default=True)
@click.option("--chunks", "n_chunks", type=int, default=40, show_default=True)
@click.option("--ctx", "n_ctx", type=int, default=512, show_default=True)
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--imatrix", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="the imatrix of the `llama.cpp + imatrix` series (e.g. llama-imatrix on the Opticks text)")
@click.option("--llama-quantize", "binary", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=LLAMA_QUANTIZE if LLAMA_QUANTIZE.exists() else None)
@click.option("--keep-rows", type=click.Path(exists=True, dir_okay=False, path_type=Path), multiple=True,
              help="quality_*.json (or allocation_*.json) rows to carry: same reference, chunks and context")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=REPO / ".cache" / "quality")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=RESULTS_DIR)
def main(reference: Path, name: str, budgets: str, series: str, n_chunks: int, n_ctx: int, threads: int,
         imatrix: Path | None, binary: Path | None, keep_rows: tuple[Path, ...], workdir: Path, out_dir: Path) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:  # the picture is drawn after every row: fail now, not after the first conversion
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise click.ClickException("the picture needs matplotlib: pip install -e '.[bench]'") from e
    text = DEFAULT_CORPUS.read_bytes()
    cache = workdir / f"{reference.stem}.c{n_ctx}.n{n_chunks}.logits"
    wanted_budgets = [b.strip() for b in budgets.split(",") if b.strip()]
    wanted = [s.strip() for s in series.split(",") if s.strip()]
    if unknown := sorted(set(wanted) - set(SERIES)):
        raise click.BadParameter(f"unknown series {unknown} (known: {list(SERIES)})")
    doc = {"name": name, "reference": str(reference), "corpus": str(DEFAULT_CORPUS), "n_chunks": n_chunks,
           "n_ctx": n_ctx, "budgets": wanted_budgets, "imatrix": str(imatrix) if imatrix else None,
           "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]), "code": code_version(),
           "machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": []}
    for kept in keep_rows:  # quality.py's rows: quantizer llama.cpp / hqq2gguf at a recipe
        old = json.loads(kept.read_text())
        if (old["reference"], old["n_chunks"], old["n_ctx"]) != (str(reference), n_chunks, n_ctx):
            raise click.BadParameter(f"{kept} was made with another reference or chunking")
        for r in old["rows"]:
            s, b = r.get("series") or _series(old, r["quantizer"]), r.get("budget") or r["recipe"]
            if b in wanted_budgets and s in wanted and "chunk_kld" in r:
                doc["rows"] = [x for x in doc["rows"] if (x["budget"], x["series"]) != (b, s)]
                # a row carried twice names where it was first made
                doc["rows"].append(r | {"budget": b, "series": s, "carried_from": r.get("carried_from", str(kept)),
                                        "carried_code": r.get("carried_code", r.get("code", old.get("code")))})
    reference_cache(reference, text, cache, n_ctx=n_ctx, n_chunks=n_chunks, n_threads=threads)
    done = {(r["budget"], r["series"]) for r in doc["rows"]}
    for budget in wanted_budgets:
        allocated = workdir / f"{reference.stem}.alloc.{budget}.gguf"
        for s in wanted:
            if (budget, s) in done:
                continue
            dst = workdir / f"{reference.stem}.{s.replace(' ', '_').replace(',', '').replace('+', 'im')}.{budget}.gguf"
            if s == "llama.cpp":
                seconds = llama_cpp_quantize(reference, dst, budget, threads)
            elif s == "llama.cpp + imatrix":
                if imatrix is None:
                    continue
                seconds = llama_cpp_quantize_imatrix(reference, dst, budget, threads, imatrix, binary)
            elif s == "hqq2gguf":
                seconds = hqq2gguf_quantize(reference, dst, budget, threads)
            elif s == "hqq2gguf allocated":
                from hqq2gguf.convert import convert
                from hqq2gguf.options import ConvertOptions

                t0 = time.perf_counter()
                convert(reference, ConvertOptions.from_args(recipe=budget, output=allocated, force=True,
                                                            allocate=True))
                seconds, dst = time.perf_counter() - t0, allocated
            else:
                if binary is None or not allocated.exists():
                    raise click.ClickException(f"{s} needs the llama-quantize binary and the allocated file first")
                seconds = quantize_with_types(reference, dst, budget, allocated, binary, threads)
            result = evaluate(dst, reference, text, n_ctx=n_ctx, n_chunks=n_chunks, n_threads=threads,
                              ref_cache=cache)
            doc["rows"].append({"budget": budget, "series": s, "file": str(dst), "bytes": dst.stat().st_size,
                                "quant_seconds": round(seconds, 2), "code": doc["code"], **result.to_dict()})
            logger.info("%s / %s: %d bytes, KLD %.5f (quantize %.1f s)", budget, s, dst.stat().st_size,
                        result.kld_mean, seconds)
            write(doc, out_dir)
            if dst != allocated:
                dst.unlink()
        allocated.unlink(missing_ok=True)
    doc["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    write(doc, out_dir)
    click.echo(render(doc))


if __name__ == "__main__":
    main()
