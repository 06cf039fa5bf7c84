"""Activation statistics collected from llama.cpp's own forward pass, exactly as ``llama-imatrix`` does.

llama.cpp calls an eval callback for every node of its compute graph (``llama_context_params.cb_eval``).
:class:`ImatrixCollector` answers "yes" for the matrix multiplications whose weight is a model tensor, and then
adds ``x**2`` of every input row to that weight's per-column sum (per expert for ``MUL_MAT_ID``), with the
row counts: llama-imatrix's ``collect_imatrix`` (tools/imatrix/imatrix.cpp), in numpy and float64.

    collector = ImatrixCollector()
    with LlamaRunner(gguf_path, eval_callback=collector.callback) as runner:
        runner.evaluate(chunk)                     # tokens; every token's logits, as llama-imatrix asks
    stats = collector.stats()                      # ImatrixStats: sums, counts, chunks

The ``ggml_tensor`` layout is declared here (ggml/include/ggml.h) and checked against libggml at start-up,
so a llama-cpp-python whose ggml changed it fails with a clear error instead of reading garbage.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from dataclasses import dataclass, field

import numpy as np

from hqq2gguf.calibrate.covariance import CovarianceSink
from hqq2gguf.calibrate.imatrix import mean_squares
from hqq2gguf.errors import UnsupportedError

logger = logging.getLogger(__name__)

GGML_MAX_DIMS = 4
GGML_MAX_SRC = 10
GGML_MAX_NAME = 64
GGML_MAX_OP_PARAMS = 64
GGML_TYPE_F32 = 0
GGML_TYPE_I32 = 26
MIN_ROWS = 16  # llama-imatrix ignores smaller batches (single-token decoding steps)


class GgmlTensor(ctypes.Structure):
    """``struct ggml_tensor`` (ggml/include/ggml.h)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
        ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * GGML_MAX_SRC),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * GGML_MAX_NAME),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


@dataclass(frozen=True)
class _Ggml:
    """The few libggml functions the collector needs, and the op ids of this build."""

    lib: ctypes.CDLL
    mul_mat: int
    mul_mat_id: int

    def read(self, t: GgmlTensor, addr: int) -> np.ndarray:
        """The bytes of tensor ``t`` (at ``addr``) in host memory: its own buffer when that is the host's."""
        nbytes = self.lib.ggml_nbytes(addr)
        if t.buffer and not self.lib.ggml_backend_buffer_is_host(t.buffer):
            out = np.empty(nbytes, dtype=np.uint8)
            self.lib.ggml_backend_tensor_get(addr, out.ctypes.data, 0, nbytes)
            return out
        return np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(t.data))


@functools.cache
def _ggml() -> _Ggml:
    from hqq2gguf.ggml_ref import library_path

    lib = ctypes.CDLL(str(library_path()))
    c = ctypes
    lib.ggml_nbytes.argtypes, lib.ggml_nbytes.restype = [c.c_void_p], c.c_size_t
    lib.ggml_backend_buffer_is_host.argtypes, lib.ggml_backend_buffer_is_host.restype = [c.c_void_p], c.c_bool
    lib.ggml_backend_tensor_get.argtypes = [c.c_void_p, c.c_void_p, c.c_size_t, c.c_size_t]
    lib.ggml_backend_tensor_get.restype = None
    lib.ggml_op_name.argtypes, lib.ggml_op_name.restype = [c.c_int], c.c_char_p
    ops = {}
    for op in range(256):
        name = lib.ggml_op_name(op)
        if name is None:
            break
        ops.setdefault(name.decode(), op)
    if "MUL_MAT" not in ops or "MUL_MAT_ID" not in ops:
        raise UnsupportedError("this libggml names no MUL_MAT / MUL_MAT_ID op: cannot collect activations")
    ggml = _Ggml(lib, ops["MUL_MAT"], ops["MUL_MAT_ID"])
    _check_layout(lib)
    return ggml


