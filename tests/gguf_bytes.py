"""GGUF files written byte by byte, so that a test can make any one field wrong (see test_bad_gguf)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import gguf

Q = gguf.GGMLQuantizationType
V = gguf.GGUFValueType


def gguf_string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def kv(key: str | bytes, vtype: int, value: bytes) -> bytes:
    """One metadata pair; ``value`` is already encoded."""
    return gguf_string(key) + struct.pack("<I", vtype) + value


def kv_str(key: str, value: str) -> bytes:
    return kv(key, V.STRING, gguf_string(value))


def kv_u32(key: str, value: int) -> bytes:
    return kv(key, V.UINT32, struct.pack("<I", value))


def tensor_info(name: str, ne: tuple[int, ...], qtype: int, offset: int) -> bytes:
    return (gguf_string(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne)
            + struct.pack("<I", qtype) + struct.pack("<Q", offset))


@dataclass(frozen=True)
class GgufBytes:
    """A small GGUF file, field by field; the defaults make a valid one (two F32 tensors)."""

    version: int = 3
    kvs: tuple[bytes, ...] = (kv_str("general.architecture", "llama"), kv_str("general.name", "tiny"))
    infos: tuple[bytes, ...] = (tensor_info("a.weight", (32,), Q.F32, 0),
                                tensor_info("b.weight", (32, 2), Q.F32, 128))
    data: bytes = bytes(128 + 256)
    alignment: int = 32
    n_tensors: int | None = None
    n_kv: int | None = None
    tail: bytes = b""

    def encode(self) -> bytes:
        head = (b"GGUF" + struct.pack("<I", self.version)
                + struct.pack("<Q", len(self.infos) if self.n_tensors is None else self.n_tensors)
                + struct.pack("<Q", len(self.kvs) if self.n_kv is None else self.n_kv))
        body = head + b"".join(self.kvs) + b"".join(self.infos)
        return body + bytes(-len(body) % self.alignment) + self.data + self.tail

    def write(self, path: Path) -> Path:
        path.write_bytes(self.encode())
        return path


VALID = GgufBytes()
"""A valid file: general.architecture "llama", general.name "tiny", F32 tensors a.weight [32], b.weight [32, 2]."""
