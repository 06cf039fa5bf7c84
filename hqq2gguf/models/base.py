"""What every architecture shares: hyper-parameter keys, tensor-name mapping, registration.

An :class:`Architecture` turns a Hugging Face model into GGUF metadata and GGUF-layout tensors, exactly
as llama.cpp's ``convert_hf_to_gguf.py`` does for the same family (that converter is our test oracle).

Contract for subclasses:

* ``modify_tensors`` must be a pure function of (tensor, name, bid) that also works on ``meta``
  tensors — the planner runs it on meta tensors to learn output names and shapes without reading data.
* ``set_gguf_parameters`` writes the family's keys after calling ``super()``; ``set_vocab`` writes the
  tokenizer (see :mod:`hqq2gguf.vocab`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import gguf
import torch

from hqq2gguf.errors import InputError, UnsupportedError
from hqq2gguf.models.hparams import write_common_hparams
from hqq2gguf.models.shapes import EXPECTED_SHAPES, ShapeTable, config_dims

logger = logging.getLogger(__name__)

_REGISTRY: dict[str, type[Architecture]] = {}

# Tensors llama.cpp keeps in F32 whatever the output type (besides 1-D tensors and *_norm.weight).
F32_TENSORS = (
    gguf.MODEL_TENSOR.FFN_GATE_INP,
    gguf.MODEL_TENSOR.FFN_GATE_INP_SHEXP,
    gguf.MODEL_TENSOR.POS_EMBD,
    gguf.MODEL_TENSOR.TOKEN_TYPES,
    gguf.MODEL_TENSOR.SSM_CONV1D,
)


class Architecture:
    hf_architectures: ClassVar[tuple[str, ...]] = ()
    gguf_arch: ClassVar[gguf.MODEL_ARCH]
    # What llama.cpp's loader expects each tensor's shape to be (see models/shapes.py).
    expected_shapes: ClassVar[Mapping[gguf.MODEL_TENSOR, tuple[str, ...]]] = EXPECTED_SHAPES

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in cls.__dict__.get("hf_architectures", ()):
            _REGISTRY[name] = cls

    def __init__(self, hparams: dict[str, Any], model_dir: Path, file_type: gguf.LlamaFileType | None = None) -> None:
        self.hparams = hparams
        self.dir_model = model_dir
        # general.file_type: llama.cpp writes it in the middle of a family's keys (e.g. before
        # ``llama.vocab_size``), and key order is part of the bytes, so the family writes it (write_file_type).
        self.file_type = file_type
        self.block_count: int = self.find_hparam(["n_layers", "num_hidden_layers", "n_layer", "num_layers"])
        self.tensor_map = gguf.get_tensor_name_map(self.gguf_arch, self.block_count)
        self.rope_parameters: dict[str, Any] = dict(hparams.get("rope_parameters", hparams.get("rope_scaling")) or {})
        self._mirror_rope_parameters()

    # --- hyper-parameters -------------------------------------------------------------------------

    @property
    def arch_name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.gguf_arch]

    def find_hparam(self, keys: Sequence[str], optional: bool = False) -> Any:
        for key in keys:
            if key in self.hparams:
                return self.hparams[key]
        if optional:
            return None
        raise InputError(f"config.json lacks any of {list(keys)}", file=self.dir_model / "config.json")

    def _mirror_rope_parameters(self) -> None:
        rope = self.rope_parameters
        theta = self.find_hparam(["global_rope_theta", "rope_global_theta", "rope_theta_global", "rope_theta",
                                  "rotary_emb_base"], optional=True)
        local_theta = self.find_hparam(["local_rope_theta", "rope_local_theta", "rope_theta_local", "swa_rope_theta",
                                        "rope_local_base_freq"], optional=True)
        partial = self.find_hparam(["partial_rotary_factor", "rope_pct", "rope_percent"], optional=True)
        orig_ctx = self.find_hparam(["original_max_position_embeddings"], optional=True)
        if "full_attention" in rope or "sliding_attention" in rope:
            return
        if local_theta is not None:
            rope["sliding_attention"] = {"rope_theta": local_theta}
        if "rope_theta" not in rope and theta is not None:
            rope["rope_theta"] = theta
        if "rope_type" not in rope and (rope_type := rope.get("type")) is not None:
            rope["rope_type"] = rope_type
        if "partial_rotary_factor" not in rope and partial is not None:
            rope["partial_rotary_factor"] = partial
        if "original_max_position_embeddings" not in rope and orig_ctx is not None:
            rope["original_max_position_embeddings"] = orig_ctx

    def config_dims(self) -> dict[str, int]:
        """Named dimensions of :attr:`expected_shapes`, from the hyper-parameters."""
        return config_dims(self.hparams)

    @functools.cached_property
    def _shape_table(self) -> ShapeTable:
        return ShapeTable(self.gguf_arch, self.expected_shapes, self.config_dims())

    def shape_problem(self, gguf_name: str, shape: tuple[int, ...]) -> str | None:
        """The shape config.json implies for a GGUF tensor (numpy order) when ``shape`` disagrees, else None."""
        return self._shape_table.problem(gguf_name, shape)

    def set_gguf_parameters(self, writer: gguf.GGUFWriter) -> None:
        """The keys every text model gets (llama.cpp's ``TextModel.set_gguf_parameters``)."""
        write_common_hparams(self, writer)

    def set_early_gguf_parameters(self, writer: gguf.GGUFWriter) -> None:
        """Keys llama.cpp's converter writes while it prepares tensors (Phi-3's rope attn_factor).

        The converter writes them right after ``general.architecture``, before ``general.type`` and the
        other ``general.*`` keys, so the pipeline calls this first. Most families write nothing here.
        """

    def write_file_type(self, writer: gguf.GGUFWriter) -> None:
        """``general.file_type`` at the position the family's converter writes it (if the model has one)."""
        if self.file_type is not None:
            writer.add_file_type(self.file_type)

    def set_vocab(self, writer: gguf.GGUFWriter) -> None:
        from hqq2gguf.vocab import set_vocab_gpt2

        set_vocab_gpt2(writer, self.dir_model, self.hparams)

    # --- tensors ----------------------------------------------------------------------------------

    def filter_tensor(self, name: str) -> str | None:
        """Rename an HF tensor before mapping, or return None to drop it (multimodal parts, buffers)."""
        if name.endswith((".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")):
            return None
        if name.startswith(("mlp", "vit.", "vpm.", "siglip2.", "merger.", "resampler.")) or any(
            part in name for part in ("visual.", "vision.", "audio.", "vision_", "audio_", "projector.",
                                      "multi_modal_projector", "patch_embed")):
            return None
        return name.replace("language_model.", "")

    def extra_tensors(self) -> Iterable[tuple[str, Callable[[], torch.Tensor]]]:
        """Tensors generated from hyper-parameters (e.g. rope_freqs), written before the model's own."""
        return ()

    def map_tensor_name(self, name: str, try_suffixes: Sequence[str] = (".weight", ".bias")) -> str:
        new_name = self.tensor_map.get_name(key=name, try_suffixes=try_suffixes)
        if new_name is None:
            raise UnsupportedError(f"no GGUF name for this tensor in architecture {self.arch_name!r}", tensor=name)
        return new_name

    def format_tensor_name(self, key: gguf.MODEL_TENSOR, bid: int | None = None, suffix: str = ".weight") -> str:
        name = gguf.TENSOR_NAMES[key]
        return (name.format(bid=bid) if "{bid}" in name else name) + suffix

    def match_model_tensor_name(self, name: str, key: gguf.MODEL_TENSOR, bid: int | None, suffix: str = ".weight") -> bool:
        if key not in gguf.MODEL_TENSORS[self.gguf_arch]:
            return False
        key_name = gguf.TENSOR_NAMES[key]
        if "{bid}" in key_name:
            if bid is None:
                return False
            key_name = key_name.format(bid=bid)
        elif bid is not None:
            return False
        return name == key_name + suffix

    def modify_tensors(self, data: torch.Tensor, name: str, bid: int | None) -> Iterable[tuple[str, torch.Tensor]]:
        """HF tensor -> GGUF (name, tensor) pairs in GGUF layout. Must also work on meta tensors."""
        return [(self.map_tensor_name(name), data)]

    def force_f32(self, new_name: str, bid: int | None) -> bool:
        """Whether llama.cpp keeps this output tensor in F32 regardless of the output type."""
        return any(self.match_model_tensor_name(new_name, key, bid) for key in F32_TENSORS)


def architecture_for(hparams: dict[str, Any], model_dir: Path,
                     file_type: gguf.LlamaFileType | None = None) -> Architecture:
    from hqq2gguf import models  # noqa: F401 - importing the package registers every family

    hf_arch = hparams["architectures"][0]
    cls = _REGISTRY.get(hf_arch)
    if cls is None:
        raise UnsupportedError(
            f"architecture {hf_arch!r} is not supported for Hugging Face input (supported: "
            f"{', '.join(sorted(_REGISTRY))}). Convert it to an F16/BF16/F32 GGUF with llama.cpp's "
            "convert_hf_to_gguf.py, then give that GGUF to hqq2gguf: every architecture llama.cpp knows "
            "passes through the GGUF route", file=model_dir / "config.json",
        )
    return cls(hparams, model_dir, file_type)


def supported_architectures() -> list[str]:
    from hqq2gguf import models  # noqa: F401

    return sorted(_REGISTRY)
