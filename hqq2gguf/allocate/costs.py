"""Cost of every (tensor, candidate type): the KL-divergence the conversion's own encoding of that tensor is
predicted to add, from its squared error at the tensor's output (measured on a deterministic sample of rows,
scaled to all rows) times the tensor's measured sensitivity.

    cost(t, type) = gain[t] * n_rows / n_sampled * sum over sampled rows r, columns c of
                    activation[c] * (w[r, c] - decoded(encode(w, type))[r, c])**2

``encode`` is the conversion's own encoding of those rows (:func:`hqq2gguf.encode.solve_rows`: the same
dispatch, device, solver settings and column importance; every block solved on its own, so a sampled row gets
the very blocks it gets in the file), and ``decoded`` what ggml decodes from those blocks. ``activation`` is the mean squared input of each column
(so the sum estimates the squared error the tensor adds to its output per token) and ``gain`` the KLD per unit
of that error (:mod:`hqq2gguf.calibrate.sensitivity`), both measured on the model's own text (the probes' 128
tokens; the self-calibration's ~1000 tokens instead gave no gain: SmolLM2-135M at Q4_K_M's bytes, seeds 0 / 1,
mean KLD 0.0353 / 0.0382 with the probes', 0.0350 / 0.0385 with the calibration's). Without them
(:class:`Sensitivity` empty) the cost is the plain squared error: what the tests of the choice itself use.

The costs are the plain encoding's even where the file's blocks get the error feedback (:mod:`hqq2gguf.feedback`).
Costed with the feedback instead (sampled rows solved as the file solves them, error weighed by the calibration
text's covariance) the in-sample output error promises far more than the model feels — 2-10x less error energy
for an 11 % lower KLD — and the mix it chose was worse than the recipe's types: SmolLM2-135M at Q5_K_M's bytes,
mean KLD 0.02154 allocated against 0.02082 at the recipe's types, both with the feedback
(benchmarks/results/allocation_smollm2-q5-costfeedback.md).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping

import gguf
import numpy as np
import torch

from hqq2gguf.allocate.choose import Option, TensorOptions
from hqq2gguf import ggml_ref
from hqq2gguf.calibrate import Importance, Sensitivity
from hqq2gguf.encode import solve_rows
from hqq2gguf.optimize import SOLVER_TYPES, SolverConfig
from hqq2gguf.options import Device
from hqq2gguf.recipes import shape_fallback
from hqq2gguf.sources import Source

logger = logging.getLogger(__name__)

Q = gguf.GGMLQuantizationType

#: The type ladder every allocated tensor chooses from, before llama.cpp's shape fallbacks (a row that is not
#: whole 256-blocks gets Q4_0 / Q5_0 / Q5_1 / Q8_0 instead, as llama-quantize gives it), plus F16 at the top.
#: Tried and not kept: IQ4_XS between Q3_K and Q4_K, and Q4_1 for rows of 32-blocks (SmolLM2-135M, seed 0:
#: Q4_K_M's bytes 0.0378 vs 0.0353, Q5_K_M's 0.0225 vs 0.0222; commit 1035da0).
#: Every matrix chooses from the whole ladder (costed in windows that widen until the choice is the whole
#: ladder's: :mod:`hqq2gguf.allocate.windows`). Tried and removed: a trust region, each matrix within one ladder step
#: of the type a recipe gives it (commit 9b2d8de). It halved the cost stage but was no KLD gain on SmolLM2-135M
#: and Qwen2.5-Coder-1.5B (0.95-1.06x of the whole ladder), and where a tied token embedding is a large share of
#: the bytes it could not spend the budget: Q4_K_M's bytes, 40 wiki chunks, Gemma-3-270M 211.8 of 253.1 MB and mean
#: KLD 0.0294 against 0.0150 on the whole ladder (0.509 +- 0.014 chunk-paired), Qwen2.5-Coder-0.5B 0.0185 against
#: 0.0140 (0.756 +- 0.064; benchmarks/results/allocation_settings_{gemma3-270m,qwen2.5-coder-0.5b}.jsonl).
LADDER: tuple[gguf.GGMLQuantizationType, ...] = (Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.Q8_0, Q.F16)

#: Rows sampled per tensor (evenly spaced; every row of a smaller tensor). 128: half of 256's time, and the
#: choices as good (see :data:`hqq2gguf.calibrate.sensitivity.PROBE_TEXT` for the measurement). 64 was tried:
#: SmolLM2-135M at Q5_K_M's bytes, seeds 0 / 1, 0.02257 / 0.02229 against 0.02227 / 0.02205 with 128 (rows
#: smol-reuse-r* of benchmarks/results/allocation_settings_smollm2.jsonl): not taken.
SAMPLED_ROWS = 128


def file_bytes(shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> int:
    """The bytes a tensor takes in a GGUF file's data section: its blocks, padded to the data alignment."""
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    nbytes = math.prod(shape[:-1]) * (shape[-1] // block) * type_size
    return gguf.GGUFWriter.ggml_pad(nbytes, gguf.GGUF_DEFAULT_ALIGNMENT)


def candidate_types(ne0: int, recipe_type: gguf.GGMLQuantizationType) -> tuple[gguf.GGMLQuantizationType, ...]:
    """The ladder through llama.cpp's shape fallbacks, and the recipe's own type: distinct, in ladder order."""
    types = [shape_fallback(t, ne0) for t in LADDER] + [recipe_type]
    return tuple(dict.fromkeys(types))


def sampled_rows(n_rows: int, n: int | None = None) -> np.ndarray:
    """``n`` (default :data:`SAMPLED_ROWS`) evenly spaced row indices (the middle of each of ``n`` equal
    stretches), or all rows."""
    n = SAMPLED_ROWS if n is None else n
    if n_rows <= n:
        return np.arange(n_rows)
    return (np.arange(n) * 2 + 1) * n_rows // (2 * n)


def measure_costs(source: Source, wanted: Mapping[str, tuple[gguf.GGMLQuantizationType, ...]],
                  importance: Importance, config: SolverConfig, sensitivity: Sensitivity,
                  device: Device = Device.TORCH) -> list[TensorOptions]:
    """Every tensor in ``wanted`` (name -> candidate types) with the cost of each candidate, in source order;
    tensors are read one source step at a time. ``importance`` is the solver's and ``device`` (resolved) where
    it runs (as the conversion encodes), ``sensitivity`` what an error costs."""
    tables = []
    for name, data in source.tensors_named(set(wanted)):
        start = time.perf_counter()
        shape = tuple(data.shape)
        imp = importance.for_tensor(name, shape)
        act = sensitivity.activations.for_tensor(name, shape)
        gain = sensitivity.gain_of(name)
        options = tuple(Option(t, file_bytes(shape, t), gain * tensor_cost(data, t, config, imp, act, device))
                        for t in wanted[name])
        tables.append(TensorOptions(name, options))
        logger.debug("%-32s costs %s (%.1f s)", name,
                     " ".join(f"{o.qtype.name}={o.cost:.3g}" for o in options), time.perf_counter() - start)
    return tables


def tensor_cost(data: torch.Tensor, qtype: gguf.GGMLQuantizationType, config: SolverConfig,
                importance: np.ndarray | None, activations: np.ndarray | None = None,
                device: Device = Device.TORCH) -> float:
    """The squared output error of ``data`` (numpy order; 3-D: experts first) as ``qtype``, from sampled rows:
    solved with the solver's ``importance``, weighted by the columns' mean squared ``activations`` (1 without)."""
    n_expert = data.shape[0] if data.ndim == 3 else 1
    experts = data.reshape(n_expert, -1, data.shape[-1])
    n_rows = experts.shape[1]
    picked = sampled_rows(n_rows)
    total = 0.0
    for e in range(n_expert):
        rows = experts[e][torch.from_numpy(picked)].to(torch.float32)
        imp = None if importance is None else importance[e]
        err = _squared_error(rows, qtype, config, imp, device)
        weights = np.ones(rows.shape[1]) if activations is None else activations[e].astype(np.float64)
        total += float(err.sum(axis=0) @ weights)
    return total * n_rows / len(picked)


def _squared_error(rows: torch.Tensor, qtype: gguf.GGMLQuantizationType, config: SolverConfig,
                   importance: np.ndarray | None, device: Device) -> np.ndarray:
    """(rows, ne0) float64 squared error of the conversion's encoding of ``rows`` as ``qtype``."""
    return np.square(encoding_error(rows, qtype, config, importance, device))


def encoding_error(rows: torch.Tensor, qtype: gguf.GGMLQuantizationType, config: SolverConfig,
                   importance: np.ndarray | None, device: Device) -> np.ndarray:
    """(rows, ne0) float64: what ggml decodes from the conversion's encoding of ``rows`` as ``qtype``, less
    ``rows``."""
    x = rows.numpy().astype(np.float64)
    if qtype in SOLVER_TYPES:
        packed = solve_rows(rows.numpy(), qtype, config, None if importance is None else torch.from_numpy(importance),
                            device).packed
        values = ggml_ref.ggml_dequantize(qtype, packed.reshape(rows.shape[0], -1))
    else:  # F16 / BF16 / F32: gguf-py's reference encoding, as encode.reference_encode writes it
        values = gguf.quants.dequantize(gguf.quants.quantize(rows.numpy(), qtype), qtype)
    return values.astype(np.float64) - x
