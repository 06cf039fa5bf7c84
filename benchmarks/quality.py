"""Quality at identical bytes: quantize a dithered F16 reference with llama.cpp's quantizer, recipe by
recipe, and measure KL-divergence / top-1 agreement / PPL against that reference (llama-perplexity's
method, hqq2gguf.runtime.evaluate) on the first N x 512-token chunks of wiki.test.raw.

Writes ``<out>/quality_<name>.json`` (every number, the command, seed, chunks, machine, versions) and
``<out>/quality_<name>.md`` (one column group per quantizer: llama.cpp now, hqq2gguf later, and the
KLD ratio hqq2gguf / llama.cpp). The JSON is rewritten after every recipe, so a long run can be stopped.

    python benchmarks/quality.py /work/models/ref/SmolLM2-135M-Instruct.dithered-s1234.F16.gguf \
        --name smollm2 --chunks 40
    python benchmarks/quality.py /work/models/ref/Qwen2.5-Coder-1.5B-Instruct.dithered-s1234.F16.gguf \
        --name qwen2.5-coder-1.5b --chunks 20
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import click
import gguf
import numpy as np

from hqq2gguf.runtime.evaluate import EvalResult, evaluate, reference_cache
from hqq2gguf.runtime.metrics import paired_kld_ratio

logger = logging.getLogger("quality")

DEFAULT_RECIPES = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "IQ4_NL", "Q4_0", "Q3_K_M", "Q2_K")
REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO.parent / "shared" / "eval" / "wiki.test.raw"  # ../shared beside the repository
RESULTS_DIR = REPO / "benchmarks" / "results"
QUANTIZERS = ("llama.cpp", "hqq2gguf")  # table column groups, in order; ratio = hqq2gguf / llama.cpp

# llama.cpp baselines published in shared/eval/README.md (no imatrix, same dithered seed-1234 reference):
# recipe -> (bytes, mean KLD, top-1 %). SmolLM2: 40 chunks; Qwen: 20 chunks.
PUBLISHED = {
    "smollm2": {
        "ppl_ref": 29.59,
        "Q8_0": (144_811_072, 0.00542, 94.9), "Q6_K": (138_382_912, 0.0122, 93.0),
        "Q5_K_M": (112_103_488, 0.0531, 85.7), "Q4_K_M": (105_454_144, 0.0728, 83.6),
        "IQ4_NL": (92_058_688, 0.253, 70.3), "Q4_0": (91_726_912, 0.431, 63.4),
        "Q3_K_M": (93_510_208, 0.250, 71.8), "Q2_K": (88_201_792, 0.551, 59.1),
    },
    "qwen2.5-coder-1.5b": {
        "ppl_ref": 20.74,
        "Q8_0": (None, 0.00167, 98.0), "Q6_K": (None, 0.0118, 94.3), "Q5_K_M": (None, 0.0217, 92.5),
        "Q4_K_M": (None, 0.0533, 88.5), "IQ4_NL": (None, 0.0715, 87.2), "Q4_0": (None, 0.112, 82.8),
        "Q3_K_M": (None, 0.150, 80.4), "Q2_K": (None, 0.554, 63.9),
    },
}


def llama_cpp_quantize(src: Path, dst: Path, recipe: str, n_threads: int) -> float:
    """Quantize ``src`` to ``dst`` with llama.cpp's own quantizer (no imatrix); returns wall seconds."""
    from hqq2gguf.baseline import llama_quantize

    try:
        ftype = gguf.LlamaFileType[f"MOSTLY_{recipe}"]
    except KeyError:
        raise click.BadParameter(f"unknown recipe {recipe!r} (not a gguf.LlamaFileType MOSTLY_* name)") from None
    return llama_quantize(src, dst, ftype, nthread=n_threads)


