"""The host halves around the kernel, for one row part: exactly the torch path's steps before and after its loop.

    prepare(rows) --llama.cpp's answer (ggml_ref), element weights, fitting weights--> BlockInputs
    finish(prepared, kernel bytes) --float64 re-check, llama.cpp's block kept where ours is not better--> Solution

Everything here is the torch path's own code (same functions, same float32/float64 steps), so the two paths
differ only inside the loop; cuda/README.md says where the kernels' arithmetic may differ. Memory: a few copies
of one row part (hqq2gguf/cuda/solve_cuda.py cuts a tensor into parts), never of the whole tensor.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import gguf
import numpy as np
import torch

import hqq2gguf.cuda.loader as loader
from hqq2gguf import ggml_ref, pack
from hqq2gguf.errors import InputError, UnsupportedError
from hqq2gguf.optimize import Solution, SolverConfig, block_objective, element_weights
# The torch path's own fitting-weight floor: one definition, so the contracts cannot drift.
from hqq2gguf.optimize.solver import fitting_weights
from hqq2gguf.optimize.weights import uniform_weights
from hqq2gguf.pack import Fields
from hqq2gguf.qtypes import Kind, QuantSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KernelParams:
    """SolverConfig as the kernels read it: plain numbers, every float rounded to float32 as torch does."""

    iterations: int
    patience: int
    shrink: bool
    p_exp: np.float32  # float32(p - 2); the kernel takes -1 (p = 1) as an exact reciprocal, as torch's pow does
    hq_c: np.ndarray  # float32 [max(iterations, 1)]: beta_it ** (1 / (2 - p)), beta_it = beta0 * kappa**it
    n_factors: int
    factors: np.ndarray  # float32 [max(n_factors, 1)]: range factors (block types) or super-range factors (K)
    one_minus: np.ndarray  # float32(1 - f), rounded once from the double as torch does
    radius: int

    @classmethod
    def of(cls, spec: QuantSpec, cfg: SolverConfig) -> KernelParams:
        cfg = cfg.for_type(spec.name)
        factors = cfg.super_range_factors if spec.kind is Kind.SUPER else cfg.range_factors
        beta, c = cfg.beta0, []
        for _ in range(max(cfg.iterations, 1)):  # hq_target's c, as a Python double rounded to float32
            c.append(beta ** (1.0 / (2.0 - cfg.p)) if cfg.shrinks else 0.0)
            beta *= cfg.kappa
        padded = factors or (0.0,)  # never an empty array: the kernel gets a valid pointer
        return cls(cfg.iterations, cfg.patience, cfg.shrinks, np.float32(cfg.p - 2.0), np.array(c, np.float32),
                   len(factors), np.array(padded, np.float32), np.array([1.0 - f for f in padded], np.float32),
                   cfg.sub_scale_radius)


@dataclass(frozen=True, eq=False)
class BlockInputs:
    """What the kernel of one type reads, on the host, row-major: (n_blocks, block) per element array."""

    qtype: gguf.GGMLQuantizationType
    x: np.ndarray  # float32 values
    w: np.ndarray  # float32 objective weights
    wf: np.ndarray  # float32 fitting weights
    base_q: np.ndarray  # int8 llama.cpp's codes
    base_d: np.ndarray  # float32 (n_blocks,)
    base_m: np.ndarray  # float32 (n_blocks,): m or dmin (zeros for symmetric types)
    base_sc: np.ndarray  # int8 (n_blocks, n_sub) (one zero per block for the block types)
    base_mn: np.ndarray  # int8 (n_blocks, n_sub)
    params: KernelParams

    @property
    def n_blocks(self) -> int:
        return self.x.shape[0]


@dataclass(frozen=True, eq=False)
class Prepared:
    """One row part's host results before the loop (what ``finish`` needs after it)."""

    spec: QuantSpec
    inputs: BlockInputs
    x32: np.ndarray  # (rows, ne0)
    x64: np.ndarray | None  # the same, float64 (converted once, for the weights and both re-checks)
    w_rows: np.ndarray | None  # float64 (rows, ne0); None when the weights are all ones (weights.uniform_weights)
    base_bytes: np.ndarray  # uint8 (n_blocks, type_size)
    base_obj: np.ndarray | None  # float64 (n_blocks,); None unless prepared with score_base


def check_kernel(spec: QuantSpec) -> None:
    """UnsupportedError unless ``spec``'s type has a fused kernel (loader.kernel_of's rule)."""
    if spec.qtype not in loader.KERNELS:
        why = loader.WITHOUT_KERNEL.get(spec.qtype, "not a quantized type")
        raise UnsupportedError(f"no CUDA kernel for {spec.name} ({why}): use --device cpu "
                               f"(kernels exist for {', '.join(t.name for t in loader.KERNELS)})")


