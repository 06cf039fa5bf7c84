"""Which calibration text: importance matrices from several texts, each judged by the KLD it buys.

For one dithered F16 reference, builds an imatrix from each text variant through hqq2gguf's own calibration
machinery (hqq2gguf.calibrate.collect_activations: llama-imatrix's statistics), quantizes the reference with
llama.cpp's quantizer given that imatrix (fast, and the same consumer for every variant, so the table compares
the texts, not solvers), and measures mean KLD on the first N chunks of wiki.test.raw against the reference.
Every row is chunk-paired with the no-imatrix row of the same recipe.

Variants (name: what the model reads):
  none            no imatrix (llama.cpp's default)
  self-wN         N tokens the model writes itself (N/256 sequences of 256 tokens, random vocabulary starts,
                  temperatures 0.6/0.8/1.0/1.2), statistics collected while it writes (hqq2gguf's default path)
  self-wN-sL      the same in sequences of L tokens (N/L of them, 16 side by side)
  self-read-8192  the same 8192-token self-written text, written first and then read back in 512-token chunks
                  (llama-imatrix's way; the first implementation)
  self-t1-w4096   as self-w4096, every sequence at temperature 1.0
  random-4096     8 chunks of 512 uniformly random ordinary vocabulary tokens
  prose           runtime/data/corpus.txt (hand-written English prose shipped with hqq2gguf, ~2.7k tokens)
  opticks         an imatrix file made by llama-imatrix on benchmarks/data/opticks-calibration.txt (--opticks)

    python benchmarks/calibration_table.py /work/models/ref/SmolLM2-135M-Instruct.dithered-s1234.F16.gguf \\
        --name smollm2 --opticks /work/models/imatrix/smollm2-opticks.gguf

Writes benchmarks/results/calibration_<name>.{json,md}; the JSON is rewritten after every row.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import (DEFAULT_CORPUS, REPO, RESULTS_DIR, code_version, hqq2gguf_quantize,  # noqa: E402
                     llama_cpp_quantize, llama_cpp_quantize_imatrix, machine)

from hqq2gguf.calibrate import SelfText, collect_activations, write_imatrix  # noqa: E402
from hqq2gguf.calibrate.collect import ImatrixCollector  # noqa: E402
from hqq2gguf.calibrate.llama_run import LlamaRunner  # noqa: E402
from hqq2gguf.runtime.evaluate import evaluate, reference_cache  # noqa: E402
from hqq2gguf.runtime.metrics import paired_kld_ratio  # noqa: E402

logger = logging.getLogger("calibration_table")

PROSE = REPO / "runtime" / "data" / "corpus.txt"
DEFAULT_VARIANTS = ("none", "self-w1024", "self-w2048", "self-w4096", "self-w8192", "self-read-8192",
                    "self-t1-w4096", "random-4096", "prose", "opticks")


def self_text(spec: str, temperatures: tuple[float, ...] = (0.6, 0.8, 1.0, 1.2)) -> SelfText:
    """``N`` (N tokens in sequences of 256) or ``N-sL`` (sequences of L tokens)."""
    total, _, length = spec.partition("-s")
    seq = int(length) if length else 256
    n_seq = max(1, int(total) // seq)
    return SelfText(n_sequences=n_seq, n_tokens=seq, temperatures=temperatures, batch=min(16, n_seq))


def random_stats(model: Path, n_chunks: int, seed: int = 0) -> tuple[object, int]:
    """llama-imatrix's statistics over chunks of uniformly random ordinary tokens."""
    collector = ImatrixCollector()
    with LlamaRunner(model, n_ctx=512, eval_callback=collector.callback) as llm:
        collector.active = False
        plain = llm.plain_tokens()
        rng = np.random.default_rng(seed)
        collector.active = True
        for _ in range(n_chunks):
            chunk = [int(t) for t in rng.choice(plain, size=512)]
            if llm.add_bos:
                chunk[0] = llm.bos
            llm.evaluate(chunk)
    stats = collector.stats
    stats.chunks, stats.chunk_size = n_chunks, 512
    return stats, n_chunks * 512