def llama_cpp_quantize_imatrix(src: Path, dst: Path, recipe: str, n_threads: int, imatrix: Path,
                               binary: Path | None) -> float:
    """llama.cpp's quantizer WITH an imatrix: through llama-cpp-python (the imatrix read and normalized as
    llama-quantize does, hqq2gguf.calibrate), or the llama-quantize binary when given; returns wall seconds."""
    if binary is None:
        from hqq2gguf.baseline import llama_quantize
        from hqq2gguf.calibrate import read_imatrix

        return llama_quantize(src, dst, gguf.LlamaFileType[f"MOSTLY_{recipe}"], nthread=n_threads,
                              imatrix=read_imatrix(imatrix).entries)
    import subprocess

    t0 = time.perf_counter()
    proc = subprocess.run([str(binary), "--imatrix", str(imatrix), str(src), str(dst), recipe, str(n_threads)],
                          check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise click.ClickException(f"llama-quantize failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def hqq2gguf_quantize(src: Path, dst: Path, recipe: str, n_threads: int, solver_weights: str | None = None,
                      importance: str = "none", imatrix: Path | None = None, calibration: str = "auto") -> float:
    """Quantize ``src`` to ``dst`` with hqq2gguf --type RECIPE (the command line's defaults for the options not
    given, e.g. importance weights with an imatrix or calibration text); returns wall seconds."""
    from hqq2gguf.convert import convert
    from hqq2gguf.options import ConvertOptions

    del n_threads  # the solver uses one worker thread per CPU
    t0 = time.perf_counter()
    convert(src, ConvertOptions.from_args(recipe=recipe, output=dst, force=True, solver_weights=solver_weights,
                                          importance=importance, imatrix=imatrix, calibration=calibration))
    return time.perf_counter() - t0


QUANTIZERS = {"llama.cpp": llama_cpp_quantize, "hqq2gguf": hqq2gguf_quantize}


def code_version() -> str:
    """The commit of the checkout whose hqq2gguf package is imported (which need not be this script's: python puts
    the script's folder, not the working directory, first on sys.path), "+dirty" when its tracked files differ."""
    import hqq2gguf

    root = Path(hqq2gguf.__file__).resolve().parent.parent
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True)
    if head.returncode != 0:
        return "unknown"
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "hqq2gguf", "runtime", "cuda"], cwd=root)
    return head.stdout.strip() + ("+dirty" if dirty.returncode else "")


def machine() -> dict:
    import llama_cpp

    return {
        "host": platform.node(), "platform": platform.platform(), "processor": platform.processor(),
        "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "llama_cpp_python": llama_cpp.__version__, "gguf": getattr(gguf, "__version__", "?"),
        "numpy": np.__version__,
    }


def row(recipe: str, quantizer: str, path: Path, quant_seconds: float, result: EvalResult) -> dict:
    return {"recipe": recipe, "quantizer": quantizer, "file": str(path), "bytes": path.stat().st_size,
            "quant_seconds": round(quant_seconds, 2), **result.to_dict()}


def tensor_layout(path: Path) -> list[tuple[str, str, int]]:
    """(name, type, bytes) of every tensor: what must be identical between the two quantizers' files."""
    return [(t.name, gguf.GGMLQuantizationType(t.tensor_type).name, int(t.n_bytes))
            for t in gguf.GGUFReader(path).tensors]


def same_layout(a: Path, b: Path) -> bool:
    """Same tensors with the same types and byte sizes (the order may differ: llama-quantize's binary sorts)."""
    return sorted(tensor_layout(a)) == sorted(tensor_layout(b))


TARGET_RECIPES = ("Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M")


def target(recipe: str, ratio: float, imatrix: bool) -> str:
    """The issue's targets: <= 0.80 from Q2_K to Q5_K_M, never above 1.0; with an imatrix <= 0.90."""
    if ratio > 1.0:
        return "NO (> 1.0)"
    goal = 0.90 if imatrix else 0.80
    if recipe in TARGET_RECIPES or imatrix:  # with an imatrix: every recipe of that comparison
        return "yes" if ratio <= goal else f"NO (> {goal:.2f})"
    return "yes (<= 1.0)"


