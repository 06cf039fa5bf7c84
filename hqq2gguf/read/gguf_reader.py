"""A GGUF file's metadata and tensors: what hqq2gguf used gguf.GGUFReader for, from the bounded parse.

    reader = GgufReader(path)               # InputError naming the file and the reason when it is corrupt
    reader.get_field("general.architecture").contents()      # "llama"
    for t in reader.tensors:                 # name, tensor_type, shape (ggml order), n_elements, n_bytes, data
        ...

The same attribute names and value conventions as gguf.GGUFReader (fields with ``name``, ``types`` and
``contents()``, the virtual ``GGUF.*`` fields; tensors whose ``data`` is a read-only memory map: float types
as their numpy dtype in numpy order, block types as bytes, one row of blocks per line), built from
:func:`~hqq2gguf.read.gguf_header.validate_gguf_header`'s parse: every count checked before it is used, and
fast (GGUFReader makes numpy views per vocabulary item: ~10 s on a 49k vocabulary, this well under one).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from hqq2gguf.read.gguf_header import GgufField, GgufTensorSpan, validate_gguf_header

Q = gguf.GGMLQuantizationType
V = gguf.GGUFValueType
_FLOAT_DTYPES = {Q.F32: "<f4", Q.F16: "<f2", Q.F64: "<f8", Q.I8: "<i1", Q.I16: "<i2", Q.I32: "<i4", Q.I64: "<i8"}


@dataclass(frozen=True)
class GgufTensor:
    name: str
    tensor_type: gguf.GGMLQuantizationType
    shape: np.ndarray
    """ggml order (ne0 first), as gguf.ReaderTensor's."""
    n_elements: int
    n_bytes: int
    data_offset: int
    data: np.ndarray


class GgufReader:
    """Metadata (``fields``, in file order after the virtual ``GGUF.*`` ones) and ``tensors`` of one GGUF."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        layout = validate_gguf_header(self.path)
        virtual = [("GGUF.version", V.UINT32, layout.version), ("GGUF.tensor_count", V.UINT64, len(layout.tensors)),
                   ("GGUF.kv_count", V.UINT64, layout.n_kv)]
        self.fields: dict[str, GgufField] = {name: GgufField(name, (vtype,), value) for name, vtype, value in virtual}
        self.fields.update((f.name, f) for f in layout.fields)
        mapped = np.memmap(self.path, np.uint8, "r") if layout.tensors else None
        self.tensors = [_tensor(mapped, span) for span in layout.tensors]

    def get_field(self, key: str) -> GgufField | None:
        return self.fields.get(key)


def _tensor(mapped: np.ndarray, span: GgufTensorSpan) -> GgufTensor:
    raw = mapped[span.begin:span.begin + span.nbytes]
    ne = tuple(int(n) for n in span.shape) or (1,)
    n_elements = int(np.prod(ne, dtype=np.int64))
    if span.qtype in _FLOAT_DTYPES:
        data = raw.view(_FLOAT_DTYPES[span.qtype]).reshape(tuple(reversed(ne)))
    else:
        block, type_size = gguf.GGML_QUANT_SIZES[span.qtype]
        data = raw.reshape(*reversed(ne[1:]), ne[0] // block * type_size)
    return GgufTensor(span.name, span.qtype, np.array(span.shape, dtype=np.uint64), n_elements, span.nbytes,
                      span.begin, data)
