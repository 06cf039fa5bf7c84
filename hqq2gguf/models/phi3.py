"""Phi-3 / Phi-3.5 / Phi-4 (HF ``Phi3ForCausalLM``) -> GGUF arch ``phi3``.

Mirrors llama.cpp's ``conversion/phi.py`` (``Phi3MiniModel``):

* the fused ``qkv_proj`` and ``gate_up_proj`` stay fused: they map to ``attn_qkv`` and ``ffn_up``
  (llama.cpp's phi3 graph splits them at run time), so tensors map one to one;
* Phi-3 writes its own key list (not the common one); ``sliding_window`` is 0 when absent (Phi-4);
* long-context checkpoints (``rope_scaling`` with ``long_factor``/``short_factor``, "su"/"longrope"/"yarn")
  get ``rope_factors_long``/``rope_factors_short`` tensors and a ``rope.scaling.attn_factor`` key, which
  the converter writes while preparing tensors — hence :meth:`set_early_gguf_parameters`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import gguf
import torch

from hqq2gguf.errors import InputError, UnsupportedError
from hqq2gguf.models.base import Architecture
from hqq2gguf.models.shapes import EXPECTED_SHAPES, FF, HIDDEN, KV_ROWS, Q_ROWS

# The fused projections stay fused in GGUF (llama.cpp splits them at run time).
QKV_ROWS = f"{Q_ROWS}+2*{KV_ROWS}"
GATE_UP_ROWS = f"2*{FF}"

logger = logging.getLogger(__name__)


class Phi3Architecture(Architecture):
    hf_architectures = ("Phi3ForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.PHI3
    expected_shapes: ClassVar[Mapping[gguf.MODEL_TENSOR, tuple[str, ...]]] = {
        **EXPECTED_SHAPES, gguf.MODEL_TENSOR.ATTN_QKV: (QKV_ROWS, HIDDEN), gguf.MODEL_TENSOR.FFN_UP: (GATE_UP_ROWS, HIDDEN)}

    def __init__(self, hparams: dict[str, Any], model_dir: Path, file_type: gguf.LlamaFileType | None = None) -> None:
        super().__init__(hparams, model_dir, file_type)
        if "original_max_position_embeddings" not in self.rope_parameters:
            raise InputError("config.json lacks original_max_position_embeddings", file=model_dir / "config.json")

    def config_dims(self) -> dict[str, int]:
        dims = super().config_dims()
        if Q_ROWS in dims and KV_ROWS in dims:
            dims[QKV_ROWS] = dims[Q_ROWS] + 2 * dims[KV_ROWS]
        if FF in dims:
            dims[GATE_UP_ROWS] = 2 * dims[FF]
        return dims

    @property
    def rope_dims(self) -> int:
        n_embd = self.find_hparam(["hidden_size", "n_embd"])
        n_head = self.find_hparam(["num_attention_heads", "n_head"])
        partial = self.rope_parameters.get("partial_rotary_factor", 1.0)
        return int(partial * n_embd) // n_head

    # --- metadata ---------------------------------------------------------------------------------

    def set_gguf_parameters(self, writer: gguf.GGUFWriter) -> None:
        """Phi-3's own key list, in the converter's order."""
        find = self.find_hparam
        writer.add_context_length(find(["n_positions", "max_position_embeddings"]))
        writer.add_rope_scaling_orig_ctx_len(self.rope_parameters["original_max_position_embeddings"])
        writer.add_embedding_length(find(["hidden_size", "n_embd"]))
        writer.add_feed_forward_length(find(["intermediate_size"]))
        writer.add_block_count(self.block_count)
        writer.add_head_count(find(["num_attention_heads", "n_head"]))
        writer.add_head_count_kv(find(["num_key_value_heads", "n_head_kv"]))
        writer.add_layer_norm_rms_eps(find(["rms_norm_eps"]))
        writer.add_rope_dimension_count(self.rope_dims)
        rope = self.rope_parameters.get("full_attention", self.rope_parameters)
        if "rope_theta" not in rope:
            raise InputError("config.json lacks rope_theta", file=self.dir_model / "config.json")
        writer.add_rope_freq_base(rope["rope_theta"])
        self.write_file_type(writer)
        # 0 marks "no sliding window" (Phi-4)
        writer.add_sliding_window(self.hparams.get("sliding_window") or 0)

    def set_early_gguf_parameters(self, writer: gguf.GGUFWriter) -> None:
        if (attn_factor := self._long_rope_attn_factor()) is not None:
            writer.add_rope_scaling_attn_factors(attn_factor)

    def _long_rope_attn_factor(self) -> float | None:
        if not self.rope_parameters.get("long_factor"):
            return None
        scale = self.find_hparam(["n_positions", "max_position_embeddings"]) / self.rope_parameters[
            "original_max_position_embeddings"]
        orig_ctx = self.rope_parameters["original_max_position_embeddings"]
        rope_type = str(self.rope_parameters.get("rope_type", "")).lower()
        if rope_type in ("su", "longrope"):
            return math.sqrt(1 + math.log(scale) / math.log(orig_ctx)) if scale > 1.0 else 1.0
        if rope_type == "yarn":
            return 0.1 * math.log(scale) + 1.0 if scale > 1.0 else 1.0
        if not rope_type:
            raise InputError("rope_scaling has long_factor but no type", file=self.dir_model / "config.json")
        raise UnsupportedError(f"Phi-3 rope scaling type {rope_type!r} is not supported",
                               file=self.dir_model / "config.json")

    def set_vocab(self, writer: gguf.GGUFWriter) -> None:
        """GPT-2 BPE for Phi-4 (GPT2Tokenizer), else Phi-3's own SentencePiece variant."""
        from hqq2gguf.vocab import set_vocab_phi3

        set_vocab_phi3(writer, self.dir_model, self.hparams)

    # --- tensors ----------------------------------------------------------------------------------

    def extra_tensors(self) -> Iterable[tuple[str, Callable[[], torch.Tensor]]]:
        if self._long_rope_attn_factor() is None:
            return ()
        long_factors = self.rope_parameters.get("long_factor")
        short_factors = self.rope_parameters.get("short_factor")
        if long_factors is None or short_factors is None:
            raise InputError("rope_scaling needs both long_factor and short_factor", file=self.dir_model / "config.json")
        if len(long_factors) != len(short_factors) or len(long_factors) != self.rope_dims / 2:
            raise InputError(f"rope long and short factors must have {self.rope_dims // 2} entries each "
                             f"(got {len(long_factors)} and {len(short_factors)})", file=self.dir_model / "config.json")
        return [
            (self.format_tensor_name(gguf.MODEL_TENSOR.ROPE_FACTORS_LONG),
             lambda: torch.tensor(long_factors, dtype=torch.float32)),
            (self.format_tensor_name(gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT),
             lambda: torch.tensor(short_factors, dtype=torch.float32)),
        ]