def render_markdown(doc: dict) -> str:
    """The results table: one row per recipe, a column group per quantizer, the KLD ratio, and the
    published llama.cpp numbers of shared/eval/README.md when the model is one of the dev models."""
    rows = doc["rows"]
    recipes = list(dict.fromkeys(r["recipe"] for r in rows))
    carried = sorted({r["carried_from"] for r in rows if "carried_from" in r})
    by = {(r["recipe"], r["quantizer"]): r for r in rows}
    pub = PUBLISHED.get(doc["name"], {})
    head = ["recipe"]
    for q in QUANTIZERS:
        head += [f"{q} bytes", f"{q} mean KLD", f"{q} KLD p99", f"{q} top-1", f"{q} PPL"]
    held = doc.get("held_out_from")
    head += ["KLD ratio hqq2gguf/llama.cpp", "paired ratio ± 2 s.e."]
    head += [f"held-out chunks {held}-{doc['n_chunks'] - 1}: paired ratio"] if held else []
    head += ["target met", "tensor types+bytes identical"]
    if pub:
        head += ["README bytes", "README KLD", "README top-1"]
    lines = [f"# Quality vs the dithered F16 reference: {doc['name']}", "",
             f"Reference `{doc['reference']}` (dither seed {doc['dither_seed']}); corpus `{doc['corpus']}`, "
             f"first {doc['n_chunks']} chunks x {doc['n_ctx']} tokens, second halves scored "
             f"({doc.get('n_tokens_scored', '?')} tokens); method: llama-perplexity --kl-divergence "
             f"(hqq2gguf.runtime.evaluate). Reference PPL {doc.get('ppl_ref', float('nan')):.4f}"
             + (f" (README: {pub['ppl_ref']})" if pub else "") + ".", "",
             f"Command: `{doc['command']}`"
             + (f" (rows of {', '.join(f'`{c}`' for c in carried)} carried over: same reference and chunks; "
                "the command and code version that produced each row are in the JSON)" if carried else ""), "",
             f"Machine: {doc['machine']['processor'] or doc['machine']['platform']}, "
             f"{doc['machine']['cpu_count']} CPUs, {doc['n_threads']} threads; llama-cpp-python "
             f"{doc['machine']['llama_cpp_python']}.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for recipe in recipes:
        cells = [recipe]
        for q in QUANTIZERS:
            r = by.get((recipe, q))
            cells += ([f"{r['bytes']:,}", f"{r['kld_mean']:.5f} ± {r['kld_unc']:.5f}", f"{r['kld_p99']:.4f}",
                       f"{100 * r['same_top']:.1f}%", f"{r['ppl']:.3f}"] if r else [""] * 5)
        a, b = by.get((recipe, "llama.cpp")), by.get((recipe, "hqq2gguf"))
        ratio = b["kld_mean"] / a["kld_mean"] if a and b else None
        cells.append(f"{ratio:.3f}" if ratio is not None else "")
        paired = a and b and a.get("chunk_kld") and b.get("chunk_kld")
        if paired:
            pr, se = paired_kld_ratio(b["chunk_kld"], a["chunk_kld"])
            cells.append(f"{pr:.3f} ± {2 * se:.3f}")
        else:
            cells.append("")
        if held:
            hr, hse = paired_kld_ratio(b["chunk_kld"][held:], a["chunk_kld"][held:]) if paired else (None, None)
            cells.append(f"{hr:.3f} ± {2 * hse:.3f}" if paired else "")
        cells.append(target(recipe, ratio, bool(doc.get("imatrix"))) if ratio is not None else "")
        layout = doc.get("same_layout", {}).get(recipe)
        cells.append("" if layout is None else ("yes" if layout else "NO"))
        if pub:
            p = pub.get(recipe)
            cells += ([f"{p[0]:,}" if p[0] else "", f"{p[1]}", f"{p[2]}%"] if p else ["", "", ""])
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Paired ratio: the two files' mean KLDs on the same chunks, ± 2 standard errors of the ratio "
              "estimator over chunks (runtime.metrics.paired_kld_ratio); a ratio whose interval includes 1.0 is "
              "no measurable difference. Blank where a row predates per-chunk KLDs."]
    lines += ["", "Times (s): " + ", ".join(
        f"{r['recipe']}/{r['quantizer']}: quantize {r['quant_seconds']:.1f}, eval {r['test_seconds']:.1f}"
        for r in rows), ""]
    return "\n".join(lines)


def rerender(results: Path) -> Path:
    """Re-check the layouts of a results JSON's files and re-render its Markdown with this code (the
    target column and layout check of results made before they existed, or after rows were carried)."""
    doc = json.loads(results.read_text())
    doc["same_layout"] = check_layouts(doc["rows"], doc.get("same_layout", {}))
    results.write_text(json.dumps(doc, indent=1) + "\n")
    md = results.with_suffix(".md")
    md.write_text(render_markdown(doc))
    return md


