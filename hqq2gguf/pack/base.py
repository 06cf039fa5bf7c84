"""The codec base class: one subclass per GGUF type, registered by ``qtype``, as gguf-py's quants do.

A subclass writes three private methods on already-validated arrays; the base class validates the
fields against the type's table entry (:mod:`hqq2gguf.qtypes`) and checks the output shapes.

* ``_pack(fields) -> uint8 (n_blocks, type_size)``: exact ggml block bytes.
* ``_unpack(blocks) -> fields``: the inverse (integers as int8, scales as float16).
* ``_decode(fields) -> float32 (n_blocks, block_size)``: ggml's ``dequantize_row_*`` formula, each
  float32 operation in ggml's order, so the result is bit-identical to libggml's ``to_float``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import gguf
import numpy as np

from hqq2gguf.errors import UnsupportedError
from hqq2gguf.pack.fields import (
    Fields, FieldError, KQuantFields, LegacyFields, checked_blocks, checked_kquant, checked_legacy,
)
from hqq2gguf.qtypes import Kind, QuantSpec, spec as spec_of

_CODECS: dict[gguf.GGMLQuantizationType, type[BlockCodec]] = {}


class BlockCodec(ABC):
    """Packs, unpacks and decodes the blocks of one GGUF type."""

    spec: ClassVar[QuantSpec]

    def __init__(self) -> None:
        raise TypeError("codecs are used through their classmethods, not instantiated")

    def __init_subclass__(cls, qtype: gguf.GGMLQuantizationType, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.spec = spec_of(qtype)
        if qtype in _CODECS:
            raise TypeError(f"two codecs for {qtype.name}: {_CODECS[qtype].__name__} and {cls.__name__}")
        _CODECS[qtype] = cls

    @classmethod
    def pack(cls, fields: Fields) -> np.ndarray:
        """Fields of n blocks -> uint8 (n, type_size)."""
        out = cls._pack(cls._checked(fields))
        if out.dtype != np.uint8 or out.shape[1:] != (cls.spec.type_size,):  # a bug here, not bad input
            raise RuntimeError(f"{cls.spec.name} packer made {out.dtype} {out.shape}")
        return out

    @classmethod
    def unpack(cls, blocks: np.ndarray) -> Fields:
        """uint8 blocks (n, type_size), or any buffer of whole blocks -> fields of n blocks."""
        return cls._unpack(checked_blocks(cls.spec, blocks))

    @classmethod
    def decode(cls, fields: Fields) -> np.ndarray:
        """Fields of n blocks -> float32 (n, block_size), bit-exactly as ggml dequantizes."""
        return cls._decode(cls._checked(fields)).astype(np.float32, copy=False)

    @classmethod
    def _checked(cls, fields: Fields) -> Fields:
        if cls.spec.kind is Kind.SUPER:
            return checked_kquant(cls.spec, fields)
        return checked_legacy(cls.spec, fields)

    @classmethod
    @abstractmethod
    def _pack(cls, f: Fields) -> np.ndarray: ...

    @classmethod
    @abstractmethod
    def _unpack(cls, blocks: np.ndarray) -> Fields: ...

    @classmethod
    @abstractmethod
    def _decode(cls, f: Fields) -> np.ndarray: ...


def codec(qtype: gguf.GGMLQuantizationType | str) -> type[BlockCodec]:
    """The codec of a quantized target type; UnsupportedError for anything else (F16, IQ2_XXS, ...)."""
    s = spec_of(qtype)
    if s.qtype not in _CODECS:
        known = ", ".join(q.name for q in _CODECS)
        raise UnsupportedError(f"no block packer for {s.name} (packers exist for: {known})")
    return _CODECS[s.qtype]


def codecs() -> dict[gguf.GGMLQuantizationType, type[BlockCodec]]:
    """Every registered codec, by type."""
    return dict(_CODECS)


__all__ = ["BlockCodec", "FieldError", "KQuantFields", "LegacyFields", "codec", "codecs"]
