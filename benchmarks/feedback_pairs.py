"""The error feedback's paired measurements: each pair of rows of benchmarks/results/feedback_settings.jsonl
(the same model, recipe and chunks, with and without the feedback or its variant) as a table: mean and median
KLD, top-1, conversion time, and the chunk-paired ratio (+- 2 s.e.; halves of the chunks apart).

    python benchmarks/feedback_pairs.py TEST_TAG:BASE_TAG ... > benchmarks/results/feedback_pairs.md
"""
import json
import sys
from pathlib import Path

from hqq2gguf.runtime.metrics import paired_kld_ratio

RESULTS = Path(__file__).resolve().parent / "results" / "feedback_settings.jsonl"


def setting(row: dict) -> str:
    """The feedback a row was made with: off, or its self-text sequences and damping."""
    if "no-feedback" in row.get("flags", []) or row.get("gptq") is False:
        return "off"
    cal = row.get("feedback_settings") or {"sequences": (row.get("cal") or [128])[0], "damp": row.get("damp", 0.1)}
    return f"{cal['sequences']} seq, damp {cal['damp']}" + (", in-block columns" if row.get("within_blocks") else "")


def main(pairs: list[str]) -> None:
    rows = {}
    for line in RESULTS.read_text().splitlines():
        row = json.loads(line)
        rows[row["tag"]] = row  # a tag run again: its last row
    print("| test | base | model | recipe | chunks | feedback (test) | mean KLD test / base | median KLD | top-1 | conversion s | "
          "ratio (paired +- 2 s.e.) | halves |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for pair in pairs:
        t, b = (rows[tag] for tag in pair.split(":"))
        x, y = t["chunk_kld"], b["chunk_kld"]
        ratio, se = paired_kld_ratio(x, y)
        h = len(x) // 2
        halves = " / ".join(f"{paired_kld_ratio(x[s], y[s])[0]:.3f}" for s in (slice(0, h), slice(h, None)))
        print(f"| {t['tag']} | {b['tag']} | {Path(t['reference']).name.removesuffix('.gguf')} | {t['recipe']} | "
              f"{t['n_chunks']} | {setting(t)} | {t['kld_mean']:.5f} / {b['kld_mean']:.5f} | "
              f"{t['kld_median']:.5f} / {b['kld_median']:.5f} | {t['same_top']:.4f} / {b['same_top']:.4f} | "
              f"{t['quant_s']:.0f} / {b['quant_s']:.0f} | {ratio:.3f} +- {2 * se:.3f} | {halves} |")


if __name__ == "__main__":
    main(sys.argv[1:])
