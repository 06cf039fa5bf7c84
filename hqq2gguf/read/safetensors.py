"""Validated, lazy safetensors reading: the header is checked completely before any tensor is read.

Layout of a .safetensors file::

    u64 little-endian N | N bytes of JSON header | data bytes
    header: {"name": {"dtype": "BF16", "shape": [r, c], "data_offsets": [begin, end]}, "__metadata__": {...}}

Offsets are relative to the start of the data. Every check below exists so that a hostile or
half-downloaded file produces a one-line error naming the file and tensor, never a huge allocation,
a traceback or a silently wrong tensor.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hqq2gguf.errors import MEMORY_HINT, InputError, ResourceError, UnsupportedError

# The safetensors format caps the header at 100 MB; anything larger is not a valid file.
MAX_HEADER_BYTES = 100 * 1024 * 1024

# safetensors dtype -> (bytes per element, torch dtype, numpy dtype used to read the raw bytes)
_DTYPES: dict[str, tuple[int, torch.dtype, np.dtype]] = {
    "F32": (4, torch.float32, np.dtype("<f4")),
    "F16": (2, torch.float16, np.dtype("<f2")),
    "BF16": (2, torch.bfloat16, np.dtype("<u2")),
    "F64": (8, torch.float64, np.dtype("<f8")),
    "I64": (8, torch.int64, np.dtype("<i8")),
    "I32": (4, torch.int32, np.dtype("<i4")),
    "I16": (2, torch.int16, np.dtype("<i2")),
    "I8": (1, torch.int8, np.dtype("i1")),
    "U8": (1, torch.uint8, np.dtype("u1")),
    "BOOL": (1, torch.bool, np.dtype("?")),
}
#: The dtypes a weight may have: an integer or boolean tensor that becomes a GGUF tensor is refused (see
#: :func:`check_weight_dtype`); the converter drops the integer buffers it knows (filter_tensor), as llama.cpp does.
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")
# Known to the format but not convertible here (quantized or exotic storage).
_KNOWN_UNSUPPORTED = {"F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "U16", "U32", "U64", "C64"}


@dataclass(frozen=True)
class SafetensorsTensor:
    """One tensor of a safetensors file: validated metadata and a bounded reader of its bytes."""

    file: Path
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int  # absolute file offset of the first data byte
    nbytes: int

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype][1]

    def load(self) -> torch.Tensor:
        """Read exactly this tensor's bytes (no memory map kept open) as a torch tensor."""
        size, _, np_dtype = _DTYPES[self.dtype]
        count = self.nbytes // size
        try:
            with open(self.file, "rb") as f:
                f.seek(self.offset)
                array = np.fromfile(f, dtype=np_dtype, count=count)
        except OSError as e:
            raise InputError(f"cannot read tensor data: {e.strerror or e}", file=self.file, tensor=self.name) from e
        except MemoryError as e:
            raise ResourceError(f"out of memory reading {list(self.shape)} {self.dtype} "
                                f"({self.nbytes / 2**20:.1f} MiB): {MEMORY_HINT}", file=self.file, tensor=self.name) from e
        if array.size != count:
            raise InputError(
                f"file is truncated: tensor data needs {self.nbytes} bytes at offset {self.offset}",
                file=self.file, tensor=self.name,
            )
        tensor = torch.from_numpy(array)
        if self.dtype == "BF16":
            tensor = tensor.view(torch.bfloat16)
        return tensor.reshape(self.shape) if self.shape else tensor.reshape(())


def check_weight_dtype(dtype: torch.dtype, *, file: Path, tensor: str) -> None:
    """Refuse a tensor to be converted whose dtype is not a float one, naming it: widening integer codes to floats
    (what llama.cpp's converter does without a quantization_config) makes a model that loads and talks nonsense."""
    if dtype.is_floating_point:
        return
    name = next((n for n, (_, t, _) in _DTYPES.items() if t == dtype), str(dtype).removeprefix("torch."))
    raise UnsupportedError(
        f"dtype {name!r} cannot be converted (supported: {', '.join(FLOAT_DTYPES)}): an integer or boolean weight "
        "is quantized storage (GPTQ/AWQ/bitsandbytes codes) or a buffer llama.cpp has no tensor for; dequantize "
        "the checkpoint to BF16/F16 first", file=file, tensor=tensor)


