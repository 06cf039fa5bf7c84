"""Does a gain measured with isotropic noise carry to real quantization error? Per probe group of the layer x kind
model: the KLD of the probe's noise (RHO split over the group, relative to each output's mean square), of the
real encoding error at QTYPE scaled to the same energy (y += c dW x, dW the conversion's own blocks of the whole
matrix), and of that error unscaled (c = 1, "full"), with full/linear = full / (noise's KLD per energy x full's
energy). One JSON line per group in OUT, a line per group on stderr.

    python benchmarks/sensitivity_real_error.py REF.F16.gguf OUT.jsonl Q4_K

Ran at d47b69d: results/sensitivity_real_error_{smollm2,qwen2.5-coder-1.5b}.jsonl (+ .log). Found: probes of
layers or kinds holding a massive-activation output saturate (Qwen2.5-Coder-1.5B blk.1 / blk.2: KLD 0.21 / 0.52 at
RHO, full/linear 0.04 / 0.02: their gains 25-50x too high for errors of real size); at equal energy real error
costs 0.3x-2.2x what noise does, by kind (attn_k, attn_v, ffn_up ~0.4x on Qwen). An experiment: it patches the
probe's injection.
"""
import json
import math
import sys
import time
from pathlib import Path

import gguf
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sensitivity_common import allocation_inputs, encoding_errors, matmul_input, matmul_output  # noqa: E402
import hqq2gguf.calibrate.sensitivity as S  # noqa: E402

ref, out, qtype = Path(sys.argv[1]), sys.argv[2], gguf.GGMLQuantizationType[sys.argv[3]]
options, source, names, importance = allocation_inputs(ref)
t0 = time.time()
DW = encoding_errors(source, names, qtype, options, importance)
print("encoded", len(DW), "in", time.time() - t0, file=sys.stderr)

mode = {"m": "noise"}
_inject = S._Probe._inject


def inject(self, t, name):
    if mode["m"] == "noise":
        return _inject(self, t, name)
    y = matmul_output(t)
    e = matmul_input(t) @ DW[name].T
    e_energy = float(np.square(e, dtype=np.float64).sum())
    c = math.sqrt(self.rho[name] * float(np.mean(np.square(y, dtype=np.float64))) * y.size / e_energy) \
        if mode["m"] == "real" else 1.0
    y += np.float32(c) * e
    self.energy[name] = self.energy.get(name, 0.0) + c * c * e_energy
    self.tokens[name] = self.tokens.get(name, 0) + y.shape[0]


S._Probe._inject = inject
text = S.SelfText(**{**S.PROBE_TEXT.__dict__, "seed": 0})
res = []
with S._Probe(ref, text, set(names), None, S.probe_sequences(importance.sequences, text)) as p:
    groups = S.probe_groups([n for n in names if n in p.outputs])
    for i, (g, members) in enumerate(groups.items()):
        r = {"group": g, "n": len(members)}
        for m in ("noise", "real", "full"):
            mode["m"] = m
            k, e = p.kld({n: S.RHO / len(members) for n in members}, seed=i)
            r[m], r[m + "_energy"], r[m + "_e"] = k, sum(e.values()), e
        r["real/noise"] = r["real"] / r["noise"]
        r["full/linear"] = r["full"] / (r["noise"] / r["noise_energy"] * r["full_energy"])
        print(f"{g:32s} n={len(members):2d} noise {r['noise']:.3g} real {r['real']:.3g} ratio {r['real/noise']:.2f} "
              f"full {r['full']:.3g} full/linear {r['full/linear']:.2f} relE {r['full_energy']/r['noise_energy']*S.RHO:.3g}",
              file=sys.stderr, flush=True)
        res.append(r)
Path(out).write_text("\n".join(json.dumps(o) for o in res) + "\n")
