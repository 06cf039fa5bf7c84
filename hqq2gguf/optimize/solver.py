"""The reference solver's entry points: one tensor in, the best block fields (or packed bytes) out.

    x (rows, ne0) --llama.cpp's answer (ggml_ref) + extra starts--> half-quadratic loop per block
      --keep the best per block, never worse than llama.cpp's--> fields --pack--> uint8 (rows, row_bytes)

Pure PyTorch on the CPU, vectorized over all blocks of a row part, parts side by side on worker threads;
the CUDA kernels reproduce it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import gguf
import numpy as np
import torch

from hqq2gguf import ggml_ref, pack
from hqq2gguf.errors import InputError, UnsupportedError
from hqq2gguf.optimize.block_scale import solve_block_scale
from hqq2gguf.optimize.config import SolverConfig
from hqq2gguf.optimize.core import TINY
from hqq2gguf.optimize.kquant import solve_super
from hqq2gguf.optimize.weights import checked_importance, element_weights
from hqq2gguf.pack import Fields, KQuantFields, LegacyFields
from hqq2gguf.qtypes import QUANT_TYPES, Kind, QuantSpec, spec as spec_of

logger = logging.getLogger(__name__)

#: Types the solver handles: every quantized type of the one table (hqq2gguf.qtypes).
SOLVER_TYPES: tuple[gguf.GGMLQuantizationType, ...] = QUANT_TYPES

T = TypeVar("T")

_FIT_WEIGHT_FLOOR = 1e-4  # fitting weights get this fraction of the block's mean weight added (zero weights)


@dataclass(frozen=True, eq=False)
class Solution:
    """What the solver chose for one tensor, with the per-block objectives (float64, (n_blocks,))."""

    qtype: gguf.GGMLQuantizationType
    fields: Fields  # of all blocks, row-major (rows * ne0 / block_size blocks)
    values: np.ndarray  # float32 (rows, ne0): exactly what ggml will decode
    objective: np.ndarray  # sum w*(x - values)**2 per block
    baseline_objective: np.ndarray  # the same for llama.cpp's own answer
    weights: np.ndarray  # float64 (rows, ne0): the element weights w of the objective

    def packed(self) -> np.ndarray:
        """uint8 (rows, row_bytes): the ggml blocks."""
        rows = self.values.shape[0]
        return pack.pack(self.qtype, self.fields).reshape(rows, -1)


def quantize_tensor(x: torch.Tensor, qtype: gguf.GGMLQuantizationType, *, importance: torch.Tensor | None = None,
                    config: SolverConfig = SolverConfig()) -> np.ndarray:
    """Quantize rows ``x`` (rows, ne0) float32, GGUF layout, to packed ggml blocks uint8 (rows, row_bytes).

    ``importance``: optional (ne0,) per-column weights (imatrix or a data-free proxy); llama.cpp's
    baseline answer is then its imatrix path."""
    return solve(x, qtype, importance=importance, config=config).packed()


def solve(x: torch.Tensor, qtype: gguf.GGMLQuantizationType, *, importance: torch.Tensor | None = None,
          config: SolverConfig = SolverConfig()) -> Solution:
    """As :func:`quantize_tensor`, returning the fields, decoded values and per-block objectives.

    The rows are cut into parts of at most ``config.blocks_per_part(...)`` blocks (and at least one per worker);
    every step of a part (llama.cpp's answer, the weights, the loop, the float64 re-check) runs in one of
    ``config.workers`` threads. Every block is solved on its own, so the parts never change the result."""
    spec = solver_spec(qtype)
    solutions = _map_parts(spec, x, importance, config, lambda s, _: s)
    return solutions[0] if len(solutions) == 1 else concat_solutions(spec, solutions)


@dataclass(frozen=True)
class Encoded:
    """One tensor's packed blocks and the float64 sums its log line reports."""

    packed: np.ndarray  # uint8 (rows, row_bytes)
    sq_error: float  # sum (x - values)**2
    sq_norm: float  # sum x**2
    objective: float  # sum of the per-block objectives
    baseline_objective: float  # the same for llama.cpp's answer

    @classmethod
    def of(cls, solution: Solution, x: np.ndarray) -> Encoded:
        """The packed blocks and sums of ``solution`` for rows ``x`` (rows, ne0) float32."""
        x64 = x.astype(np.float64)
        return cls(solution.packed(), float(np.square(x64 - solution.values).sum()), float(np.square(x64).sum()),
                   float(solution.objective.sum()), float(solution.baseline_objective.sum()))

    @classmethod
    def join(cls, parts: list[Encoded]) -> Encoded:
        """Consecutive row parts (or experts) as one: bytes concatenated along the rows, sums added."""
        if len(parts) == 1:
            return parts[0]
        return cls(np.concatenate([p.packed for p in parts]),
                   *(sum(getattr(p, f.name) for p in parts) for f in dataclasses.fields(cls)[1:]))


def encode(x: torch.Tensor, qtype: gguf.GGMLQuantizationType, *, importance: torch.Tensor | None = None,
           config: SolverConfig = SolverConfig()) -> Encoded:
    """:func:`solve`, with every row part also packed and summed on its worker thread: only bytes and four
    sums come back, so a file's tensors never pay for joining full-size values, weights and objectives on
    one thread. ``encode(...).packed`` is ``solve(...).packed()``, byte for byte."""
    return Encoded.join(_map_parts(solver_spec(qtype), x, importance, config, Encoded.of))


def llama_cpp_encoded(x: torch.Tensor, qtype: gguf.GGMLQuantizationType, config: SolverConfig = SolverConfig()
                      ) -> Encoded:
    """llama.cpp's own blocks of rows ``x`` (rows, ne0), unsolved: what llama-quantize writes without an imatrix,
    for the types :meth:`SolverConfig.leaves_to_llama_cpp` names (their objective weights are 1, so the
    objective and its baseline are the squared error). Row parts side by side on the workers, as :func:`encode`."""
    spec = solver_spec(qtype)
    xs = row_source(x, spec)
    rows, ne0 = xs.shape

    def run(sl: slice) -> Encoded:
        part = part_rows(xs, sl, spec)
        packed = ggml_ref.ggml_quantize(qtype, part).reshape(part.shape[0], -1)
        e = part.astype(np.float64) - ggml_ref.ggml_dequantize(qtype, packed)
        sq_error = float(np.square(e).sum())
        return Encoded(packed, sq_error, float(np.square(part, dtype=np.float64).sum()), sq_error, sq_error)

    workers = config.worker_count()
    parts = row_parts(rows, ne0 // spec.block_size, config.blocks_per_part(spec.block_size), workers)
    return Encoded.join(_on_workers(run, parts, workers))


def _map_parts(spec: QuantSpec, x: torch.Tensor, importance: torch.Tensor | None, config: SolverConfig,
               finish: Callable[[Solution, np.ndarray], T]) -> list[T]:
    """``finish(solution, rows)`` of every row part, in row order, parts side by side on the workers."""
    return map_row_parts(spec, x, importance, config,
                         lambda part, imp, cfg: finish(_solve_rows(spec, part, imp, cfg), part))


def map_row_parts(spec: QuantSpec, x: torch.Tensor, importance: torch.Tensor | None, config: SolverConfig,
                  run_part: Callable[[np.ndarray, torch.Tensor | None, SolverConfig], T]) -> list[T]:
    """``run_part(rows, importance, config)`` of every row part (checked float32 rows; the importance checked;
    the config resolved for the type), in row order, parts side by side on ``config.workers`` threads with
    ``config.threads`` torch threads. The one driver of the torch path and of the compiled kernels on the CPU
    (hqq2gguf/cuda/solve_cpu.py), so their parts, threads and checks cannot drift apart."""
    xs = row_source(x, spec)
    rows, ne0 = xs.shape
    imp = checked_importance(importance, ne0, spec.name)
    config = config.for_type(spec.name)
    workers = config.worker_count()

    def run(sl: slice) -> T:  # the float32 copy and the finiteness check, too, on the part's worker
        return run_part(part_rows(xs, sl, spec), imp, config)

    parts = row_parts(rows, ne0 // spec.block_size, config.blocks_per_part(spec.block_size), workers)
    with _threads(config.threads):
        return _on_workers(run, parts, workers)


def _on_workers(run: Callable[[slice], T], parts: list[slice], workers: int) -> list[T]:
    """``run`` of every part, in order, on ``workers`` threads (ggml through ctypes, numpy and torch release the
    GIL: parts run truly in parallel). The threads live as long as the process (:func:`_pool`); a call from one of
    them runs its parts in place."""
    if len(parts) == 1 or workers == 1 or threading.current_thread().name.startswith(_POOL_PREFIX):
        return [run(sl) for sl in parts]
    return list(_pool(workers).map(run, parts))


_POOL_PREFIX = "hqq-solve"
_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    """One pool of ``workers`` threads per process: a file's hundreds of tensors do not each start and join
    their threads (SmolLM2-135M: 0.85 s of a 6 s conversion went to thread start-up)."""
    with _pools_lock:
        if workers not in _pools:
            _pools[workers] = ThreadPoolExecutor(workers, thread_name_prefix=_POOL_PREFIX)
        return _pools[workers]


def _solve_rows(spec: QuantSpec, x32: np.ndarray, imp: torch.Tensor | None, config: SolverConfig) -> Solution:
    """:func:`solve` on checked rows (rows, ne0) float32, in the calling thread."""
    rows, ne0 = x32.shape
    base_bytes = ggml_ref.ggml_quantize(spec.qtype, x32, None if imp is None else imp.numpy().astype(np.float32))
    base_fields = pack.unpack(spec.qtype, base_bytes)
    x = torch.from_numpy(x32)
    w_rows = element_weights(x.to(torch.float64), spec, config.weights, imp)  # float64: the exact objective
    w64 = w_rows.numpy().reshape(-1, spec.block_size)
    xb, w = x.reshape(-1, spec.block_size), w_rows.to(torch.float32).reshape(-1, spec.block_size)
    base_obj = block_objective(x32.reshape(xb.shape), pack.decode(spec.qtype, base_fields), w64)
    solver = solve_super if spec.kind is Kind.SUPER else solve_block_scale
    best = solver(spec, xb, w, fitting_weights(w), _state_of(base_fields), config)
    fields = _fields_of(spec, best)
    values = pack.decode(spec.qtype, fields)
    obj = block_objective(xb.numpy(), values, w64)
    worse = obj > base_obj
    if worse.any():  # the loop scores in float32: a near-tie can flip in float64; keep llama.cpp's block
        logger.debug("%s: %d block(s) lost a float32 near-tie; kept llama.cpp's", spec.name, worse.sum())
        fields = _select(spec, worse, base_fields, fields)
        values = pack.decode(spec.qtype, fields)
        obj = block_objective(xb.numpy(), values, w64)
    return Solution(spec.qtype, fields, values.reshape(rows, ne0), obj, base_obj, w_rows.numpy())


def row_parts(rows: int, blocks_per_row: int, chunk_blocks: int, workers: int) -> list[slice]:
    """Slices of whole rows: at most ``chunk_blocks`` blocks each (one row at least), and at least
    ``workers`` of them when there are that many rows."""
    per_part = max(1, chunk_blocks // blocks_per_row)
    n_parts = max(-(-rows // per_part), min(workers, rows), 1)
    size = -(-rows // n_parts)
    return [slice(i, i + size) for i in range(0, rows, size)]


def concat_solutions(spec: QuantSpec, parts: list[Solution]) -> Solution:
    """The solutions of consecutive row parts as one."""
    def cat(name: str) -> np.ndarray | None:
        first = getattr(parts[0].fields, name)
        return None if first is None else np.concatenate([getattr(p.fields, name) for p in parts])

    first = parts[0].fields
    fields = type(first)(*(cat(f.name) for f in dataclasses.fields(first)))
    return Solution(spec.qtype, fields, *(np.concatenate([getattr(p, a) for p in parts])
                                          for a in ("values", "objective", "baseline_objective", "weights")))


def block_objective(x: np.ndarray, values: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    """``sum w * (x - values)**2`` per block; all (n_blocks, block) (float64 arithmetic; float64 inputs are not
    copied). ``w`` None: weights of one (``1.0 * e`` is ``e``: the same sums as with ones, bit for bit)."""
    e = np.asarray(x, dtype=np.float64) - np.asarray(values, dtype=np.float64)
    return (e * e if w is None else w * e * e).sum(axis=1)


def fitting_weights(w: torch.Tensor) -> torch.Tensor:
    """The weights the free parameters are fitted with: the objective's, floored so that a block of zero
    weights still has a well-posed fit (the CUDA path uses the same)."""
    return w + (_FIT_WEIGHT_FLOOR * w.mean(dim=1, keepdim=True) + TINY)


def solver_spec(qtype: gguf.GGMLQuantizationType) -> QuantSpec:
    s = spec_of(qtype)
    if s.qtype not in SOLVER_TYPES:
        known = ", ".join(t.name for t in SOLVER_TYPES)
        raise UnsupportedError(f"the HQQ solver does not handle {s.name} (it handles {known})")
    return s


def checked_rows(x: object, spec: QuantSpec) -> np.ndarray:
    """Rows ``x`` (rows, ne0) as one checked float32 array (the whole tensor at once)."""
    xs = row_source(x, spec)
    return part_rows(xs, slice(0, xs.shape[0]), spec)


def row_source(x: object, spec: QuantSpec) -> np.ndarray:
    """Rows ``x`` (rows, ne0) as a numpy array of their own float dtype, shape-checked, not copied: the float32
    copy and the finiteness check come per part (:func:`part_rows`), on the worker that solves it."""
    t = torch.as_tensor(x).detach().cpu()
    if t.dim() != 2 or not t.is_floating_point():
        raise InputError(f"{spec.name}: expected a 2-D float tensor (rows, ne0), got {t.dtype} {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise InputError(f"{spec.name}: the tensor has no rows")
    if t.shape[1] == 0 or t.shape[1] % spec.block_size:
        raise InputError(f"{spec.name}: rows of {t.shape[1]} elements are not whole {spec.block_size}-blocks")
    if t.dtype not in (torch.float16, torch.float32, torch.float64):
        t = t.to(torch.float32)  # bfloat16 and the like: numpy has no such dtype
    return t.numpy()


def part_rows(xs: np.ndarray, sl: slice, spec: QuantSpec) -> np.ndarray:
    """Rows ``sl`` of :func:`row_source`'s array as contiguous float32, refused if any is not finite."""
    rows = xs[sl]
    if rows.dtype == np.float16 and rows.flags.writeable:  # torch's conversion is vectorized, numpy's is not
        x32 = np.ascontiguousarray(torch.from_numpy(rows).to(torch.float32).numpy())  # the same exact values
    else:
        x32 = np.ascontiguousarray(rows, dtype=np.float32)
    if not np.isfinite(x32).all():
        raise InputError(f"{spec.name}: cannot quantize non-finite values")
    return x32


def _state_of(f: Fields) -> dict[str, torch.Tensor]:
    """Fields (numpy) -> solver state: fp16 values and integers alike as float32 (all exact)."""
    out = {}
    for name in ("d", "m", "dmin", "sc", "mn", "q"):
        v = getattr(f, name, None)
        if v is not None:
            out[name] = torch.from_numpy(v.astype(np.float32))
    return out


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` (0: left as it is) for the duration."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n:
            torch.set_num_threads(before)


def _fields_of(spec: QuantSpec, st: dict[str, torch.Tensor]) -> Fields:
    def f16(name: str) -> np.ndarray | None:
        return st[name].numpy().astype(np.float16) if name in st else None

    def i8(name: str) -> np.ndarray | None:
        return st[name].numpy().astype(np.int8) if name in st else None

    q = i8("q").reshape(-1, spec.block_size)
    if spec.kind is Kind.SUPER:
        return KQuantFields(f16("d"), f16("dmin"), i8("sc"), i8("mn"), q)
    return LegacyFields(f16("d"), f16("m"), q)


def _select(spec: QuantSpec, take: np.ndarray, a: Fields, b: Fields) -> Fields:
    """Per block: ``a`` where ``take``, else ``b``."""
    def pick(name: str) -> np.ndarray | None:
        va, vb = getattr(a, name), getattr(b, name)
        if va is None:
            return None
        m = take.reshape(-1, *([1] * (va.ndim - 1)))
        return np.where(m, va, vb.astype(va.dtype))
    names = ("d", "dmin", "sc", "mn", "q") if spec.kind is Kind.SUPER else ("d", "m", "q")
    return type(a)(*(pick(n) for n in names))
