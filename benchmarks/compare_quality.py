"""Paired comparison of solver variants: the hqq2gguf rows of several quality.py runs of one recipe (same
reference and chunks), each against the llama.cpp row of its own run and against the first run's hqq2gguf row.

Ratios are chunk-paired (runtime.metrics.paired_kld_ratio, +- 2 standard errors): two of our files scored on the
same chunks differ far less than either differs from llama.cpp's, so variants are compared with each other, not
only through llama.cpp. A run made with ``--quantizers hqq2gguf`` (no llama.cpp row) is compared with the llama.cpp
row of the first run that has one: the same reference and chunks, so the same llama.cpp file and scores.
``--recipe`` may be repeated: one section per recipe.

    python benchmarks/compare_quality.py --recipe Q4_K_M --out benchmarks/results/NAME \
        "4 iterations=run4/quality_x.json" "2 iterations=run2/quality_x.json"
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click

from hqq2gguf.runtime.metrics import paired_kld_ratio


def _row(doc: dict, recipe: str, quantizer: str, path: Path, required: bool = True) -> dict | None:
    rows = [r for r in doc["rows"] if r["recipe"] == recipe and r["quantizer"] == quantizer]
    if not rows or not rows[-1].get("chunk_kld"):
        if not required:
            return None
        raise click.ClickException(f"{path}: no {quantizer} row of {recipe} with per-chunk KLDs")
    return rows[-1]


def _ratio(a: dict, b: dict) -> tuple[float, float]:
    return paired_kld_ratio(a["chunk_kld"], b["chunk_kld"])


def compare(runs: tuple[str, ...], recipe: str) -> dict:
    """One recipe's comparison: per run its hqq2gguf row against llama.cpp's and against the first run's."""
    table = []
    for spec in runs:
        label, _, path_text = spec.rpartition("=")
        path = Path(path_text)
        doc = json.loads(path.read_text())
        table.append({"label": label or path.parent.name, "file": str(path), "reference": doc["reference"],
                      "n_chunks": doc["n_chunks"], "ours": _row(doc, recipe, "hqq2gguf", path),
                      "llama": _row(doc, recipe, "llama.cpp", path, required=False)})
    if len({(t["reference"], t["n_chunks"]) for t in table}) != 1:
        raise click.ClickException("the runs differ in reference or chunk count: their KLDs cannot be paired")
    own_llama = [t["llama"] for t in table if t["llama"] is not None]
    if not own_llama:
        raise click.ClickException(f"no run has a llama.cpp row of {recipe} with per-chunk KLDs")
    first = table[0]["ours"]
    rows = []
    for t in table:
        llama = t["llama"] or own_llama[0]
        vs_llama, vs_first = _ratio(t["ours"], llama), _ratio(t["ours"], first)
        rows.append({"label": t["label"], "file": t["file"], "code": t["ours"].get("code", ""),
                     "quant_seconds": t["ours"]["quant_seconds"], "kld_mean": t["ours"]["kld_mean"],
                     "llama_kld_mean": llama["kld_mean"], "llama_from_other": t["llama"] is None,
                     "vs_llama": vs_llama, "vs_first": vs_first, "same_top": t["ours"]["same_top"],
                     "ppl": t["ours"]["ppl"]})
    return {"recipe": recipe, "reference": table[0]["reference"], "n_chunks": table[0]["n_chunks"], "rows": rows}


def _section(doc: dict) -> list[str]:
    rows = doc["rows"]
    lines = [f"Reference `{doc['reference']}`, {doc['n_chunks']} x 512-token chunks of wiki.test.raw. Ratios: mean "
             "KLD of the row's file over the other's, scored on the same chunks, +- 2 standard errors.", "",
             f"| variant | code | quantize s | mean KLD | llama.cpp's (same run) | vs llama.cpp | vs {rows[0]['label']} "
             "| top-1 | PPL |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        (a, sa), (b, sb) = r["vs_llama"], r["vs_first"]
        llama = f"{r['llama_kld_mean']:.5f}" + (" (another run's)" if r.get("llama_from_other") else "")
        lines.append(f"| {r['label']} | {r['code']} | {r['quant_seconds']:.0f} | {r['kld_mean']:.5f} | "
                     f"{llama} | {a:.3f} ± {2 * sa:.3f} | {b:.3f} ± {2 * sb:.3f} | "
                     f"{r['same_top']:.1%} | {r['ppl']:.3f} |")
    return lines


@click.command()
@click.argument("runs", nargs=-1, required=True)
@click.option("--recipe", "recipes", required=True, multiple=True, help="Repeatable: one section each.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Results path without suffix: .json and .md are written.")
def main(runs: tuple[str, ...], recipes: tuple[str, ...], out: Path) -> None:
    """RUNS: LABEL=QUALITY_JSON, the first one the baseline of the last column."""
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    sections = [compare(runs, recipe) for recipe in recipes]
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out.parent / f"{out.name}.json", out.parent / f"{out.name}.md"  # names hold dots
    if len(sections) == 1:
        json_path.write_text(json.dumps(sections[0] | {"command": command}, indent=1) + "\n")
        lines = [f"# {recipes[0]}: solver variants, chunk-paired", "", f"Command: `{command}`", "",
                 *_section(sections[0])]
    else:
        json_path.write_text(json.dumps({"command": command, "comparisons": sections}, indent=1) + "\n")
        lines = [f"# {', '.join(recipes)}: solver variants, chunk-paired", "", f"Command: `{command}`"]
        for doc in sections:
            lines += ["", f"## {doc['recipe']}", "", *_section(doc)]
    md_path.write_text("\n".join(lines) + "\n")
    click.echo(md_path.read_text())


if __name__ == "__main__":
    main()
