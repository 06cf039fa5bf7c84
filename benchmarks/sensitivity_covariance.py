"""Is the allocator's cost (each column's squared error times its mean squared input: the input covariance's
diagonal) the squared output error real inputs give (``|dW x|^2`` per token, the whole covariance)? For every
candidate matrix and ladder type, on the probes' text and sampled rows: "diag" and "full" per token, and the
weights' own ("w2", "wfull"). One JSON line per (matrix, type) in OUT
the ratio per matrix on stderr.

    python benchmarks/sensitivity_covariance.py REF.F16.gguf OUT.jsonl

Ran at d47b69d: results/sensitivity_covariance_{smollm2,qwen2.5-coder-1.5b}.jsonl (full/diag 0.99-1.01 on average
for every kind and type of both models: the diagonal is right). An experiment: it patches the probe's collector.
"""
import dataclasses
import json
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np
import torch
import hqq2gguf.calibrate.sensitivity as S
import hqq2gguf.allocate as A
from hqq2gguf.calibrate.collect import ImatrixCollector, weight_name, GgmlTensor
from hqq2gguf.calibrate import column_importance
from hqq2gguf.cuda import resolve_device
from hqq2gguf.options import ConvertOptions
from hqq2gguf.sources import open_source
from hqq2gguf.allocate.costs import sampled_rows, LADDER
from hqq2gguf.encode import solve_rows
from hqq2gguf import ggml_ref
from hqq2gguf.optimize import SOLVER_TYPES
from hqq2gguf.recipes import shape_fallback

ref = Path(sys.argv[1])
out = sys.argv[2]
options = ConvertOptions.from_args(recipe="Q4_K_M", allocate=True, seed=0)
options = dataclasses.replace(options, device=resolve_device(options.device))
source = open_source(ref, options)
layout, _, _ = A._checked_budget(source, options)
names = list(layout.candidates)
importance = column_importance(source, options, ref)
X = {}
orig = ImatrixCollector._collect
def collect(self, t):
    orig(self, t)
    src0, src1 = GgmlTensor.from_address(t.src[0]), GgmlTensor.from_address(t.src[1])
    x = self._floats(src1, t.src[1])
    X[weight_name(src0.name)] = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float64)
ImatrixCollector._collect = collect
text = S.SelfText(**{**S.PROBE_TEXT.__dict__, "seed": 0})
with S._Probe(ref, text, set(names), None, S.probe_sequences(importance.sequences, text)) as p:
    pass
print("captured", len(X), "of", len(names), file=sys.stderr)
rows_out = []
for name, data in source.tensors_named(set(names)):
    if name not in X:
        continue
    x = X[name]
    act = (x * x).mean(0)
    picked = sampled_rows(data.shape[0])
    rows = data[torch.from_numpy(picked)].to(torch.float32).numpy()
    imp = importance.for_tensor(name, tuple(data.shape))
    imp = None if imp is None else torch.from_numpy(imp[0])
    for t in dict.fromkeys(shape_fallback(t, data.shape[-1]) for t in LADDER[:-1]):
        if t not in SOLVER_TYPES:
            continue
        packed = solve_rows(rows, t, options.solver, imp, options.device).packed
        d = rows.astype(np.float64) - ggml_ref.ggml_dequantize(t, packed.reshape(rows.shape[0], -1)).astype(np.float64)
        diag = float((d * d).sum(0) @ act)
        full = float(np.square(d @ x.T).sum() / x.shape[0])
        rows_out.append({"name": name, "type": t.name, "diag": diag, "full": full,
                         "w2": float((rows.astype(np.float64)**2).sum(0) @ act),
                         "wfull": float(np.square(rows.astype(np.float64) @ x.T).sum() / x.shape[0])})
    r = [o for o in rows_out if o["name"] == name]
    print(name, " ".join(f"{o['type']}={o['full']/o['diag']:.2f}" for o in r), file=sys.stderr)
Path(out).write_text("\n".join(json.dumps(o) for o in rows_out) + "\n")
