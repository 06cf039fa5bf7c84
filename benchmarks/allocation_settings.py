"""Allocation's measuring settings on one model: probe text (sequences x tokens), sampled rows per cost, the
probes' seed apart from the calibration's, (EXP_CAL_ACT=1) the costs weighted by the calibration's activations
instead of the probes', (EXP_ACT_CLIP=K) the costs' column weights clipped at K x their median, (EXP_KNAPSACK_TRUST=X)
the choice's knapsack trusted below X x the Lagrangian answer's predicted cost, (EXP_TARGET_SIZE=SIZE) --target-size
SIZE instead of the recipe's bytes. One `--type RECIPE --allocate` conversion, then mean KLD on the wiki chunks; one JSON line
appended to benchmarks/results/allocation_settings_<model>.jsonl per run. It patches module constants: an
experiment, not a product path.

    python benchmarks/allocation_settings.py REF.F16.gguf Q4_K_M N_SEQ N_TOK ROWS SEED CHUNKS TAG [PROBE_SEED]
"""
import json
import logging
import sys
import time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import hqq2gguf.calibrate.sensitivity as S
import hqq2gguf.allocate.costs as C
import hqq2gguf.allocate as A
from hqq2gguf.calibrate.activations import SelfText
from hqq2gguf.convert import convert
from hqq2gguf.options import ConvertOptions
from hqq2gguf.runtime.evaluate import evaluate, reference_cache

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
ref, recipe, n_seq, n_tok, rows, seed, chunks, tag = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:8]), sys.argv[8]
ref = Path(ref)
if len(sys.argv) > 9:  # a separate seed for the sensitivity probes (calibration keeps --seed)
    sens_seed = int(sys.argv[9])
    _orig = A.measure_sensitivity
    A.measure_sensitivity = lambda *a, seed=0, **k: _orig(*a, seed=sens_seed, **k)
S.PROBE_TEXT = SelfText(n_sequences=n_seq, n_tokens=n_tok, batch=n_seq)
C.SAMPLED_ROWS = rows
A.SAMPLED_ROWS = rows
import os  # noqa: E402
if os.environ.get("EXP_CAL_ACT") == "1":  # costs weighted by the calibration's activations (more tokens)
    import dataclasses
    _mc = A.measure_costs
    class _Merged:
        def __init__(self, imp, act):
            self.imp, self.act = imp, act
        def for_tensor(self, name, shape):
            a = self.imp.for_tensor(name, shape)
            return a if a is not None else self.act.for_tensor(name, shape)
    def _measure_costs(source, wanted, importance, config, sensitivity):
        sens = dataclasses.replace(sensitivity, activations=_Merged(importance, sensitivity.activations))
        return _mc(source, wanted, importance, config, sens)
    A.measure_costs = _measure_costs
if os.environ.get("EXP_ACT_CLIP"):  # the costs' column weights clipped at K x their median (massive activations)
    import numpy as _np
    _clip = float(os.environ["EXP_ACT_CLIP"])
    _tc = C.tensor_cost
    def _tensor_cost(data, qtype, config, importance, activations=None, device=None):
        if activations is not None:
            med = _np.median(activations, axis=-1, keepdims=True)
            activations = _np.minimum(activations, _clip * med)
        return _tc(data, qtype, config, importance, activations, device)
    C.tensor_cost = _tensor_cost
if os.environ.get("EXP_KNAPSACK_TRUST"):  # the knapsack's trusted share (0: never taken; 1: taken when cheaper)
    import importlib
    importlib.import_module("hqq2gguf.allocate.choose").KNAPSACK_TRUST = float(os.environ["EXP_KNAPSACK_TRUST"])
target_size = os.environ.get("EXP_TARGET_SIZE")  # --target-size SIZE (from RECIPE's plan) instead of --allocate
sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import DEFAULT_CORPUS, REPO  # noqa: E402
text = DEFAULT_CORPUS.read_bytes()
work = REPO / ".cache" / "quality"
work.mkdir(parents=True, exist_ok=True)
cache = work / f"{ref.stem}.c512.n{chunks}.logits"
reference_cache(ref, text, cache, n_ctx=512, n_chunks=chunks, n_threads=2)
dst = work / f"{ref.stem}.exp-{tag}.{recipe}.gguf"
t0 = time.perf_counter()
convert(ref, ConvertOptions.from_args(recipe=recipe, output=dst, force=True, seed=seed,
                                      **({"target_size": target_size} if target_size else {"allocate": True})))
qs = time.perf_counter() - t0
r = evaluate(dst, ref, text, n_ctx=512, n_chunks=chunks, n_threads=2, ref_cache=cache)
row = {"cal_act": os.environ.get("EXP_CAL_ACT"), "act_clip": os.environ.get("EXP_ACT_CLIP"),
       "knapsack_trust": os.environ.get("EXP_KNAPSACK_TRUST"), "target_size": target_size, "sens_seed": sys.argv[9] if len(sys.argv) > 9 else None, "tag": tag, "recipe": recipe, "n_seq": n_seq, "n_tok": n_tok, "rows": rows, "seed": seed,
       "bytes": dst.stat().st_size, "quant_s": qs, **r.to_dict()}
NAMES = {"SmolLM2-135M": "smollm2", "Qwen2.5-Coder-1.5B": "qwen2.5-coder-1.5b", "Qwen2.5-Coder-0.5B": "qwen2.5-coder-0.5b",
         "gemma-3-270m": "gemma3-270m"}  # the names the other results files use
model = next((v for k, v in NAMES.items() if ref.name.startswith(k)), ref.stem.split(".")[0].lower())
with open(Path(__file__).resolve().parent / "results" / f"allocation_settings_{model}.jsonl", "a") as f:
    f.write(json.dumps(row) + "\n")
print("RESULT", tag, recipe, row["bytes"], row["kld_mean"], round(qs, 1), flush=True)
dst.unlink()
