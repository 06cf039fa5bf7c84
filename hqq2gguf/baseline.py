"""llama.cpp's own quantizer (``llama_model_quantize`` through llama-cpp-python): the baseline every
hqq2gguf quality and speed number is measured against, on the same F16 input."""

from __future__ import annotations

import ctypes
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import gguf
import numpy as np

from hqq2gguf.errors import Hqq2GgufError


def llama_quantize(src: Path | str, dst: Path | str, ftype: gguf.LlamaFileType | int, *, nthread: int = 1,
                   pure: bool = False, dry_run: bool = False, leave_output_tensor: bool = False,
                   output_tensor_type: gguf.GGMLQuantizationType | None = None,
                   token_embedding_type: gguf.GGMLQuantizationType | None = None,
                   tensor_types: Sequence[tuple[str, gguf.GGMLQuantizationType]] = (),
                   imatrix: Mapping[str, np.ndarray] | None = None) -> float:
    """Quantize ``src`` into ``dst`` as llama-quantize would; returns the wall seconds.

    The options are llama-quantize's: --pure, --dry-run, --leave-output-tensor, --output-tensor-type,
    --token-embedding-type, --tensor-type PATTERN=TYPE (lower-cased, as llama-quantize does) and --imatrix:
    ``imatrix`` maps tensor names to their importance (what llama-quantize passes after dividing the file's
    sums by the counts: :attr:`hqq2gguf.calibrate.Importance.entries`)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = nthread
    params.ftype = int(ftype)
    params.pure = pure
    params.dry_run = dry_run
    params.quantize_output_tensor = not leave_output_tensor
    if output_tensor_type is not None:
        params.output_tensor_type = int(output_tensor_type)
    if token_embedding_type is not None:
        params.token_embedding_type = int(token_embedding_type)
    overrides = None  # kept alive until the call returns
    if tensor_types:
        overrides = (llama_cpp.llama_model_tensor_override * (len(tensor_types) + 1))()
        for o, (pattern, qtype) in zip(overrides, tensor_types):
            o.pattern = pattern.lower().encode()
            o.type = int(qtype)
        overrides[len(tensor_types)].pattern = None  # terminator
        params.tt_overrides = ctypes.cast(overrides, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
    keep_alive = []  # the imatrix arrays and names must outlive the call
    if imatrix:
        entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for e, (name, values) in zip(entries, sorted(imatrix.items())):
            data = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
            keep_alive.append(data)
            e.name = name.encode()
            e.data = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            e.size = data.size
        entries[len(imatrix)].name = None  # terminator
        keep_alive.append(entries)
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise Hqq2GgufError(f"llama_model_quantize returned {rc} ({gguf.LlamaFileType(int(ftype)).name})",
                            file=src)
    return time.perf_counter() - start