def prepare(spec: QuantSpec, x32: np.ndarray, imp: torch.Tensor | None, config: SolverConfig,
            base_fields: Fields | None = None, *, score_base: bool = True) -> Prepared:
    """The host half before the loop for checked rows ``x32`` (rows, ne0) float32: the torch path's steps
    (solver._solve_rows) up to its loop. ``base_fields``: llama.cpp's answer for these rows, when known.
    ``score_base`` False: no float64 copy of the rows unless the weights need one and no llama.cpp objective
    (``x64``/``base_obj`` None), for a caller that re-checks elsewhere (solve_cpu: cuda/recheck.cu)."""
    rows, ne0 = x32.shape
    B = spec.block_size
    n_blocks = rows * ne0 // B
    if base_fields is None:
        base_bytes = ggml_ref.ggml_quantize(spec.qtype, x32, None if imp is None else imp.numpy().astype(np.float32))
        base_bytes = base_bytes.reshape(n_blocks, -1)  # ggml writes rows; the kernel and the re-check see blocks
        base_fields = pack.unpack(spec.qtype, base_bytes)
    else:
        base_bytes = pack.pack(spec.qtype, base_fields)  # validates the fields
        if base_bytes.shape[0] != n_blocks:
            raise InputError(f"{spec.name}: base_fields hold {base_bytes.shape[0]} blocks, x has {n_blocks}")
    uniform = uniform_weights(spec, config.weights, imp)
    x64 = x32.astype(np.float64) if score_base or not uniform else None
    if uniform:  # all ones: nothing to build in float64, nothing to multiply
        w_rows, w64 = None, None
        w, wfit = _uniform_fit(n_blocks, B)
    else:
        w_rows = element_weights(torch.from_numpy(x64), spec, config.weights, imp).numpy()
        w64 = w_rows.reshape(-1, B)
        w = torch.from_numpy(w_rows.astype(np.float32)).reshape(-1, B)
        wfit = fitting_weights(w).numpy()
        w = w.numpy()
    base_obj = block_objective(x64.reshape(-1, B), pack.decode(spec.qtype, base_fields), w64) if score_base else None
    f = base_fields
    m, sc, mn = (f.dmin, f.sc, f.mn) if spec.kind is Kind.SUPER else (f.m, None, None)
    unused = np.zeros((n_blocks, 1), np.int8)  # fields the type does not have: valid pointers, never read
    inputs = BlockInputs(spec.qtype, x32.reshape(-1, B), w, wfit, np.ascontiguousarray(f.q, np.int8),
                         f.d.astype(np.float32), np.zeros(n_blocks, np.float32) if m is None else m.astype(np.float32),
                         unused if sc is None else np.ascontiguousarray(sc, np.int8),
                         unused if mn is None else np.ascontiguousarray(mn, np.int8), KernelParams.of(spec, config))
    return Prepared(spec, inputs, x32, x64, w_rows, base_bytes, base_obj)


@functools.lru_cache(maxsize=2)
def _uniform_fit(n_blocks: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """All-ones weights of ``n_blocks`` blocks and their fitting weights (fitting_weights of ones, the same
    float32 bits), read-only: a tensor's row parts share one shape but the last, so they are built once. Two
    shapes are kept (two row parts' worth of float32 pairs: the part's own memory bound, not the model's)."""
    w = torch.ones(n_blocks, block, dtype=torch.float32)
    arrays = (w.numpy(), fitting_weights(w).numpy())
    for a in arrays:
        a.flags.writeable = False
    return arrays


def finish(prep: Prepared, out: np.ndarray) -> tuple[np.ndarray, Solution]:
    """The host half after the loop, as the torch path: score every block in float64 and keep llama.cpp's
    block wherever ours is not at least as good (a float32 near-tie, or a non-finite kernel result, which is
    logged as a warning). Returns the packed rows (rows, row_bytes) and the part's Solution."""
    spec, B = prep.spec, prep.spec.block_size
    n_blocks = prep.base_bytes.shape[0]
    if out.shape != prep.base_bytes.shape:
        raise RuntimeError(f"{spec.name}: the kernel returned {out.shape} bytes for {prep.base_bytes.shape} "
                           "(internal error)")
    xb = prep.x64.reshape(-1, B)
    w64 = None if prep.w_rows is None else prep.w_rows.reshape(-1, B)
    fields = _unpack_finite(spec, out)
    values = pack.decode(spec.qtype, fields)
    obj = block_objective(xb, values, w64)
    worse = ~(obj <= prep.base_obj)  # NaN-safe
    if worse.any():
        logger.debug("%s: %d of %d block(s) not better than llama.cpp's in float64; kept llama.cpp's", spec.name,
                     int(worse.sum()), n_blocks)
        out = np.where(worse[:, None], prep.base_bytes, out)
        fields = pack.unpack(spec.qtype, out)
        values = pack.decode(spec.qtype, fields)
        obj = block_objective(xb, values, w64)
    rows, ne0 = prep.x32.shape
    weights = np.ones((rows, ne0)) if prep.w_rows is None else prep.w_rows
    solution = Solution(spec.qtype, fields, values.reshape(rows, ne0), obj, prep.base_obj, weights)
    return out.reshape(rows, -1), solution


def _unpack_finite(spec: QuantSpec, out: np.ndarray) -> Fields:
    """The kernel's blocks as fields; a block whose fp16 scales are not finite (a kernel bug: the solver never
    writes one) is replaced by zeros here, logged as a warning, and so loses the re-check to llama.cpp's."""
    fields = pack.unpack(spec.qtype, out)
    scales = [a for a in (fields.d, getattr(fields, "m", None), getattr(fields, "dmin", None)) if a is not None]
    bad = ~np.logical_and.reduce([np.isfinite(a.astype(np.float32)).reshape(len(a), -1).all(1) for a in scales])
    if bad.any():
        logger.warning("%s: the CUDA kernel wrote %d block(s) with non-finite scales (a kernel bug); kept "
                       "llama.cpp's blocks there", spec.name, int(bad.sum()))
        out[bad] = 0
        fields = pack.unpack(spec.qtype, out)
    return fields
