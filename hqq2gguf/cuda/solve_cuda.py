"""The CUDA solver's entry points: the contract of :func:`hqq2gguf.optimize.solve`, the loop on the GPU.

    x (rows, ne0) --host: llama.cpp's answer (ggml_ref), element weights, fitting weights--> kernel inputs
      --GPU: one thread per block runs the whole HQQ fit and writes ggml block bytes--> uint8 (n_blocks, size)
      --host: float64 re-check, llama.cpp's block kept wherever ours is not better--> packed (rows, row_bytes)

Everything around the loop is the torch path's own code (same functions, same float32/float64 steps), so the
two paths differ only inside the loop; see cuda/README.md for where the kernels' arithmetic may differ.
A :class:`Launcher` runs the kernel: :class:`CudaLauncher` on a GPU through CuPy, or
:class:`hqq2gguf.cuda.emulate.HostLauncher` (the same source compiled for the CPU, for tests without a GPU).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import gguf
import numpy as np
import torch

from hqq2gguf import ggml_ref, pack
import hqq2gguf.cuda.loader as loader
from hqq2gguf.errors import DeviceError, InputError, UnsupportedError
from hqq2gguf.optimize import Solution, SolverConfig, block_objective, element_weights
# The torch path's own input checks and fitting-weight floor: one definition, so the contracts cannot drift.
from hqq2gguf.optimize.solver import checked_rows, fitting_weights, solver_spec
from hqq2gguf.optimize.weights import checked_importance
from hqq2gguf.pack import Fields
from hqq2gguf.qtypes import Kind, QuantSpec

logger = logging.getLogger(__name__)

#: Types with a fused kernel: loader.KERNELS, derived from hqq2gguf.qtypes (loader.kernel_of says which and why).
CUDA_TYPES: tuple[gguf.GGMLQuantizationType, ...] = tuple(loader.KERNELS)

THREADS_PER_CTA = 128
CHUNK_ELEMENTS = 1 << 26
"""Elements per launch: about 26 bytes each on the GPU (inputs and their element-major copies), 1.7 GiB."""


@dataclass(frozen=True)
class KernelParams:
    """SolverConfig as the kernels read it: plain numbers, every float rounded to float32 as torch does."""

    iterations: int
    patience: int
    shrink: bool
    p_exp: np.float32  # float32(p - 2)
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


class Launcher(Protocol):
    """Runs the kernel of ``inputs.qtype``: (uint8 (n_blocks, type_size) block bytes, float32 objectives)."""

    def run(self, inputs: BlockInputs) -> tuple[np.ndarray, np.ndarray]: ...


def solve_cuda(x: torch.Tensor, qtype: gguf.GGMLQuantizationType, *, importance: torch.Tensor | None = None,
               config: SolverConfig = SolverConfig(), base_fields: Fields | None = None,
               launcher: Launcher | None = None) -> np.ndarray:
    """Packed ggml blocks uint8 (rows, row_bytes) of rows ``x`` (rows, ne0), as ``solve(...).packed()``.

    ``base_fields``: llama.cpp's answer when the caller has it (else computed here by ggml, as the torch path
    does); ``launcher``: where the kernel runs (default: the current CUDA device)."""
    return _run(x, qtype, importance, config, base_fields, launcher)[0]


def solve_cuda_solution(x: torch.Tensor, qtype: gguf.GGMLQuantizationType, *, importance: torch.Tensor | None = None,
                        config: SolverConfig = SolverConfig(), base_fields: Fields | None = None,
                        launcher: Launcher | None = None) -> Solution:
    """As :func:`solve_cuda`, returning what :func:`hqq2gguf.optimize.solve` returns (fields, decoded values,
    per-block objectives) for the quality log line."""
    return _run(x, qtype, importance, config, base_fields, launcher)[1]


@dataclass(frozen=True, eq=False)
class Prepared:
    """The host half's results before the loop (what ``finish`` needs after it)."""

    spec: QuantSpec
    inputs: BlockInputs
    x32: np.ndarray  # (rows, ne0)
    w_rows: np.ndarray  # float64 (rows, ne0)
    base_bytes: np.ndarray  # (n_blocks, type_size)
    base_obj: np.ndarray  # float64 (n_blocks,)


