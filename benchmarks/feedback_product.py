"""The product's error feedback measured: one `--type RECIPE` conversion (`allocate`: with --allocate;
`no-feedback`: --no-feedback; `chunks=N`: N wiki chunks instead of 40), mean KLD on the wiki chunks, one JSON line appended to
benchmarks/results/feedback_settings.jsonl (beside the experiment's rows, benchmarks/feedback_settings.py).

    python benchmarks/feedback_product.py REF.F16.gguf RECIPE TAG [allocate] [no-feedback] [chunks=N]
    env FB_DAMP: a damping other than the product's, patched in for the run. Rows without "feedback_settings" were
    made while the feedback wrote 128 sequences of self-text and damped by 0.1 (FB_SEQ set the sequences then).
"""
import json
import os
import logging
import sys
import time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from hqq2gguf.calibrate import SelfText
from hqq2gguf.convert import convert
from hqq2gguf.feedback import DAMP, Feedback
from hqq2gguf.options import ConvertOptions
from hqq2gguf.runtime.evaluate import evaluate
from hqq2gguf.runtime.evaluate import reference_cache
from quality import DEFAULT_CORPUS, REPO, RESULTS_DIR, code_version
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
ref, recipe, tag = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
flags = sys.argv[4:]
settings = {"sequences": SelfText.n_sequences, "damp": float(os.environ.get("FB_DAMP", DAMP))}
Feedback.of.__func__.__defaults__ = (settings["damp"],)
chunks = next((int(f.split("=")[1]) for f in flags if f.startswith("chunks=")), 40)
text = DEFAULT_CORPUS.read_bytes()
work = REPO / ".cache" / "quality"
work.mkdir(parents=True, exist_ok=True)
cache = work / f"{ref.stem}.c512.n{chunks}.logits"
reference_cache(ref, text, cache, n_ctx=512, n_chunks=chunks, n_threads=2)
dst = work / f"{ref.stem}.fb-{tag}.{recipe}.gguf"
t0 = time.perf_counter()
res = convert(ref, ConvertOptions.from_args(recipe=recipe, output=dst, force=True, seed=0, allocate="allocate" in flags,
                                            feedback="no-feedback" not in flags))
qs = time.perf_counter() - t0
r = evaluate(dst, ref, text, n_ctx=512, n_chunks=chunks, n_threads=2, ref_cache=cache)
row = {"code": code_version(), "tag": tag, "recipe": recipe, "product": True, "flags": flags, "feedback_settings": settings, "bytes": dst.stat().st_size, "quant_s": qs, **r.to_dict()}
with open(RESULTS_DIR / "feedback_settings.jsonl", "a") as f:
    f.write(json.dumps(row) + "\n")
print("RESULT", tag, row["kld_mean"], row["bytes"], qs)
dst.unlink()
