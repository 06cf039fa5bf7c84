"""Is the allocator's cost (each column's squared error times its mean squared input: the input covariance's
diagonal) the squared output error real inputs give (``|dW x|^2`` per token, the whole covariance)? For every
candidate matrix and ladder type, on the probes' text and sampled rows: "diag" and "full" per token, and the
weights' own ("w2", "wfull"). One JSON line per (matrix, type) in OUT; the ratio per matrix on stderr.

    python benchmarks/sensitivity_covariance.py REF.F16.gguf OUT.jsonl

Ran at d47b69d: results/sensitivity_covariance_{smollm2,qwen2.5-coder-1.5b}.jsonl (full/diag 0.99-1.01 on average
for every kind and type of both models: the diagonal is right). An experiment: it patches the probe's collector.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sensitivity_common import allocation_inputs, matmul_input  # noqa: E402
import hqq2gguf.calibrate.sensitivity as S  # noqa: E402
from hqq2gguf.allocate.costs import LADDER, encoding_error, sampled_rows  # noqa: E402
from hqq2gguf.calibrate.collect import GgmlTensor, ImatrixCollector, weight_name  # noqa: E402
from hqq2gguf.optimize import SOLVER_TYPES  # noqa: E402
from hqq2gguf.recipes import shape_fallback  # noqa: E402

ref, out = Path(sys.argv[1]), sys.argv[2]
options, source, names, importance = allocation_inputs(ref)
X = {}
_collect = ImatrixCollector._collect


def collect(self, t):  # the clean pass: keep every matrix's inputs too
    _collect(self, t)
    X[weight_name(GgmlTensor.from_address(t.src[0]).name)] = matmul_input(t).astype(np.float64)


ImatrixCollector._collect = collect
text = S.SelfText(**{**S.PROBE_TEXT.__dict__, "seed": 0})
with S._Probe(ref, text, set(names), None, S.probe_sequences(importance.sequences, text)):
    pass
print("captured", len(X), "of", len(names), file=sys.stderr)
rows_out = []
for name, data in source.tensors_named(set(names)):
    if name not in X:
        continue
    x = X[name]
    act = (x * x).mean(0)
    rows = data[torch.from_numpy(sampled_rows(data.shape[0]))].to(torch.float32)
    w = rows.numpy().astype(np.float64)
    imp = importance.for_tensor(name, tuple(data.shape))
    for t in dict.fromkeys(shape_fallback(t, data.shape[-1]) for t in LADDER[:-1]):
        if t not in SOLVER_TYPES:
            continue
        d = encoding_error(rows, t, options.solver, None if imp is None else imp[0], options.device)
        rows_out.append({"name": name, "type": t.name, "diag": float((d * d).sum(0) @ act),
                         "full": float(np.square(d @ x.T).sum() / x.shape[0]),
                         "w2": float((w ** 2).sum(0) @ act), "wfull": float(np.square(w @ x.T).sum() / x.shape[0])})
    r = [o for o in rows_out if o["name"] == name]
    print(name, " ".join(f"{o['type']}={o['full']/o['diag']:.2f}" for o in r), file=sys.stderr)
Path(out).write_text("\n".join(json.dumps(o) for o in rows_out) + "\n")