def _run(x: torch.Tensor, qtype: gguf.GGMLQuantizationType, importance: torch.Tensor | None, config: SolverConfig,
         base_fields: Fields | None, launcher: Launcher | None) -> tuple[np.ndarray, Solution]:
    prep = prepare(x, qtype, importance, config, base_fields)
    if launcher is None:
        launcher = CudaLauncher(x.device.index if isinstance(x, torch.Tensor) and x.is_cuda else None)
    out, _ = launcher.run(prep.inputs)
    return finish(prep, out)


def prepare(x: torch.Tensor, qtype: gguf.GGMLQuantizationType, importance: torch.Tensor | None,
            config: SolverConfig, base_fields: Fields | None) -> Prepared:
    """The host half before the loop: exactly the torch path's steps (solver.solve) up to the chunked loop."""
    spec = solver_spec(qtype)
    if spec.qtype not in loader.KERNELS:
        why = loader.WITHOUT_KERNEL.get(spec.qtype, "not a quantized type")
        raise UnsupportedError(f"no CUDA kernel for {spec.name} ({why}): use --device cpu "
                               f"(kernels exist for {', '.join(t.name for t in CUDA_TYPES)})")
    x32 = checked_rows(x, spec)
    rows, ne0 = x32.shape
    B = spec.block_size
    imp = checked_importance(importance, ne0, spec.name)
    if base_fields is None:
        base_bytes = ggml_ref.ggml_quantize(spec.qtype, x32, None if imp is None else imp.numpy().astype(np.float32))
        base_fields = pack.unpack(spec.qtype, base_bytes)
    else:
        base_bytes = pack.pack(spec.qtype, base_fields)  # validates the fields
        if base_bytes.shape[0] != rows * ne0 // B:
            raise InputError(f"{spec.name}: base_fields hold {base_bytes.shape[0]} blocks, x has {rows * ne0 // B}")
    xt = torch.from_numpy(x32)
    w_rows = element_weights(xt.to(torch.float64), spec, config.weights, imp)
    w64 = w_rows.numpy().reshape(-1, B)
    w = w_rows.to(torch.float32).reshape(-1, B)
    wfit = fitting_weights(w)
    base_obj = block_objective(x32.reshape(-1, B), pack.decode(spec.qtype, base_fields), w64)
    f = base_fields
    m, sc, mn = (f.dmin, f.sc, f.mn) if spec.kind is Kind.SUPER else (f.m, None, None)
    n = base_bytes.shape[0]
    unused = np.zeros((n, 1), np.int8)  # fields the type does not have: valid pointers, never read
    inputs = BlockInputs(spec.qtype, x32.reshape(-1, B), w.numpy(), wfit.numpy(), np.ascontiguousarray(f.q, np.int8),
                         f.d.astype(np.float32), np.zeros(n, np.float32) if m is None else m.astype(np.float32),
                         unused if sc is None else np.ascontiguousarray(sc, np.int8),
                         unused if mn is None else np.ascontiguousarray(mn, np.int8), KernelParams.of(spec, config))
    return Prepared(spec, inputs, x32, w_rows.numpy(), base_bytes, base_obj)