def make_variant(variant: str, model: Path, work: Path, opticks: Path | None) -> tuple[Path | None, dict]:
    """The imatrix of ``variant`` (None for "none"), and what it cost."""
    if variant == "none":
        return None, {}
    if variant == "opticks":
        if opticks is None:
            raise click.BadParameter("the opticks variant needs --opticks FILE")
        return opticks, {"file": str(opticks)}
    out = work / f"{model.stem}.{variant}.imatrix.gguf"
    t0 = time.perf_counter()
    if variant.startswith("self-w"):
        stats, text = collect_activations(model, self_text(variant[len("self-w"):]))
        tokens = text.tokens
    elif variant.startswith("self-t1-w"):
        stats, text = collect_activations(model, self_text(variant[len("self-t1-w"):], (1.0,)))
        tokens = text.tokens
    elif variant.startswith("self-read-"):
        _, written = collect_activations(model, self_text(variant[len("self-read-"):]))
        path = work / f"{model.stem}.{variant}.txt"
        path.write_text(written.text, encoding="utf-8")
        t0 = time.perf_counter()  # the reading alone; writing costs as much as self-wN
        stats, text = collect_activations(model, path)
        tokens = text.tokens
    elif variant.startswith("random-"):
        stats, tokens = random_stats(model, int(variant[len("random-"):]) // 512)
    elif variant == "prose":
        stats, text = collect_activations(model, PROSE)
        tokens = text.tokens
    else:
        raise click.BadParameter(f"unknown variant {variant!r}")
    seconds = time.perf_counter() - t0
    write_imatrix(out, stats.sums, stats.counts, datasets=[variant], chunk_count=stats.chunks,
                  chunk_size=stats.chunk_size)
    return out, {"file": str(out), "tokens": tokens, "seconds": round(seconds, 1)}


def render(doc: dict) -> str:
    rows = doc["rows"]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    recipes = list(dict.fromkeys(r["recipe"] for r in rows))
    by = {(r["variant"], r["recipe"]): r for r in rows}
    lines = [f"# Calibration text vs KLD: {doc['name']} ({doc['quantizer']} quantizer given each imatrix)", "",
             f"Reference `{doc['reference']}`; corpus `{doc['corpus']}`, first {doc['n_chunks']} chunks x 512 "
             "tokens, second halves scored. Each cell: mean KLD, and the chunk-paired ratio to the same recipe "
             "without imatrix (± 2 s.e.).", "",
             f"Command: `{doc['command']}` (code {doc['code']})", "",
             "| variant | tokens | calibration s | " + " | ".join(recipes) + " | geometric mean ratio |",
             "|---|---|---|" + "---|" * (len(recipes) + 1)]
    for v in variants:
        info = doc["variants"].get(v, {})
        cells, logs = [v, str(info.get("tokens", "")), str(info.get("seconds", ""))], []
        for recipe in recipes:
            r, base = by.get((v, recipe)), by.get(("none", recipe))
            if r is None:
                cells.append("")
                continue
            if base is None or v == "none":
                cells.append(f"{r['kld_mean']:.5f}")
                continue
            ratio, se = paired_kld_ratio(r["chunk_kld"], base["chunk_kld"])
            logs.append(np.log(ratio))
            cells.append(f"{r['kld_mean']:.5f} ({ratio:.3f} ± {2 * se:.3f})")
        cells.append(f"{np.exp(np.mean(logs)):.3f}" if logs and len(logs) == len(recipes) else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@click.command()
@click.argument("reference", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True)
@click.option("--recipes", default="Q4_K_M,Q3_K_M,Q2_K,IQ4_XS", show_default=True)
@click.option("--variants", default=",".join(DEFAULT_VARIANTS), show_default=True)
@click.option("--chunks", "n_chunks", type=int, default=20, show_default=True)
@click.option("--opticks", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.option("--quantizer", type=click.Choice(["llama.cpp", "hqq2gguf"]), default="llama.cpp", show_default=True)
@click.option("--llama-quantize", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="the llama-quantize binary (faster than llama-cpp-python's call for imatrix runs)")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=REPO / ".cache" / "quality")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=RESULTS_DIR)
def main(reference: Path, name: str, recipes: str, variants: str, n_chunks: int, opticks: Path | None,
         quantizer: str, llama_quantize: Path | None, workdir: Path, out_dir: Path) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    workdir.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = DEFAULT_CORPUS.read_bytes()
    cache = workdir / f"{reference.stem}.c512.n{n_chunks}.logits"
    reference_cache(reference, text, cache, n_ctx=512, n_chunks=n_chunks, n_threads=None)
    doc = {"name": name, "reference": str(reference), "corpus": str(DEFAULT_CORPUS), "n_chunks": n_chunks,
           "quantizer": quantizer, "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
           "code": code_version(), "machine": machine(), "variants": {}, "rows": []}
    js, md = out_dir / f"calibration_{name}.json", out_dir / f"calibration_{name}.md"
    for variant in [v.strip() for v in variants.split(",") if v.strip()]:
        imatrix, info = make_variant(variant, reference, workdir, opticks)
        doc["variants"][variant] = info
        for recipe in [r.strip() for r in recipes.split(",") if r.strip()]:
            dst = workdir / f"{reference.stem}.cal-{quantizer}-{variant}.{recipe}.gguf"
            if quantizer == "hqq2gguf":
                seconds = hqq2gguf_quantize(reference, dst, recipe, 2, imatrix=imatrix)
            elif imatrix is None:
                seconds = llama_cpp_quantize(reference, dst, recipe, 2)
            else:
                seconds = llama_cpp_quantize_imatrix(reference, dst, recipe, 2, imatrix, llama_quantize)
            result = evaluate(dst, reference, text, n_ctx=512, n_chunks=n_chunks, n_threads=None, ref_cache=cache)
            doc["rows"].append({"variant": variant, "recipe": recipe, "bytes": dst.stat().st_size,
                                "quant_seconds": round(seconds, 1), **result.to_dict()})
            logger.info("%s %s: KLD %.5f", variant, recipe, result.kld_mean)
            js.write_text(json.dumps(doc, indent=1))
            md.write_text(render(doc))
    click.echo(f"wrote {js} and {md}")


if __name__ == "__main__":
    main()
