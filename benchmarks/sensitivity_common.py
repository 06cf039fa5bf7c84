"""What the sensitivity diagnostics (sensitivity_covariance.py, sensitivity_real_error.py,
sensitivity_injection.py) share: the allocation's inputs for a model, the conversion's own encoding error of its
matrices, and a mul_mat's input and output as arrays inside llama.cpp's eval callback."""

from __future__ import annotations

import ctypes
import dataclasses
import sys
from collections.abc import Collection
from pathlib import Path

import gguf
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import hqq2gguf.allocate as A  # noqa: E402
from hqq2gguf.allocate.costs import encoding_error  # noqa: E402
from hqq2gguf.calibrate import Importance, column_importance  # noqa: E402
from hqq2gguf.calibrate.collect import GgmlTensor, ImatrixCollector  # noqa: E402
from hqq2gguf.cuda import resolve_device  # noqa: E402
from hqq2gguf.options import ConvertOptions  # noqa: E402
from hqq2gguf.recipes import shape_fallback  # noqa: E402
from hqq2gguf.sources import Source, open_source  # noqa: E402


def allocation_inputs(ref: Path, recipe: str = "Q4_K_M") -> tuple[ConvertOptions, Source, list[str], Importance]:
    """The options of ``--type RECIPE --allocate``, the source, the matrices it allocates, the solver's importance."""
    options = ConvertOptions.from_args(recipe=recipe, allocate=True, seed=0)
    options = dataclasses.replace(options, device=resolve_device(options.device))
    source = open_source(ref, options)
    names = list(A._checked_budget(source, options)[0].candidates)
    return options, source, names, column_importance(source, options, ref)


def encoding_errors(source: Source, names: Collection[str], qtype: gguf.GGMLQuantizationType, options: ConvertOptions,
                    importance: Importance, rows: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Each matrix's float32 encoding error as ``qtype`` (through llama.cpp's shape fallbacks): of every row, or of
    the rows ``rows[name]`` picks."""
    out = {}
    for name, data in source.tensors_named(set(names)):
        picked = data if rows is None else data[torch.from_numpy(rows[name])]
        imp = importance.for_tensor(name, tuple(data.shape))
        out[name] = encoding_error(picked.to(torch.float32), shape_fallback(qtype, data.shape[-1]), options.solver,
                                   None if imp is None else imp[0], options.device).astype(np.float32)
    return out


_COLLECTOR = ImatrixCollector(min_rows=1)


def matmul_input(t: GgmlTensor) -> np.ndarray:
    """(tokens, ne0) float32 copy of a mul_mat's input ``src[1]``."""
    x = _COLLECTOR._floats(GgmlTensor.from_address(t.src[1]), t.src[1])
    return np.ascontiguousarray(x.reshape(-1, x.shape[-1]))


def matmul_output(t: GgmlTensor) -> np.ndarray:
    """(tokens, n_out) float32 view of a mul_mat's output, in place (contiguous F32, as the probe checks)."""
    n_out, n_tok = int(t.ne[0]), int(t.ne[1]) * int(t.ne[2]) * int(t.ne[3])
    return np.ctypeslib.as_array((ctypes.c_float * (n_out * n_tok)).from_address(t.data)).reshape(n_tok, n_out)
