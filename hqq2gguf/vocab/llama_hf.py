"""SentencePiece-style vocabularies stored only as a byte-fallback BPE ``tokenizer.json``.

llama.cpp's ``_set_vocab_llama_hf`` reads them through ``gguf.LlamaHfVocab``; that class is the same
in PyPI's gguf 0.19.0 and in the gguf-py llama.cpp vendors, so it is used directly here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import gguf

from hqq2gguf.errors import InputError
from hqq2gguf.vocab.common import read_json
from hqq2gguf.vocab.special import SpecialVocab

logger = logging.getLogger(__name__)


def is_llama_hf_tokenizer(dir_model: Path) -> bool:
    """Whether ``gguf.LlamaHfVocab`` accepts ``tokenizer.json`` (where llama.cpp would not fall back).

    llama.cpp falls back to the GPT-2 BPE path when LlamaHfVocab raises FileNotFoundError (no file,
    or not a byte-fallback BPE with a Sequence decoder) or TypeError (Llama 3 style BPE, or a null
    decoder); this predicts the same outcome without relying on exceptions.
    """
    tokenizer_json = read_json(dir_model / "tokenizer.json")
    if tokenizer_json is None:
        return False
    model = tokenizer_json.get("model")
    if not isinstance(model, dict) or model.get("type") != "BPE":
        return False
    if model.get("ignore_merges", False) and not model.get("byte_fallback", True):
        return False  # Llama 3
    if not model.get("byte_fallback", False):
        return False
    decoder = tokenizer_json.get("decoder")
    return isinstance(decoder, dict) and decoder.get("type") == "Sequence"


def set_vocab_llama_hf(writer: gguf.GGUFWriter, dir_model: Path, hparams: dict[str, Any]) -> None:
    """Write a byte-fallback BPE ``tokenizer.json`` as a "llama" vocabulary (scores all -1000).

    ``hparams`` is unused (kept for a uniform signature): the size is the tokenizer's own.
    Raises InputError when ``tokenizer.json`` is not such a tokenizer (see is_llama_hf_tokenizer).
    """
    dir_model = Path(dir_model)
    if not is_llama_hf_tokenizer(dir_model):
        raise InputError("not a byte-fallback BPE tokenizer with a Sequence decoder",
                         file=dir_model / "tokenizer.json")
    vocab = gguf.LlamaHfVocab(dir_model)
    tokens: list[bytes] = []
    scores: list[float] = []
    toktypes: list[int] = []
    for text, score, toktype in vocab.all_tokens():
        tokens.append(text)
        scores.append(score)
        toktypes.append(toktype)
    if len(tokens) != vocab.vocab_size:
        raise InputError(f"tokenizer yields {len(tokens)} tokens for a vocab_size of {vocab.vocab_size}",
                         file=dir_model / "tokenizer.json")
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(toktypes)
    SpecialVocab(dir_model, n_vocab=len(tokens)).add_to_gguf(writer)
