"""The shape llama.cpp's loader expects for each GGUF tensor, known from config.json alone.

llama.cpp refuses a file whose tensor disagrees with its hyper-parameters ("tensor 'blk.0.attn_q.weight'
has wrong shape"). Checking the same rule while planning turns a checkpoint that disagrees with its
config.json (a wrong hidden size, an embedding with more rows than ``vocab_size``) into one line naming the
file, the tensor and both shapes, before anything is written.

Shapes are in numpy order, (rows, columns): HF's ``[out_features, in_features]``, ggml's ``ne`` reversed.
Each entry names config dimensions (keys of :func:`config_dims`), so that the message can say where an
expected number comes from. A ``.bias`` has the first entry only. Tensors not listed are not checked.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import gguf

T = gguf.MODEL_TENSOR
HIDDEN = "hidden_size"
VOCAB = "vocab_size"
FF = "intermediate_size"
HEAD_DIM = "head_dim"
Q_ROWS = "num_attention_heads*head_dim"
KV_ROWS = "num_key_value_heads*head_dim"

EXPECTED_SHAPES: dict[gguf.MODEL_TENSOR, tuple[str, ...]] = {
    T.TOKEN_EMBD: (VOCAB, HIDDEN),
    T.OUTPUT: (VOCAB, HIDDEN),
    T.OUTPUT_NORM: (HIDDEN,),
    T.ATTN_NORM: (HIDDEN,),
    T.ATTN_Q: (Q_ROWS, HIDDEN),
    T.ATTN_K: (KV_ROWS, HIDDEN),
    T.ATTN_V: (KV_ROWS, HIDDEN),
    T.ATTN_OUT: (HIDDEN, Q_ROWS),
    T.ATTN_Q_NORM: (HEAD_DIM,),
    T.ATTN_K_NORM: (HEAD_DIM,),
    T.ATTN_POST_NORM: (HIDDEN,),
    T.FFN_NORM: (HIDDEN,),
    T.FFN_POST_NORM: (HIDDEN,),
    T.FFN_GATE: (FF, HIDDEN),
    T.FFN_UP: (FF, HIDDEN),
    T.FFN_DOWN: (HIDDEN, FF),
}

_BLOCK = re.compile(r"^blk\.\d+\.")


def _first_int(hparams: Mapping[str, Any], keys: tuple[str, ...]) -> int | None:
    """The first of ``keys`` present; None unless it is a positive int (per-layer lists are not checked)."""
    for key in keys:
        if key in hparams:
            value = hparams[key]
            return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
    return None


def config_dims(hparams: Mapping[str, Any]) -> dict[str, int]:
    """The dimensions of :data:`EXPECTED_SHAPES`, as llama.cpp derives them; unknown ones are left out."""
    hidden = _first_int(hparams, ("hidden_size", "n_embd", "dim"))
    n_head = _first_int(hparams, ("num_attention_heads", "n_head", "n_heads"))
    n_head_kv = _first_int(hparams, ("num_key_value_heads", "n_kv_heads", "n_head_kv")) or n_head
    head_dim = _first_int(hparams, ("head_dim",))
    if head_dim is None and hidden and n_head and hidden % n_head == 0:
        head_dim = hidden // n_head
    dims = {HIDDEN: hidden, VOCAB: _first_int(hparams, ("vocab_size",)), HEAD_DIM: head_dim,
            FF: _first_int(hparams, ("intermediate_size", "n_inner", "hidden_dim")),
            Q_ROWS: n_head * head_dim if n_head and head_dim else None,
            KV_ROWS: n_head_kv * head_dim if n_head_kv and head_dim else None}
    return {k: v for k, v in dims.items() if v is not None}


class ShapeTable:
    """Expected shapes of one architecture's GGUF tensors, looked up by GGUF tensor name."""

    def __init__(self, arch: gguf.MODEL_ARCH, expected: Mapping[gguf.MODEL_TENSOR, tuple[str, ...]],
                 dims: Mapping[str, int]) -> None:
        self.dims = dict(dims)
        self._by_name = {gguf.TENSOR_NAMES[key].replace("{bid}.", ""): entry
                         for key, entry in expected.items() if key in gguf.MODEL_TENSORS[arch]}

    def problem(self, gguf_name: str, shape: tuple[int, ...]) -> str | None:
        """The shape config.json implies, spelled out (``[hidden_size=64, ...]``) when ``shape`` disagrees with it;
        None when it agrees or nothing is known about the tensor."""
        base, _, suffix = _BLOCK.sub("blk.", gguf_name).rpartition(".")
        entry = self._by_name.get(base)
        if entry is None or suffix not in ("weight", "bias"):
            return None
        if suffix == "bias":
            entry = entry[:1]
        if any(name not in self.dims for name in entry):
            return None
        expected = tuple(self.dims[name] for name in entry)
        if expected == tuple(shape):
            return None
        return "[" + ", ".join(f"{name}={self.dims[name]}" for name in entry) + "]"
