"""Gemma 2 and Gemma 3 (text) -> GGUF arch ``gemma2`` / ``gemma3``.

Mirrors llama.cpp's ``conversion/gemma.py`` (``Gemma2Model``, ``Gemma3Model``):

* Gemma's RMSNorm multiplies by ``1 + weight``; llama.cpp's by ``weight``, so every ``*norm.weight``
  (including Gemma 3's per-head ``q_norm``/``k_norm``) gets ``+ 1`` — in the tensor's own dtype (F16 stays
  F16 for the addition, as in the converter);
* Gemma 2 writes its keys itself (no RoPE keys), with attention/final logit soft-capping and the sliding
  window; Gemma 3 writes the common keys, then overrides some with Gemma defaults;
* Gemma 3 drops out-of-vocabulary rows of ``token_embd`` (rows past the tokenizer's size);
* the text part of ``Gemma3ForConditionalGeneration`` is converted (vision tower and projector dropped).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable

import gguf
import torch

from hqq2gguf.errors import InputError, UnsupportedError
from hqq2gguf.models.base import Architecture
from hqq2gguf.models.hparams import read_json
from hqq2gguf.models.shapes import VOCAB

logger = logging.getLogger(__name__)


def _shift_norm(data: torch.Tensor, name: str) -> torch.Tensor:
    """Gemma's ``x * (1 + w)`` RMSNorm as llama.cpp's ``x * w``."""
    return data + 1 if name.endswith("norm.weight") else data


class Gemma2Architecture(Architecture):
    hf_architectures = ("Gemma2ForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.GEMMA2

    def set_gguf_parameters(self, writer: gguf.GGUFWriter) -> None:
        """Gemma 2's own key list, in the converter's order (the common keys are not written)."""
        find = self.find_hparam
        n_head = find(["num_attention_heads"])
        writer.add_context_length(find(["max_position_embeddings"]))
        writer.add_embedding_length(find(["hidden_size"]))
        writer.add_block_count(self.block_count)
        writer.add_feed_forward_length(find(["intermediate_size"]))
        writer.add_head_count(n_head)
        writer.add_head_count_kv(self.hparams.get("num_key_value_heads", n_head))
        writer.add_layer_norm_rms_eps(find(["rms_norm_eps"]))
        writer.add_key_length(find(["head_dim"]))
        writer.add_value_length(find(["head_dim"]))
        self.write_file_type(writer)
        writer.add_attn_logit_softcapping(self._required_float("attn_logit_softcapping"))
        writer.add_final_logit_softcapping(self._required_float("final_logit_softcapping"))
        writer.add_sliding_window(find(["sliding_window"]))

    def _required_float(self, key: str) -> float:
        value = self.find_hparam([key])
        if value is None:
            raise InputError(f"config.json has {key}: null; llama.cpp needs a number", file=self.dir_model / "config.json")
        return float(value)

    def set_vocab(self, writer: gguf.GGUFWriter) -> None:
        from hqq2gguf.vocab import set_vocab_gemma2

        if not (self.dir_model / "tokenizer.model").is_file():
            raise InputError("Gemma 2 needs its SentencePiece tokenizer.model", file=self.dir_model)
        set_vocab_gemma2(writer, self.dir_model, self.hparams)

    def filter_tensor(self, name: str) -> str | None:
        if name == "lm_head.weight":  # tied to the embeddings; some exporters (AutoAWQ) store a copy
            return None
        return super().filter_tensor(name)

    def modify_tensors(self, data: torch.Tensor, name: str, bid: int | None) -> Iterable[tuple[str, torch.Tensor]]:
        return super().modify_tensors(_shift_norm(data, name), name, bid)


class Gemma3Architecture(Architecture):
    hf_architectures = ("Gemma3ForCausalLM", "Gemma3ForConditionalGeneration")
    gguf_arch = gguf.MODEL_ARCH.GEMMA3

    def set_gguf_parameters(self, writer: gguf.GGUFWriter) -> None:
        """Common keys, then Gemma 3 defaults; re-added keys keep their first position (GGUFWriter)."""
        super().set_gguf_parameters(writer)
        hparams = self.hparams
        if hparams.get("attn_logit_softcapping") is not None:
            raise UnsupportedError("Gemma 3 with attn_logit_softcapping is not supported (llama.cpp refuses it)",
                                   file=self.dir_model / "config.json")
        writer.add_context_length(hparams.get("max_position_embeddings", 131072))
        writer.add_head_count(hparams.get("num_attention_heads", 8))
        writer.add_layer_norm_rms_eps(hparams.get("rms_norm_eps", 1e-6))
        writer.add_key_length(hparams.get("head_dim", 256))
        writer.add_value_length(hparams.get("head_dim", 256))
        rope = self.rope_parameters.get("full_attention", self.rope_parameters)
        writer.add_rope_freq_base(rope.get("rope_theta", 1_000_000.0))  # for the global layers
        if final_softcap := hparams.get("final_logit_softcapping"):
            writer.add_final_logit_softcapping(final_softcap)
        if hparams.get("sliding_window_pattern") != 1:
            writer.add_sliding_window(self.find_hparam(["sliding_window"]))
        writer.add_head_count_kv(hparams.get("num_key_value_heads", 4))

    def set_vocab(self, writer: gguf.GGUFWriter) -> None:
        """SentencePiece without space prefix, else GPT-2 BPE (:func:`hqq2gguf.vocab.set_vocab_gemma3`)."""
        from hqq2gguf.vocab import set_vocab_gemma3

        set_vocab_gemma3(writer, self.dir_model, self.hparams)

    def modify_tensors(self, data: torch.Tensor, name: str, bid: int | None) -> Iterable[tuple[str, torch.Tensor]]:
        if "embed_tokens.weight" in name:
            data = data[:self._real_vocab_size]
        return super().modify_tensors(_shift_norm(data, name), name, bid)

    def config_dims(self) -> dict[str, int]:
        """token_embd keeps the tokenizer's rows only (see modify_tensors)."""
        return {**super().config_dims(), VOCAB: self._real_vocab_size}

    @functools.cached_property
    def _real_vocab_size(self) -> int:
        """How many tokens the GGUF vocabulary will have (the converter's ``n_vocab_real``)."""
        if (self.dir_model / "tokenizer.model").is_file():
            vocab_size = self.find_hparam(["vocab_size_per_layer_input", "vocab_size"], optional=True)
            return int(vocab_size or _sentencepiece_size(self.dir_model / "tokenizer.model"))
        tokenizer_file = self.dir_model / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise InputError("Gemma 3 needs tokenizer.model or tokenizer.json", file=self.dir_model)
        tokenizer = read_json(tokenizer_file)
        try:
            return len(tokenizer["model"]["vocab"]) + len(tokenizer["added_tokens"])
        except (KeyError, TypeError) as e:
            raise InputError(f"tokenizer.json lacks model.vocab or added_tokens ({e})", file=tokenizer_file) from e


def _sentencepiece_size(path: object) -> int:
    from sentencepiece import SentencePieceProcessor

    processor = SentencePieceProcessor()
    processor.LoadFromFile(str(path))
    return int(processor.vocab_size())