def finish(prep: Prepared, out: np.ndarray) -> tuple[np.ndarray, Solution]:
    """The host half after the loop, as solver.solve: score every block in float64 and keep llama.cpp's
    block wherever ours is not at least as good (a float32 near-tie). Blocks no ggml block can hold (a
    non-finite scale: a kernel bug) raise FieldError in the decode: loudly, never a silent wrong result."""
    spec, B = prep.spec, prep.spec.block_size
    xb = prep.x32.reshape(-1, B)
    w64 = prep.w_rows.reshape(-1, B)
    values = pack.decode(spec.qtype, pack.unpack(spec.qtype, out))
    obj = block_objective(xb, values, w64)
    worse = ~(obj <= prep.base_obj)  # NaN-safe
    if worse.any():
        logger.debug("%s: %d block(s) not better than llama.cpp's in float64; kept llama.cpp's", spec.name,
                     int(worse.sum()))
        out = np.where(worse[:, None], prep.base_bytes, out)
        values = pack.decode(spec.qtype, pack.unpack(spec.qtype, out))
        obj = block_objective(xb, values, w64)
    rows, ne0 = prep.x32.shape
    fields = pack.unpack(spec.qtype, out)
    solution = Solution(spec.qtype, fields, values.reshape(rows, ne0), obj, prep.base_obj, prep.w_rows)
    return out.reshape(rows, -1), solution


class CudaLauncher:
    """Runs the NVRTC-compiled kernels on a CUDA device, on torch tensors (their data pointers)."""

    def __init__(self, device_index: int | None = None) -> None:
        if not torch.cuda.is_available():
            raise DeviceError("no CUDA device: torch.cuda.is_available() is False")
        self.device = torch.device("cuda", torch.cuda.current_device() if device_index is None else device_index)

    def run(self, inputs: BlockInputs) -> tuple[np.ndarray, np.ndarray]:
        cupy = loader.import_cupy()
        kernel = loader.kernel(inputs.qtype, self.device.index)
        size = gguf.GGML_QUANT_SIZES[inputs.qtype][1]
        n, B = inputs.x.shape
        dev = self.device
        p = inputs.params
        out = torch.empty((n, size), dtype=torch.uint8, device=dev)
        obj = torch.empty(n, dtype=torch.float32, device=dev)
        hq_c, factors, one_minus = (torch.from_numpy(a).to(dev) for a in (p.hq_c, p.factors, p.one_minus))
        chunk = max(1, CHUNK_ELEMENTS // B)
        stream = torch.cuda.current_stream(dev)
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            m = hi - lo

            def element_major(a: np.ndarray) -> torch.Tensor:  # (m, B) host -> (B, m) device
                return torch.from_numpy(a[lo:hi]).to(dev).t().contiguous()

            def per_block(a: np.ndarray) -> torch.Tensor:
                return torch.from_numpy(np.ascontiguousarray(a[lo:hi])).to(dev)

            keep = [element_major(inputs.x), element_major(inputs.w), element_major(inputs.wf),
                    element_major(inputs.base_q), per_block(inputs.base_d), per_block(inputs.base_m),
                    per_block(inputs.base_sc), per_block(inputs.base_mn)]
            x, w, wf, q0, d0, m0, sc0, mn0 = (np.uint64(t.data_ptr()) for t in keep)
            args = (x, w, wf, q0, np.int64(m), np.int64(1), np.int64(m), d0, m0, sc0, mn0,
                    np.int32(p.iterations), np.int32(p.patience), np.int32(p.shrink), np.float32(p.p_exp),
                    np.uint64(hq_c.data_ptr()), np.int32(p.n_factors), np.uint64(factors.data_ptr()),
                    np.uint64(one_minus.data_ptr()), np.int32(p.radius),
                    np.uint64(out[lo:hi].data_ptr()), np.uint64(obj[lo:hi].data_ptr()))
            grid = (m + THREADS_PER_CTA - 1) // THREADS_PER_CTA
            try:
                with cupy.cuda.Device(dev.index), cupy.cuda.ExternalStream(stream.cuda_stream):
                    kernel((grid,), (THREADS_PER_CTA,), args)
                stream.synchronize()  # the inputs of this chunk are freed next; launch errors surface here
            except Exception as exc:  # CUDA errors: reported, never a silent fallback
                raise DeviceError(f"{inputs.qtype.name}: the CUDA kernel failed on device {dev.index}: {exc}") from exc
            del keep
        return out.cpu().numpy(), obj.cpu().numpy()