def check_layouts(rows: list[dict], known: dict[str, bool]) -> dict[str, bool]:
    """Per recipe with both quantizers' rows: are the files' tensor types and byte sizes identical? Checked on
    the files where both still exist, else the verdict ``known`` from when they did (files are deleted after
    a run to save disk)."""
    out = {}
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        files = {r["quantizer"]: Path(r["file"]) for r in rows if r["recipe"] == recipe}
        if len(files) == 2 and all(f.exists() for f in files.values()):
            out[recipe] = same_layout(files["llama.cpp"], files["hqq2gguf"])
        elif recipe in known:
            out[recipe] = known[recipe]
    return out


def write_outputs(doc: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    js, md = out_dir / f"quality_{doc['name']}.json", out_dir / f"quality_{doc['name']}.md"
    js.write_text(json.dumps(doc, indent=1) + "\n")
    md.write_text(render_markdown(doc))
    return js, md


@click.command()
@click.argument("reference", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="results name, e.g. smollm2 (also selects the README's numbers)")
@click.option("--recipes", default=",".join(DEFAULT_RECIPES), show_default=True, help="comma-separated")
@click.option("--chunks", "n_chunks", type=int, default=40, show_default=True)
@click.option("--ctx", "n_ctx", type=int, default=512, show_default=True)
@click.option("--corpus", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=DEFAULT_CORPUS)
@click.option("--threads", "n_threads", type=int, default=os.cpu_count(), show_default=True)
@click.option("--dither-seed", type=int, default=1234, show_default=True, help="recorded: the reference's seed")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=REPO / ".cache" / "quality",
              show_default=True, help="quantized files and the reference log-prob cache (outside the repo)")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=RESULTS_DIR)
@click.option("--quantizers", default="llama.cpp,hqq2gguf", show_default=True,
              help="comma-separated: llama.cpp, hqq2gguf (same reference, recipe, chunks)")
@click.option("--solver-weights", type=click.Choice(["auto", "none", "abs", "square", "llama", "importance"]),
              default=None, help="hqq2gguf's objective weights (recorded in the results; default: the command "
                                 "line's, importance with an imatrix or calibration text, else auto)")
@click.option("--calibration", default="auto", show_default=True,
              help="hqq2gguf's --calibration (auto: the product's default; self, none or a text file; recorded)")
@click.option("--importance", type=click.Choice(["none", "norms", "derived"]), default="none",
              show_default=True,
              help="hqq2gguf's data-free column importance (recorded in the results)")
@click.option("--imatrix", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="llama.cpp imatrix given to BOTH quantizers (llama.cpp through --llama-quantize)")
@click.option("--llama-quantize", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="llama.cpp's llama-quantize binary for the --imatrix runs (default: llama-cpp-python's API)")
@click.option("--keep-rows", type=click.Path(exists=True, dir_okay=False, path_type=Path), multiple=True,
              help="an earlier results JSON of the same reference and chunks: its rows for (recipe, quantizer) "
                   "pairs not run now are carried over (e.g. llama.cpp's side, which does not change); "
                   "repeatable, a later file's row replacing an earlier one's")
@click.option("--held-out-from", type=int, default=None,
              help="also report the paired ratio over chunks K..N-1 alone: chunks never looked at while tuning")
@click.option("--only-missing", is_flag=True,
              help="with --keep-rows: carry every kept row and run only the (recipe, quantizer) pairs they lack")
