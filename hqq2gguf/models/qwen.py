"""Qwen2 / Qwen2.5 and Qwen3 dense models -> GGUF arch ``qwen2`` / ``qwen3``.

Mirrors llama.cpp's ``conversion/qwen.py`` (``Qwen2Model``, ``Qwen3Model``): the HF tensors map one to one
(no Q/K permutation — llama.cpp runs these with NEOX RoPE), Qwen2's Q/K/V biases and Qwen3's per-head
``q_norm``/``k_norm`` included. Besides the common keys, only a sentence-transformers pooling type is
written (embedding checkpoints).

Not handled: Qwen3 rerankers (the converter rewrites ``lm_head`` into a 2-row ``cls_out`` and adds a
chat template) — refused with a clear error.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import gguf

from hqq2gguf.errors import UnsupportedError
from hqq2gguf.models.base import Architecture
from hqq2gguf.models.hparams import write_pooling_type

logger = logging.getLogger(__name__)


class Qwen2Architecture(Architecture):
    hf_architectures = ("Qwen2ForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.QWEN2

    def set_gguf_parameters(self, writer: gguf.GGUFWriter) -> None:
        super().set_gguf_parameters(writer)
        write_pooling_type(self, writer)

    def set_vocab(self, writer: gguf.GGUFWriter) -> None:
        """SentencePiece if there is a tokenizer.model, else GPT-2 BPE (:func:`hqq2gguf.vocab.set_vocab_qwen2`)."""
        from hqq2gguf.vocab import set_vocab_qwen2

        set_vocab_qwen2(writer, self.dir_model, self.hparams)


class Qwen3Architecture(Qwen2Architecture):
    hf_architectures = ("Qwen3ForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.QWEN3

    def __init__(self, hparams: dict[str, Any], model_dir: Path, file_type: gguf.LlamaFileType | None = None) -> None:
        super().__init__(hparams, model_dir, file_type)
        if _is_qwen3_reranker(hparams, model_dir):
            raise UnsupportedError("Qwen3 reranker models are not supported for Hugging Face input; convert "
                                   "with llama.cpp and give hqq2gguf the GGUF", file=model_dir)


def _is_qwen3_reranker(hparams: dict[str, Any], model_dir: Path) -> bool:
    """The converter's reranker detection (README title, directory or model names)."""
    readme = model_dir / "README.md"
    text = readme.read_text(encoding="utf-8", errors="replace").lower() if readme.is_file() else ""
    if "# qwen3-reranker" in text or "# qwen3-vl-reranker" in text:
        return True
    hf_arch = str((hparams.get("architectures") or [""])[0]).lower()
    hints = [model_dir.name, str(hparams.get("_name_or_path", "")), str(hparams.get("model_type", "")), hf_arch]
    if any("qwen3-reranker" in hint.lower() or "qwen3-vl-reranker" in hint.lower() for hint in hints):
        return True
    return "sequenceclassification" in hf_arch
