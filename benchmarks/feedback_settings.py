"""The experiment that chose the error feedback (hqq2gguf/feedback.py) and its settings, before it was in the
product: block-GPTQ over the HQQ solver, patched in, with H = X^T X of every matrix's input on the model's own
text (whole, not in windows; decoded by gguf-py). One `--type RECIPE` conversion (optionally `--allocate`, costs
without the feedback), mean KLD on 40 wiki chunks, one JSON line appended to
benchmarks/results/feedback_settings.jsonl. The product's own runs are `benchmarks/feedback_product.py`.

    python benchmarks/feedback_settings.py REF.F16.gguf RECIPE TAG [allocate]
    env: GPTQ=0/1, DAMP=0.01, CAL_SEQ=16 (sequences of CAL_TOK=64 tokens), CHUNK=block|N, SKIP=substring
"""
import json
import logging
import os
import sys
import time
from pathlib import Path
import numpy as np
import torch
import gguf
sys.path.insert(0, str(Path(__file__).resolve().parent))
import hqq2gguf.calibrate as CAL
import hqq2gguf.calibrate.activations as ACT
import hqq2gguf.encode as ENC
from hqq2gguf.calibrate.collect import ImatrixCollector
from hqq2gguf.convert import convert
from hqq2gguf.options import ConvertOptions
from hqq2gguf.runtime.evaluate import evaluate, reference_cache
from quality import DEFAULT_CORPUS, REPO, RESULTS_DIR

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
ref, recipe, tag = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
allocate = len(sys.argv) > 4 and sys.argv[4] == "allocate"
GPTQ = os.environ.get("GPTQ", "1") == "1"
DAMP = float(os.environ.get("DAMP", "0.01"))
CHUNK = os.environ.get("CHUNK", "block")
H: dict[str, np.ndarray] = {}
N: dict[str, int] = {}
X: dict[str, list] = {}

class CovCollector(ImatrixCollector):
    def _collect(self, t):
        super()._collect(t)
        from hqq2gguf.calibrate.collect import GgmlTensor, weight_name
        if t.op == self._ggml.mul_mat_id:
            return
        src0, src1 = GgmlTensor.from_address(t.src[0]), GgmlTensor.from_address(t.src[1])
        if int(src0.ne[2]) * int(src0.ne[3]) != 1:
            return
        name = weight_name(src0.name)
        X.setdefault(name, []).append(np.array(self._floats(src1, t.src[1]).reshape(-1, int(src1.ne[0])), dtype=np.float32))

ACT.ImatrixCollector = CovCollector
n_seq, n_tok = int(os.environ.get("CAL_SEQ", 16)), int(os.environ.get("CAL_TOK", 64))
_cs = CAL.calibration_source
CAL.calibration_source = lambda o: ACT.SelfText(n_sequences=n_seq, n_tokens=n_tok, seed=o.seed or 0, batch=min(n_seq, 16))

_solve = ENC.solve_tensor
def solve_tensor(name, array, qtype, config, importance=None, device=None):
    if name in X and name not in H:
        x = torch.from_numpy(np.concatenate(X.pop(name))).double()
        H[name] = (x.T @ x).numpy()
        N[name] = x.shape[0]
    if not GPTQ or name not in H or array.ndim != 2 or (os.environ.get("SKIP") and os.environ["SKIP"] in name):
        return _solve(name, array, qtype, config, importance, device)
    t0 = time.perf_counter()
    W = torch.from_numpy(array.astype(np.float32)).double()
    h = torch.from_numpy(H[name] / N[name])
    d = h.shape[0]
    dead = torch.diag(h) <= 0
    h[dead, dead] = 1.0
    h += DAMP * torch.diag(h).mean() * torch.eye(d, dtype=h.dtype)
    L = torch.linalg.cholesky(h)
    S = torch.cholesky_inverse(L)
    U = torch.linalg.cholesky(S, upper=True)
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    step = block if CHUNK == "block" else int(CHUNK)
    parts = []
    Wo = W.clone()
    for c0 in range(0, d, step):
        c1 = min(d, c0 + step)
        imp = None if importance is None else torch.from_numpy(np.ascontiguousarray(importance[0][c0:c1]))
        enc = ENC.solve_rows(np.ascontiguousarray(W[:, c0:c1].float().numpy()), qtype, config, imp, device)
        parts.append(enc.packed)
        deq = torch.from_numpy(gguf.quants.dequantize(enc.packed, qtype).reshape(W.shape[0], c1 - c0)).double()
        E = W[:, c0:c1] - deq
        if c1 < d:
            W[:, c1:] -= E @ torch.linalg.solve_triangular(U[c0:c1, c0:c1], U[c0:c1, c1:], upper=True)
    packed = np.concatenate(parts, axis=1)
    deq = torch.from_numpy(gguf.quants.dequantize(packed, qtype).reshape(Wo.shape)).double()
    hh = torch.from_numpy(H[name] / N[name])
    D = Wo - deq
    out_err = float(torch.einsum("ij,jk,ik->", D, hh, D))
    logging.info("gptq %-28s %-6s out.err/|Wx| %.5f  %.1f s", name, qtype.name,
                 (out_err / float(torch.einsum("ij,jk,ik->", Wo, hh, Wo))) ** 0.5, time.perf_counter() - t0)
    return packed.reshape(*array.shape[:-1], -1)
ENC.solve_tensor = solve_tensor

text = DEFAULT_CORPUS.read_bytes()
work = REPO / ".cache" / "quality"
chunks = 40
cache = work / f"{ref.stem}.c512.n{chunks}.logits"
reference_cache(ref, text, cache, n_ctx=512, n_chunks=chunks, n_threads=2)
dst = work / f"{ref.stem}.fb-{tag}.{recipe}.gguf"
t0 = time.perf_counter()
convert(ref, ConvertOptions.from_args(recipe=recipe, output=dst, force=True, seed=0, **({"allocate": True} if allocate else {})))
qs = time.perf_counter() - t0
r = evaluate(dst, ref, text, n_ctx=512, n_chunks=chunks, n_threads=2, ref_cache=cache)
row = {"tag": tag, "recipe": recipe, "gptq": GPTQ, "damp": DAMP, "chunk": CHUNK, "skip": os.environ.get("SKIP"), "cal": [n_seq, n_tok], "allocate": allocate,
       "bytes": dst.stat().st_size, "quant_s": qs, **r.to_dict()}
with open(RESULTS_DIR / "feedback_settings.jsonl", "a") as f:
    f.write(json.dumps(row) + "\n")
print("RESULT", tag, row["kld_mean"], row["bytes"])
dst.unlink()
