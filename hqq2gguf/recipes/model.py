"""What the recipe rules need to know about a model: its tensors (GGUF names, shapes, types) and a few
hyper-parameters, read from GGUF metadata the way llama.cpp's model loader reads them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import gguf

from hqq2gguf.errors import InputError

Q = gguf.GGMLQuantizationType

# architecture -> n_layer that makes llama.cpp call the model "70B" (LLM_TYPE_70B, src/models/*.cpp).
# llama only counts when it is not MoE-8 and uses GQA (n_head != n_head_kv; equal heads make it 65B).
SEVENTY_B_LAYERS: dict[str, int] = {"llama": 80, "qwen2": 80, "deci": 80, "olmo": 80, "jais2": 68}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as the quantizer sees it: GGUF name, shape in numpy order (last axis = ggml ne0), type."""

    name: str
    shape: tuple[int, ...]
    type: gguf.GGMLQuantizationType = Q.F16

    @property
    def ne0(self) -> int:
        """The row length: the blocked, contiguous axis."""
        return self.shape[-1] if self.shape else 1

    @property
    def n_dims(self) -> int:
        """ggml_n_dims(): trailing (ggml-order) axes of size 1 do not count, at least 1."""
        ne = tuple(reversed(self.shape))
        return max([i + 1 for i, n in enumerate(ne) if n != 1], default=1)

    @property
    def n_rows(self) -> int:
        return math.prod(self.shape[:-1])


@dataclass(frozen=True)
class ModelInfo:
    """The hyper-parameters llama_tensor_get_type() looks at."""

    arch: str
    """general.architecture ("llama", "qwen2", ...)."""
    n_layer: int
    """{arch}.block_count (n_layer_all: next-token-prediction layers included)."""
    n_head: int
    """{arch}.attention.head_count of layer 0."""
    n_head_kv: int
    """{arch}.attention.head_count_kv of layer 0 (defaults to n_head)."""
    n_expert: int = 0
    """{arch}.expert_count (0 for dense models)."""
    n_layer_nextn: int = 0
    """{arch}.nextn_predict_layers: not counted when llama.cpp sizes the model."""

    def __post_init__(self) -> None:
        if self.n_layer <= 0:
            raise InputError(f"block_count must be positive, got {self.n_layer}")
        if self.n_head < 0 or self.n_head_kv < 0 or self.n_expert < 0:
            raise InputError(f"negative head or expert count in {self}")

    @property
    def n_gqa(self) -> int:
        """Query heads per KV head (0 without KV heads), as llama_hparams::n_gqa()."""
        return self.n_head // self.n_head_kv if self.n_head_kv else 0

    @property
    def is_70b(self) -> bool:
        """llama.cpp's LLM_TYPE_70B, which gives attn_v of Q3_K/Q4_K mixtures Q5_K."""
        n_layer = self.n_layer - self.n_layer_nextn
        if SEVENTY_B_LAYERS.get(self.arch) != n_layer:
            return False
        if self.arch == "llama":
            return self.n_expert != 8 and self.n_head != self.n_head_kv
        return True

    @classmethod
    def from_metadata(cls, kv: Mapping[str, Any]) -> "ModelInfo":
        """From GGUF key/values (``{"general.architecture": "llama", "llama.block_count": 30, ...}``)."""
        arch = kv.get("general.architecture")
        if not isinstance(arch, str):
            raise InputError("GGUF metadata has no general.architecture")
        block_count = kv.get(f"{arch}.block_count")
        if block_count is None:
            raise InputError(f"GGUF metadata has no {arch}.block_count")
        n_head = _first(kv.get(f"{arch}.attention.head_count", 0))
        n_head_kv = kv.get(f"{arch}.attention.head_count_kv")
        return cls(
            arch=arch,
            n_layer=int(block_count),
            n_head=n_head,
            n_head_kv=n_head if n_head_kv is None else _first(n_head_kv),
            n_expert=int(kv.get(f"{arch}.expert_count", 0)),
            n_layer_nextn=int(kv.get(f"{arch}.nextn_predict_layers", 0)),
        )


def _first(value: Any) -> int:
    """A per-layer hyper-parameter may be one number or an array: llama.cpp's n_head() reads layer 0."""
    if isinstance(value, (list, tuple)):
        return int(value[0]) if value else 0
    return int(value)


def read_gguf_model(path: str | Path) -> tuple[ModelInfo, list[TensorInfo]]:
    """The model info and tensor list of a GGUF file (header only; no tensor data is read)."""
    from hqq2gguf.read.gguf_reader import GgufReader

    try:
        reader = GgufReader(path)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read GGUF: {e}", file=path) from e
    kv = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    tensors = [TensorInfo(t.name, tuple(int(n) for n in reversed(t.shape)), Q(t.tensor_type)) for t in reader.tensors]
    return ModelInfo.from_metadata(kv), tensors


def tensor_infos(tensors: Sequence[TensorInfo | tuple]) -> list[TensorInfo]:
    """Accept TensorInfo or (name, shape[, type]) tuples."""
    out = []
    for t in tensors:
        if isinstance(t, TensorInfo):
            out.append(t)
        else:
            name, shape, *rest = t
            out.append(TensorInfo(name, tuple(int(n) for n in shape), *rest))
    return out
