"""What the sensitivity probes inject, tried as an allocation: one `--type RECIPE --allocate` conversion and its mean
KLD (benchmarks/allocation_settings.py, whose row it appends), with the probe's noise replaced by MODE:

    real            y += c dW x: dW the conversion's own REFTYPE blocks of the whole matrix, c giving the noise's energy
    fixed           the same with a Gaussian dW (one draw per matrix, fixed across tokens)
    sampled         real error of the sampled rows only (costs.sampled_rows), at the noise's energy
    sampled-real    the same at its own size (scaled to all rows)
    sampled-opnoise isotropic noise of that real size: the probes at the operating point

    python benchmarks/sensitivity_injection.py REF RECIPE SEED CHUNKS TAG REFTYPE [MODE]

Ran at d47b69d on SmolLM2-135M (tags smol-realsens-*, smol-fixedsens-*, smol-sampledsens-*, smol-sampledreal-*,
smol-opnoise-* in results/allocation_settings_smollm2.jsonl) and Qwen2.5-Coder-1.5B (qwen-opnoise-s0 in
results/allocation_settings_qwen2.5-coder-1.5b.jsonl; qwen-realsens-q4k-s0 at aa22c72, the same product code). An experiment: it patches the probe and the pipeline.
"""
import ctypes
import math
import runpy
import sys
import time
from pathlib import Path
import gguf
import numpy as np
import torch
import hqq2gguf.calibrate.sensitivity as S
import hqq2gguf.allocate as A
import hqq2gguf.convert as CV
from hqq2gguf.calibrate.collect import GgmlTensor, ImatrixCollector
from hqq2gguf.encode import solve_rows
from hqq2gguf import ggml_ref
from hqq2gguf.recipes import shape_fallback

ref, recipe, seed, chunks, tag, reftype = sys.argv[1:7]
mode = sys.argv[7] if len(sys.argv) > 7 else "real"
qtype = gguf.GGMLQuantizationType[reftype]
DW = {}
IDX = {}
_alloc = CV.allocate
def allocate(source, options, importance, runnable):
    if options.allocating and not DW:
        t0 = time.time()
        names = set(A._checked_budget(source, options)[0].candidates)
        rng = np.random.default_rng(0)
        for name, data in source.tensors_named(names):
            rows = data.to(torch.float32).numpy()
            if mode == "fixed":
                DW[name] = rng.standard_normal(rows.shape, dtype=np.float32)
                continue
            t = shape_fallback(qtype, rows.shape[-1])
            imp = importance.for_tensor(name, tuple(data.shape))
            imp = None if imp is None else torch.from_numpy(imp[0])
            if mode.startswith("sampled"):
                from hqq2gguf.allocate.costs import sampled_rows
                idx = sampled_rows(rows.shape[0])
                rows = rows[idx]
            else:
                idx = None
            packed = solve_rows(rows, t, options.solver, imp, options.device).packed
            DW[name] = (ggml_ref.ggml_dequantize(t, packed.reshape(rows.shape[0], -1)) - rows).astype(np.float32)
            IDX[name] = (idx, data.shape[0])
        print("dW for", len(DW), "in", round(time.time() - t0, 1), "s", flush=True)
    return _alloc(source, options, importance, runnable)
CV.allocate = allocate
_fl = ImatrixCollector(min_rows=1)
def inject(self, t, name):
    src1 = GgmlTensor.from_address(t.src[1])
    x = ImatrixCollector._floats(_fl, src1, t.src[1])
    x = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))
    n_out, n_tok = int(t.ne[0]), int(t.ne[1]) * int(t.ne[2]) * int(t.ne[3])
    y = np.ctypeslib.as_array((ctypes.c_float * (n_out * n_tok)).from_address(t.data)).reshape(n_tok, n_out)
    e = x @ DW[name].T
    idx, n_rows = IDX.get(name, (None, n_out))
    target = self.rho[name] * float(np.mean(np.square(y, dtype=np.float64))) * n_out * n_tok
    if mode in ("sampled-real", "sampled-opnoise"):
        c = math.sqrt(n_rows / e.shape[1])
        target = c * c * float(np.square(e, dtype=np.float64).sum())
        if mode == "sampled-opnoise":
            y += self.rng.standard_normal(y.shape, dtype=np.float32) * np.float32(math.sqrt(target / y.size))
            self.energy[name] = self.energy.get(name, 0.0) + target
            self.tokens[name] = self.tokens.get(name, 0) + n_tok
            return
    else:
        c = math.sqrt(target / float(np.square(e, dtype=np.float64).sum()))
    if idx is None:
        y += np.float32(c) * e
    else:
        y[:, idx] += np.float32(c) * e
    self.energy[name] = self.energy.get(name, 0.0) + target
    self.tokens[name] = self.tokens.get(name, 0) + n_tok
S._Probe._inject = inject
sys.argv = ["benchmarks/allocation_settings.py", ref, recipe, "4", "32", "128", seed, chunks, tag]
runpy.run_path(str(Path(__file__).resolve().parent / "allocation_settings.py"), run_name="__main__")