def _check_layout(lib: ctypes.CDLL) -> None:
    """Make a tensor with libggml and read it back through :class:`GgmlTensor`: same type, shape, name."""
    c = ctypes

    class InitParams(c.Structure):
        _fields_ = [("mem_size", c.c_size_t), ("mem_buffer", c.c_void_p), ("no_alloc", c.c_bool)]

    lib.ggml_init.argtypes, lib.ggml_init.restype = [InitParams], c.c_void_p
    lib.ggml_new_tensor_2d.argtypes = [c.c_void_p, c.c_int, c.c_int64, c.c_int64]
    lib.ggml_new_tensor_2d.restype = c.c_void_p
    lib.ggml_set_name.argtypes, lib.ggml_set_name.restype = [c.c_void_p, c.c_char_p], c.c_void_p
    lib.ggml_free.argtypes, lib.ggml_free.restype = [c.c_void_p], None
    ctx = lib.ggml_init(InitParams(1 << 16, None, True))
    try:
        addr = lib.ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 96, 7)
        lib.ggml_set_name(addr, b"layout.check")
        t = GgmlTensor.from_address(addr)
        ok = (t.type == GGML_TYPE_F32 and tuple(t.ne) == (96, 7, 1, 1) and t.nb[0] == 4 and t.nb[1] == 384
              and t.name == b"layout.check")
    finally:
        lib.ggml_free(ctx)
    if not ok:
        raise UnsupportedError("this llama-cpp-python's ggml_tensor layout differs from the one hqq2gguf reads "
                               "(ggml/include/ggml.h changed): cannot collect activations")


def weight_name(name: bytes) -> str:
    """llama-imatrix's ``filter_tensor_name``: the part between the first two '#' (backends may decorate)."""
    text = name.decode("utf-8", errors="replace")
    if "#" in text:
        text = text.split("#", 2)[1]
    return text


