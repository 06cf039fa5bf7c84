"""The product's error feedback measured: one `--type RECIPE` conversion (`allocate`: with --allocate;
`no-feedback`: --no-feedback), mean KLD on 40 wiki chunks, one JSON line appended to
benchmarks/results/feedback_settings.jsonl (beside the experiment's rows, benchmarks/feedback_settings.py).

    python benchmarks/feedback_product.py REF.F16.gguf RECIPE TAG [allocate] [no-feedback]
"""
import json
import logging
import sys
import time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from hqq2gguf.convert import convert
from hqq2gguf.options import ConvertOptions
from hqq2gguf.runtime.evaluate import evaluate
from hqq2gguf.runtime.evaluate import reference_cache
from quality import DEFAULT_CORPUS, REPO, RESULTS_DIR, code_version
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
ref, recipe, tag = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
flags = sys.argv[4:]
text = DEFAULT_CORPUS.read_bytes()
work = REPO / ".cache" / "quality"
work.mkdir(parents=True, exist_ok=True)
cache = work / f"{ref.stem}.c512.n40.logits"
reference_cache(ref, text, cache, n_ctx=512, n_chunks=40, n_threads=2)
dst = work / f"{ref.stem}.fb-{tag}.{recipe}.gguf"
t0 = time.perf_counter()
res = convert(ref, ConvertOptions.from_args(recipe=recipe, output=dst, force=True, seed=0, allocate="allocate" in flags,
                                            feedback="no-feedback" not in flags))
qs = time.perf_counter() - t0
r = evaluate(dst, ref, text, n_ctx=512, n_chunks=40, n_threads=2, ref_cache=cache)
row = {"code": code_version(), "tag": tag, "recipe": recipe, "product": True, "flags": flags, "bytes": dst.stat().st_size, "quant_s": qs, **r.to_dict()}
with open(RESULTS_DIR / "feedback_settings.jsonl", "a") as f:
    f.write(json.dumps(row) + "\n")
print("RESULT", tag, row["kld_mean"], row["bytes"], qs)
dst.unlink()
