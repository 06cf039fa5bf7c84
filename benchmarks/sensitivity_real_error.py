"""Does a gain measured with isotropic noise carry to real quantization error? Per probe group of the layer x kind
model: the KLD of the probe's noise (RHO split over the group, relative to each output's mean square), of the
real encoding error at QTYPE scaled to the same energy (y += c dW x, dW the conversion's own blocks of the whole
matrix), and of that error unscaled (c = 1, "full"), with full/linear = full / (noise's KLD per energy x full's
energy). One JSON line per group in OUT, a line per group on stderr.

    python benchmarks/sensitivity_real_error.py REF.F16.gguf OUT.jsonl Q4_K

Ran at d47b69d: results/sensitivity_real_error_{smollm2,qwen2.5-coder-1.5b}.jsonl (+ .log). Found: probes of
layers or kinds holding a massive-activation output saturate (Qwen2.5-Coder-1.5B blk.1 / blk.2: KLD 0.21 / 0.52 at
RHO, full/linear 0.04 / 0.02: their gains 25-50x too high for errors of real size)
at equal energy real error
costs 0.3x-2.2x what noise does, by kind (attn_k, attn_v, ffn_up ~0.4x on Qwen). An experiment: it patches the
probe's injection.
"""
import ctypes
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import gguf
import numpy as np
import torch
import hqq2gguf.calibrate.sensitivity as S
import hqq2gguf.allocate as A
from hqq2gguf.calibrate.collect import GgmlTensor, ImatrixCollector
from hqq2gguf.calibrate import column_importance
from hqq2gguf.cuda import resolve_device
from hqq2gguf.options import ConvertOptions
from hqq2gguf.sources import open_source
from hqq2gguf.encode import solve_rows
from hqq2gguf import ggml_ref
from hqq2gguf.recipes import shape_fallback

ref = Path(sys.argv[1])
out = sys.argv[2]
qtype = gguf.GGMLQuantizationType[sys.argv[3]]
options = ConvertOptions.from_args(recipe="Q4_K_M", allocate=True, seed=0)
options = dataclasses.replace(options, device=resolve_device(options.device))
source = open_source(ref, options)
layout, _, _ = A._checked_budget(source, options)
names = list(layout.candidates)
importance = column_importance(source, options, ref)
t0 = time.time()
DW = {}
for name, data in source.tensors_named(set(names)):
    rows = data.to(torch.float32).numpy()
    t = shape_fallback(qtype, rows.shape[-1])
    imp = importance.for_tensor(name, tuple(data.shape))
    imp = None if imp is None else torch.from_numpy(imp[0])
    packed = solve_rows(rows, t, options.solver, imp, options.device).packed
    DW[name] = (ggml_ref.ggml_dequantize(t, packed.reshape(rows.shape[0], -1)) - rows).astype(np.float32)
print("encoded", len(DW), "in", time.time() - t0, file=sys.stderr)

mode = {"m": "noise", "scale": None}
orig_inject = S._Probe._inject
def inject(self, t, name):
    if mode["m"] == "noise":
        return orig_inject(self, t, name)
    src1 = GgmlTensor.from_address(t.src[1])
    x = ImatrixCollector._floats(self._fl, src1, t.src[1])
    x = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))
    n_out, n_tok = int(t.ne[0]), int(t.ne[1]) * int(t.ne[2]) * int(t.ne[3])
    y = np.ctypeslib.as_array((ctypes.c_float * (n_out * n_tok)).from_address(t.data)).reshape(n_tok, n_out)
    e = x @ DW[name].T
    if mode["m"] == "real":
        target = self.rho[name] * float(np.mean(np.square(y, dtype=np.float64))) * n_out * n_tok
        c = math.sqrt(target / float(np.square(e, dtype=np.float64).sum()))
    else:
        c = 1.0
    y += np.float32(c) * e
    self.energy[name] = self.energy.get(name, 0.0) + c * c * float(np.square(e, dtype=np.float64).sum())
    self.tokens[name] = self.tokens.get(name, 0) + n_tok
S._Probe._inject = inject
text = S.SelfText(**{**S.PROBE_TEXT.__dict__, "seed": 0})
res = []
with S._Probe(ref, text, set(names), None, S.probe_sequences(importance.sequences, text)) as p:
    p._fl = ImatrixCollector(min_rows=1)
    groups = S.probe_groups([n for n in names if n in p.outputs])
    for i, (g, members) in enumerate(groups.items()):
        r = {"group": g, "n": len(members)}
        for m in ("noise", "real", "full"):
            mode["m"] = m
            k, e = p.kld({n: S.RHO / len(members) for n in members}, seed=i)
            r[m] = k
            r[m + "_energy"] = sum(e.values())
            r[m + "_e"] = e
        r["real/noise"] = r["real"] / r["noise"]
        r["full/linear"] = r["full"] / (r["noise"] / r["noise_energy"] * r["full_energy"])
        print(f"{g:32s} n={len(members):2d} noise {r['noise']:.3g} real {r['real']:.3g} ratio {r['real/noise']:.2f} "
              f"full {r['full']:.3g} full/linear {r['full/linear']:.2f} relE {r['full_energy']/r['noise_energy']*S.RHO:.3g}",
              file=sys.stderr, flush=True)
        res.append(r)
Path(out).write_text("\n".join(json.dumps(o) for o in res) + "\n")