@dataclass
class ImatrixStats:
    """Per weight: float64 sums of squared inputs (n_mat, ne0) and row counts (n_mat,); chunks evaluated."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    chunks: int = 0
    chunk_size: int = 0

    def means(self) -> dict[str, np.ndarray]:
        """Mean squared input per column, float32 (n_mat, ne0), as llama-quantize reads an imatrix (an
        expert never routed to gets 1 everywhere)."""
        return {name: mean_squares(s, self.counts[name]) for name, s in self.sums.items()}


class ImatrixCollector:
    """The eval callback (:attr:`callback`, a ctypes function to keep alive while the context lives)."""

    def __init__(self, *, process_output: bool = False, min_rows: int = MIN_ROWS,
                 covariance: CovarianceSink | None = None) -> None:
        from llama_cpp import ggml_backend_sched_eval_callback

        self.process_output = process_output
        self.min_rows = min_rows  # smaller batches are ignored (llama-imatrix: 16, to skip generation steps)
        self.covariance = covariance  # also every 2-D matrix's input rows, for their covariances
        self.active = True  # False: watch nothing (e.g. while the same context generates text)
        self.stats = ImatrixStats()
        self.error: BaseException | None = None
        self._ggml = _ggml()
        self.callback = ggml_backend_sched_eval_callback(self._on_eval)

    def _on_eval(self, addr: int, ask: bool, user_data: int) -> bool:
        try:
            t = GgmlTensor.from_address(addr)
            if ask:
                return self._wanted(t)
            self._collect(t)
            return True
        except BaseException as e:  # never let an exception unwind through C; report it after decode
            self.error = self.error or e
            return False

    def _wanted(self, t: GgmlTensor) -> bool:
        if not self.active:
            return False
        if t.op == self._ggml.mul_mat_id:
            return True
        if t.op != self._ggml.mul_mat:
            return False
        src0, src1 = GgmlTensor.from_address(t.src[0]), GgmlTensor.from_address(t.src[1])
        if src1.ne[1] < self.min_rows or src1.type != GGML_TYPE_F32:
            return False
        name = weight_name(src0.name)
        return name.startswith("blk.") or (self.process_output and name == "output.weight")

    def _collect(self, t: GgmlTensor) -> None:
        src0, src1 = GgmlTensor.from_address(t.src[0]), GgmlTensor.from_address(t.src[1])
        name = weight_name(src0.name)
        x = self._floats(src1, t.src[1])  # (ne3, ne2, ne1, ne0)
        if t.op == self._ggml.mul_mat_id:
            ids = GgmlTensor.from_address(t.src[2])
            self._collect_experts(name, x, self._ids(ids, t.src[2]), int(src0.ne[2]))
            return
        n2, n3 = int(src0.ne[2]), int(src0.ne[3])
        sums, counts = self._entry(name, n2 * n3, x.shape[-1])
        sq = np.square(x, dtype=np.float64).sum(axis=2)  # (ne3, ne2, ne0): every row of each matrix
        for i3 in range(x.shape[0]):
            for i2 in range(x.shape[1]):
                sums[(i3 % n3) * n2 + (i2 % n2)] += sq[i3, i2]
        counts += x.shape[0] * x.shape[1] * x.shape[2] // (n2 * n3)
        if not np.isfinite(sums).all():
            raise ValueError(f"non-finite activations reach {name}")
        if self.covariance is not None and n2 * n3 == 1:
            self.covariance.add(name, x.reshape(-1, x.shape[-1]))

    def _collect_experts(self, name: str, x: np.ndarray, ids: np.ndarray, n_as: int) -> None:
        """``x`` (1, n_tokens, ne1, ne0), ``ids`` (n_tokens, n_ids): row ``idx % ne1`` of each token feeds
        expert ``ids[token, idx]``."""
        sums, counts = self._entry(name, n_as, x.shape[-1])
        x = x[0]
        n_tokens, n_ids = ids.shape
        if ids.min() < 0 or ids.max() >= n_as:
            raise ValueError(f"expert ids outside [0, {n_as}) for {name}")
        rows = x[np.arange(n_tokens)[:, None], np.arange(n_ids)[None, :] % x.shape[1]]  # (n_tokens, n_ids, ne0)
        np.add.at(sums, ids.ravel(), np.square(rows.reshape(-1, x.shape[-1]), dtype=np.float64))
        counts += np.bincount(ids.ravel(), minlength=n_as)
        if not np.isfinite(sums).all():
            raise ValueError(f"non-finite activations reach {name}")

    def _entry(self, name: str, n_mat: int, ne0: int) -> tuple[np.ndarray, np.ndarray]:
        s = self.stats
        if name not in s.sums:
            s.sums[name] = np.zeros((n_mat, ne0), dtype=np.float64)
            s.counts[name] = np.zeros(n_mat, dtype=np.int64)
        if s.sums[name].shape != (n_mat, ne0):
            raise ValueError(f"inconsistent size for {name}: {s.sums[name].shape} vs {(n_mat, ne0)}")
        return s.sums[name], s.counts[name]

    def _floats(self, t: GgmlTensor, addr: int) -> np.ndarray:
        if t.type != GGML_TYPE_F32 or t.nb[0] != 4:
            raise ValueError(f"activations of type {t.type} with element stride {t.nb[0]}: expected F32")
        raw = self._ggml.read(t, addr)
        shape = tuple(int(n) for n in reversed(t.ne))
        strides = tuple(int(n) for n in reversed(t.nb))
        return np.lib.stride_tricks.as_strided(raw.view(np.float32), shape=shape, strides=strides)

    def _ids(self, t: GgmlTensor, addr: int) -> np.ndarray:
        if t.type != GGML_TYPE_I32:
            raise ValueError(f"expert ids of type {t.type}: expected I32")
        raw = self._ggml.read(t, addr)
        view = np.lib.stride_tricks.as_strided(raw.view(np.int32), shape=(int(t.ne[1]), int(t.ne[0])),
                                               strides=(int(t.nb[1]), int(t.nb[0])))
        return np.array(view)