def main(reference: Path, name: str, recipes: str, n_chunks: int, n_ctx: int, corpus: Path, n_threads: int,
         dither_seed: int, workdir: Path, out_dir: Path, quantizers: str, solver_weights: str | None,
         calibration: str, importance: str, imatrix: Path | None, llama_quantize: Path | None, keep_rows: tuple[Path, ...],
         only_missing: bool, held_out_from: int | None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    text = corpus.read_bytes()
    cache = workdir / f"{reference.stem}.c{n_ctx}.n{n_chunks}.logits"
    doc = {"name": name, "reference": str(reference), "dither_seed": dither_seed, "corpus": str(corpus),
           "n_ctx": n_ctx, "n_chunks": n_chunks, "n_threads": n_threads, "solver_weights": solver_weights,
           "importance": importance, "imatrix": None if imatrix is None else str(imatrix),
           "calibration": calibration, "held_out_from": held_out_from,
           "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]), "code": code_version(),
           "started": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(), "rows": []}
    _, ref_ppl = reference_cache(reference, text, cache, n_ctx=n_ctx, n_chunks=n_chunks, n_threads=n_threads)
    doc.update(ppl_ref=ref_ppl.ppl, ppl_ref_unc=ref_ppl.ppl_unc, ref_eval_seconds=ref_ppl.seconds,
               n_tokens_scored=ref_ppl.n_tokens_scored)
    logger.info("reference PPL %.4f ± %.4f (%d tokens scored)", ref_ppl.ppl, ref_ppl.ppl_unc, ref_ppl.n_tokens_scored)
    chosen = [q.strip() for q in quantizers.split(",") if q.strip()]
    unknown = sorted(set(chosen) - set(QUANTIZERS))
    if unknown:
        raise click.BadParameter(f"unknown quantizers {unknown} (known: {sorted(QUANTIZERS)})")
    wanted = [r.strip() for r in recipes.split(",") if r.strip()]
    known_layout: dict[str, bool] = {}
    for kept in keep_rows:
        old = json.loads(kept.read_text())
        if (old["reference"], old["n_chunks"], old["n_ctx"]) != (str(reference), n_chunks, n_ctx):
            raise click.BadParameter(f"{kept} was made with another reference or chunking")
        carried = [{"command": old["command"], "code": old.get("code", "before-recorded")} | r
                   | {"carried_from": str(kept)} for r in old["rows"]
                   if r["recipe"] in wanted and (r["quantizer"] not in chosen or only_missing)]
        pairs = {(r["recipe"], r["quantizer"]) for r in carried}  # a later file's row replaces an earlier one
        doc["rows"] = [r for r in doc["rows"] if (r["recipe"], r["quantizer"]) not in pairs] + carried
        known_layout |= old.get("same_layout", {})
    doc["rows"].sort(key=lambda r: wanted.index(r["recipe"]))
    doc["same_layout"] = check_layouts(doc["rows"], known_layout)
    done = {(r["recipe"], r["quantizer"]) for r in doc["rows"]}
    for recipe, quantizer in [(r.strip(), q) for r in recipes.split(",") if r.strip() for q in chosen]:
        if (recipe, quantizer) in done:  # carried over (--only-missing)
            continue
        tag = f"{quantizer}-{solver_weights}-{importance}-{Path(calibration).name}" if quantizer == "hqq2gguf" \
            else quantizer
        tag += f"-imatrix-{imatrix.stem}" if imatrix is not None else ""
        dst = workdir / f"{reference.stem}.{tag}.{recipe}.gguf"
        logger.info("quantizing %s with %s -> %s", recipe, quantizer, dst)
        if quantizer == "hqq2gguf":
            quant_seconds = hqq2gguf_quantize(reference, dst, recipe, n_threads, solver_weights, importance, imatrix,
                                              calibration)
        elif imatrix is not None:
            quant_seconds = llama_cpp_quantize_imatrix(reference, dst, recipe, n_threads, imatrix, llama_quantize)
        else:
            quant_seconds = QUANTIZERS[quantizer](reference, dst, recipe, n_threads)
        result = evaluate(dst, reference, text, n_ctx=n_ctx, n_chunks=n_chunks, n_threads=n_threads,
                          ref_cache=cache)
        doc["rows"].append(row(recipe, quantizer, dst, quant_seconds, result) | {"code": doc["code"]})
        doc["same_layout"] |= check_layouts([r for r in doc["rows"] if r["recipe"] == recipe], {})
        logger.info("%s: %d bytes, KLD %.5f, top-1 %.1f%%, PPL %.3f (quantize %.1f s, eval %.1f s)", recipe,
                    dst.stat().st_size, result.kld_mean, 100 * result.same_top, result.ppl, quant_seconds,
                    result.test_seconds)
        write_outputs(doc, out_dir)
    doc["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    js, md = write_outputs(doc, out_dir)
    click.echo(f"wrote {js} and {md}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--rerender"]:  # python benchmarks/quality.py --rerender RESULTS.json
        click.echo(f"wrote {rerender(Path(sys.argv[2]))}")
    else:
        main()