def read_safetensors_header(path: Path) -> tuple[dict[str, SafetensorsTensor], dict[str, str]]:
    """Parse and validate a safetensors header; return tensors sorted by name, and ``__metadata__``."""
    try:
        file_size = os.stat(path).st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise InputError("not a safetensors file: shorter than its 8-byte header length", file=path)
            header_len = int.from_bytes(prefix, "little")
            if header_len > MAX_HEADER_BYTES:
                raise InputError(f"header length {header_len} exceeds the format's 100 MB limit", file=path)
            if 8 + header_len > file_size:
                raise InputError(
                    f"header length {header_len} runs past the end of the file ({file_size} bytes): "
                    "truncated or not a safetensors file", file=path,
                )
            raw = f.read(header_len)
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror or e}", file=path) from e
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_refuse_duplicates)
    except _DuplicateKey as e:
        raise InputError(f"header lists {e.args[0]!r} twice", file=path) from e
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise InputError(f"header is not valid JSON: {e}", file=path) from e
    if not isinstance(header, dict):
        raise InputError(f"header is a JSON {type(header).__name__}, not an object of tensor entries", file=path)

    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + header_len
    data_size = file_size - data_start
    tensors = {name: _validate_entry(path, name, entry, data_start, data_size) for name, entry in header.items()}
    _check_overlaps(path, tensors)
    return dict(sorted(tensors.items())), metadata if isinstance(metadata, dict) else {}


class _DuplicateKey(Exception):
    pass


def _refuse_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """json.loads keeps the last of two equal keys silently; two entries for one tensor are corrupt."""
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _validate_entry(path: Path, name: str, entry: object, data_start: int, data_size: int) -> SafetensorsTensor:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise InputError("header entry lacks dtype, shape or data_offsets", file=path, tensor=name)
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str):
        raise InputError(f"invalid dtype {dtype!r} (expected a string such as \"BF16\")", file=path, tensor=name)
    if dtype not in _DTYPES and dtype not in _KNOWN_UNSUPPORTED:
        raise InputError(f"unknown dtype {dtype!r}", file=path, tensor=name)
    if dtype not in _DTYPES:
        raise UnsupportedError(
            f"dtype {dtype!r} cannot be converted (supported: F32, F16, BF16; quantized checkpoints "
            "such as FP8/GPTQ/AWQ must be dequantized first)", file=path, tensor=name,
        )
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InputError(f"invalid shape {shape!r}", file=path, tensor=name)
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
        raise InputError(f"invalid data_offsets {offsets!r}", file=path, tensor=name)
    begin, end = offsets
    expected = math.prod(shape) * _DTYPES[dtype][0]
    if begin < 0 or end < begin:
        raise InputError(f"invalid data_offsets [{begin}, {end}]", file=path, tensor=name)
    if end - begin != expected:
        raise InputError(
            f"data_offsets span {end - begin} bytes but shape {shape} of {dtype} needs {expected}",
            file=path, tensor=name,
        )
    if end > data_size:
        raise InputError(
            f"tensor data [{begin}, {end}) lies beyond the end of the file's data ({data_size} bytes): "
            "the file is truncated or corrupt", file=path, tensor=name,
        )
    return SafetensorsTensor(path, name, dtype, tuple(shape), data_start + begin, end - begin)


def _check_overlaps(path: Path, tensors: dict[str, SafetensorsTensor]) -> None:
    spans = sorted((t.offset, t.offset + t.nbytes, t.name) for t in tensors.values() if t.nbytes)
    for (_, prev_end, prev_name), (begin, _, name) in itertools.pairwise(spans):
        if begin < prev_end:
            raise InputError(f"tensor data overlaps that of {prev_name!r}", file=path, tensor=name)
