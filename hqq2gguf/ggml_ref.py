"""llama.cpp's own block code, through ctypes on the libggml-base shipped with llama-cpp-python.

Two uses: an independent decoder for the packers' tests (``ggml_dequantize`` runs ggml's
``dequantize_row_*``), and llama.cpp's baseline answer per block (``ggml_quantize`` runs
``ggml_quantize_chunk``: the ``_ref`` quantizers, or the ``_impl`` ones when given an imatrix) that the
solver must never end worse than.

The library is found in ``llama_cpp/lib`` of the installed llama-cpp-python, or at the path in
``HQQ2GGUF_LIBGGML_BASE``. ggml aborts the process on a failed ``GGML_ASSERT``, so every precondition
is checked here first and reported as an error instead.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
from pathlib import Path

import gguf
import numpy as np

from hqq2gguf.errors import InputError, UnsupportedError
from hqq2gguf.qtypes import spec

LIB_ENV = "HQQ2GGUF_LIBGGML_BASE"

_TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
_FROM_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


class _TypeTraits(ctypes.Structure):
    """``struct ggml_type_traits`` (ggml/include/ggml.h)."""

    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", _TO_FLOAT),
        ("from_float_ref", _FROM_FLOAT),
    ]


def library_path() -> Path:
    """Where libggml-base is loaded from."""
    if os.environ.get(LIB_ENV):
        return Path(os.environ[LIB_ENV])
    found = importlib.util.find_spec("llama_cpp")
    if found is None or not found.submodule_search_locations:
        raise UnsupportedError(f"llama-cpp-python is not installed (or set {LIB_ENV} to a libggml-base)")
    for where in found.submodule_search_locations:
        for name in ("libggml-base.so", "libggml-base.dylib", "ggml-base.dll"):
            if (Path(where) / "lib" / name).is_file():
                return Path(where) / "lib" / name
    raise UnsupportedError(f"no libggml-base in llama-cpp-python's lib folder (set {LIB_ENV})")


@functools.cache
def _lib() -> ctypes.CDLL:
    path = library_path()
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        raise UnsupportedError(f"cannot load {path}: {exc}") from None
    c = ctypes
    lib.ggml_get_type_traits.argtypes, lib.ggml_get_type_traits.restype = [c.c_int], c.POINTER(_TypeTraits)
    lib.ggml_row_size.argtypes, lib.ggml_row_size.restype = [c.c_int, c.c_int64], c.c_size_t
    lib.ggml_validate_row_data.argtypes = [c.c_int, c.c_void_p, c.c_size_t]
    lib.ggml_validate_row_data.restype = c.c_bool
    lib.ggml_quantize_requires_imatrix.argtypes, lib.ggml_quantize_requires_imatrix.restype = [c.c_int], c.c_bool
    lib.ggml_quantize_chunk.argtypes = [c.c_int, c.c_void_p, c.c_void_p, c.c_int64, c.c_int64, c.c_int64,
                                        c.c_void_p]
    lib.ggml_quantize_chunk.restype = c.c_size_t
    return lib


@functools.cache
def _traits(qtype: gguf.GGMLQuantizationType) -> _TypeTraits:
    """ggml's traits of a target type, checked against gguf-py's sizes (a mismatched library is refused)."""
    s = spec(qtype)
    t = _lib().ggml_get_type_traits(int(s.qtype)).contents
    want = (s.qtype.name.lower(), *gguf.GGML_QUANT_SIZES[s.qtype])
    got = (t.type_name.decode().lower(), t.blck_size, t.type_size)
    if got != want:
        raise UnsupportedError(f"{library_path()}: type {int(s.qtype)} is {got} (name, block, bytes), "
                               f"gguf-py says {want}: libggml and gguf-py do not match")
    return t


def ggml_row_size(qtype: gguf.GGMLQuantizationType, n_per_row: int) -> int:
    """Bytes of a row of ``n_per_row`` elements."""
    _traits(qtype)
    return int(_lib().ggml_row_size(int(qtype), n_per_row))


def _row_geometry(qtype: gguf.GGMLQuantizationType, n_per_row: int) -> int:
    block = _traits(qtype).blck_size
    if n_per_row <= 0 or n_per_row % block:
        raise InputError(f"{qtype.name}: a row of {n_per_row} elements is not a whole number of {block}-blocks")
    return ggml_row_size(qtype, n_per_row)


def ggml_dequantize(qtype: gguf.GGMLQuantizationType, data: np.ndarray) -> np.ndarray:
    """ggml's ``to_float`` on uint8 rows (rows, row_bytes) -> float32 (rows, n_per_row).

    A (n_blocks, type_size) array of blocks gives (n_blocks, block_size)."""
    t = _traits(qtype)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise InputError(f"{qtype.name}: expected a 2-D uint8 array of rows, got {got}")
    if data.shape[1] % t.type_size:
        raise InputError(f"{qtype.name}: rows of {data.shape[1]} bytes are not whole {t.type_size}-byte blocks")
    if not t.to_float:
        raise UnsupportedError(f"libggml has no to_float for {qtype.name}")
    src = np.ascontiguousarray(data)
    out = np.empty((data.shape[0], data.shape[1] // t.type_size * t.blck_size), dtype=np.float32)
    if out.size:
        t.to_float(src.ctypes.data, out.ctypes.data, out.size)
    return out


def ggml_quantize(qtype: gguf.GGMLQuantizationType, x: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """llama.cpp's quantization (``ggml_quantize_chunk``) of float rows (rows, n_per_row) -> uint8 rows.

    ``imatrix``: optional (n_per_row,) importance per column (mean squared activation), as
    llama-quantize passes it; without it the ``_ref`` quantizers run (for the types that allow it)."""
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        raise InputError(f"{qtype.name}: expected a 2-D array of rows, got {type(x).__name__}")
    rows, n_per_row = x.shape
    row_bytes = _row_geometry(qtype, n_per_row)
    src = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(src).all():
        raise InputError(f"{qtype.name}: cannot quantize non-finite values")
    qw = None
    if imatrix is not None:
        qw = np.ascontiguousarray(imatrix, dtype=np.float32)
        if qw.shape != (n_per_row,):
            raise InputError(f"{qtype.name}: imatrix has shape {qw.shape}, expected ({n_per_row},)")
    if qw is None and _lib().ggml_quantize_requires_imatrix(int(qtype)):
        raise InputError(f"{qtype.name}: llama.cpp needs an imatrix to quantize this type")
    out = np.zeros((rows, row_bytes), dtype=np.uint8)
    if rows:
        done = _lib().ggml_quantize_chunk(int(qtype), src.ctypes.data, out.ctypes.data, 0, rows, n_per_row,
                                          None if qw is None else qw.ctypes.data)
        if done != out.size:
            raise RuntimeError(f"ggml_quantize_chunk({qtype.name}) wrote {done} bytes, expected {out.size}")
    return out


def ggml_validate_row_data(qtype: gguf.GGMLQuantizationType, data: np.ndarray) -> bool:
    """ggml's load-time check of packed data (non-finite scales...): what llama.cpp validates on load."""
    _traits(qtype)
    buf = np.ascontiguousarray(data, dtype=np.uint8)
    return bool(_lib().ggml_validate_row_data(int(qtype), buf.ctypes.data, buf.nbytes))

