"""Llama and Mistral (HF ``LlamaForCausalLM`` / ``MistralForCausalLM``) -> GGUF arch ``llama``.

Mirrors llama.cpp's ``conversion/llama.py`` (``LlamaModel``) for Hugging Face checkpoints:

* Q and K projection rows are permuted from HF's half-split RoPE layout back to the interleaved layout
  llama.cpp's ``rope`` expects (``permute_qk``);
* Llama 3.1+ ``rope_scaling.rope_type == "llama3"`` is written as a ``rope_freqs`` tensor of per-frequency
  divisors, computed exactly as the converter does (float32, element by element);
* ``llama.vocab_size`` and ``llama.rope.dimension_count`` follow the common keys.

Not handled (refused with a clear error): EAGLE-3 draft models, Mistral ``tekken.json``-only tokenizers and
HybridDNA tokenizers, Mixtral-style experts.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Iterable

import gguf
import torch

from hqq2gguf.errors import InputError, UnsupportedError
from hqq2gguf.models.base import Architecture

logger = logging.getLogger(__name__)


def permute_qk(weights: torch.Tensor, n_head: int, n_head_kv: int | None) -> torch.Tensor:
    """Undo HF's RoPE row order for a Q or K projection (weight or bias), per head.

    HF stores each head's rows as [first halves of all pairs | second halves]; llama.cpp wants the pairs
    interleaved. Works on ``meta`` tensors (pure reshapes).
    """
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    rows = weights.shape[0]
    if rows % (2 * n_head) != 0:
        raise InputError(f"{rows} rows cannot be split into {n_head} RoPE heads")
    return (weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


def llama3_rope_factors(rope: dict[str, Any], head_dim: int) -> torch.Tensor:
    """The ``rope_freqs`` divisors of Llama 3.1 RoPE scaling, bit-exact with llama.cpp's converter.

    Each step is a float32 0-d tensor operation in the converter's order, so that rounding is identical.
    """
    base = rope.get("rope_theta", 10000.0)
    freqs = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    factor = rope.get("factor", 8.0)
    low_freq_factor = rope.get("low_freq_factor", 1.0)
    high_freq_factor = rope.get("high_freq_factor", 4.0)
    old_context_len = rope.get("original_max_position_embeddings", 8192)
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor

    factors: list[Any] = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            factors.append(1)
        elif wavelen > low_freq_wavelen:
            factors.append(factor)
        else:
            smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor([float(f) for f in factors], dtype=torch.float32)


class LlamaArchitecture(Architecture):
    hf_architectures = ("LlamaForCausalLM", "MistralForCausalLM")
    gguf_arch = gguf.MODEL_ARCH.LLAMA
    undo_permute = True

    def __init__(self, hparams: dict[str, Any], model_dir: Any, file_type: gguf.LlamaFileType | None = None) -> None:
        super().__init__(hparams, model_dir, file_type)
        if "draft_vocab_size" in hparams and hparams.get("num_hidden_layers") == 1:
            raise UnsupportedError("EAGLE-3 draft models are not supported", file=model_dir / "config.json")

    @property
    def head_dim(self) -> int:
        if (head_dim := self.hparams.get("head_dim")) is None:
            head_dim = self.find_hparam(["hidden_size"]) // self.find_hparam(["num_attention_heads"])
        return int(head_dim)

    # --- metadata ---------------------------------------------------------------------------------

    def set_gguf_parameters(self, writer: gguf.GGUFWriter) -> None:
        super().set_gguf_parameters(writer)
        writer.add_vocab_size(self.find_hparam(["vocab_size"]))
        writer.add_rope_dimension_count(self.head_dim)

    def set_vocab(self, writer: gguf.GGUFWriter) -> None:
        """SentencePiece, else Llama HF tokenizer.json, else GPT-2 BPE (see :func:`hqq2gguf.vocab.set_vocab_llama`)."""
        from hqq2gguf.vocab import set_vocab_llama

        set_vocab_llama(writer, self.dir_model, self.hparams)

    # --- tensors ----------------------------------------------------------------------------------

    def filter_tensor(self, name: str) -> str | None:
        return super().filter_tensor(name.replace("text_model.", ""))  # SmolVLM's text tower

    def extra_tensors(self) -> Iterable[tuple[str, Callable[[], torch.Tensor]]]:
        rope = self.rope_parameters.get("full_attention", self.rope_parameters)
        if rope and str(rope.get("rope_type", "")).lower() == "llama3":
            head_dim = self.head_dim
            name = self.format_tensor_name(gguf.MODEL_TENSOR.ROPE_FREQS)
            return [(name, lambda: llama3_rope_factors(rope, head_dim))]
        return ()

    def modify_tensors(self, data: torch.Tensor, name: str, bid: int | None) -> Iterable[tuple[str, torch.Tensor]]:
        if "block_sparse_moe.experts" in name:
            raise UnsupportedError("Mixtral-style experts are not supported for Hugging Face input", tensor=name)
        if self.undo_permute:
            n_head = self.find_hparam(["n_heads", "num_attention_heads"])
            if name.endswith(("q_proj.weight", "q_proj.bias")):
                data = permute_qk(data, n_head, n_head)
            elif name.endswith(("k_proj.weight", "k_proj.bias")):
                data = permute_qk(data, n_head, self.find_hparam(["n_kv_heads", "num_key_value_heads"]))
        return super().modify_tensors(data, name, bid)

