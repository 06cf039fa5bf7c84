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
results/allocation_settings_qwen2.5-coder-1.5b.jsonl; qwen-realsens-q4k-s0 at aa22c72, the same product code).
An experiment: it patches the probe and the pipeline.
"""
import math
import runpy
import sys
import time
from pathlib import Path

import gguf
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sensitivity_common import encoding_errors, matmul_input, matmul_output  # noqa: E402
import hqq2gguf.allocate as A  # noqa: E402
import hqq2gguf.calibrate.sensitivity as S  # noqa: E402
import hqq2gguf.convert as CV  # noqa: E402
from hqq2gguf.allocate.costs import sampled_rows  # noqa: E402

ref, recipe, seed, chunks, tag, reftype = sys.argv[1:7]
mode = sys.argv[7] if len(sys.argv) > 7 else "real"
qtype = gguf.GGMLQuantizationType[reftype]
DW: dict[str, np.ndarray] = {}
ROWS: dict[str, tuple[np.ndarray | None, int]] = {}  # the rows dW covers (None: all), and how many the matrix has
_allocate = CV.allocate


def allocate(source, options, importance, runnable):  # dW of every allocated matrix, before the probes
    if options.allocating and not DW:
        t0 = time.time()
        layout = A._checked_budget(source, options)[0]
        shapes = {n: layout.recipe[n].shape for n in layout.candidates}  # numpy order, source order
        sampled = {n: sampled_rows(shape[0]) for n, shape in shapes.items()} if mode.startswith("sampled") else None
        if mode == "fixed":
            rng = np.random.default_rng(0)
            DW.update({n: rng.standard_normal(shape, dtype=np.float32) for n, shape in shapes.items()})
        else:
            DW.update(encoding_errors(source, shapes, qtype, options, importance, sampled))
        ROWS.update({n: (None if sampled is None else sampled[n], shape[0]) for n, shape in shapes.items()})
        print("dW for", len(DW), "in", round(time.time() - t0, 1), "s", flush=True)
    return _allocate(source, options, importance, runnable)


CV.allocate = allocate


def inject(self, t, name):
    y = matmul_output(t)
    e = matmul_input(t) @ DW[name].T
    idx, n_rows = ROWS[name]
    e_energy = float(np.square(e, dtype=np.float64).sum())
    if mode in ("sampled-real", "sampled-opnoise"):  # the error at its own size, scaled to all rows
        c = math.sqrt(n_rows / e.shape[1])
        target = c * c * e_energy
    else:  # the probe's energy
        target = self.rho[name] * float(np.mean(np.square(y, dtype=np.float64))) * y.size
        c = math.sqrt(target / e_energy)
    if mode == "sampled-opnoise":  # isotropic noise of that energy instead
        y += self.rng.standard_normal(y.shape, dtype=np.float32) * np.float32(math.sqrt(target / y.size))
    elif idx is None:
        y += np.float32(c) * e
    else:
        y[:, idx] += np.float32(c) * e
    self.energy[name] = self.energy.get(name, 0.0) + target
    self.tokens[name] = self.tokens.get(name, 0) + y.shape[0]


S._Probe._inject = inject
sys.argv = ["benchmarks/allocation_settings.py", ref, recipe, "4", "32", "128", seed, chunks, tag]
runpy.run_path(str(Path(__file__).resolve().parent / "allocation_settings.py"), run_name="__main__")
