"""Phi-3's own SentencePiece reader (llama.cpp ``Phi3MiniModel.set_vocab``).

It differs from the generic one: ``vocab_size`` from config.json only, added tokens from
``tokenizer_config.json`` AND ``tokenizer.json`` typed by their ``special`` flag alone (no
special-looking heuristic, no U+2581 replacement), and Phi-4's GPT2Tokenizer goes the BPE path.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import gguf

from hqq2gguf.errors import InputError
from hqq2gguf.vocab.bpe import set_vocab_gpt2
from hqq2gguf.vocab.common import read_json, text_hparams
from hqq2gguf.vocab.special import SpecialVocab
from hqq2gguf.vocab.spm import (
    ADDED_SCORE,
    SpmVocab,
    apply_added_tokens_json,
    fill_pieces,
    load_processor,
    write_llama_vocab,
)

logger = logging.getLogger(__name__)


def _apply_flagged_added_tokens(vocab: SpmVocab, entries: list[tuple[int, dict[str, Any]]],
                                file: Path) -> None:
    for token_id, data in entries:
        if not 0 <= token_id < len(vocab.tokens):
            raise InputError(f"added token id {token_id} is outside the vocabulary "
                             f"(vocab_size {len(vocab.tokens)})", file=file)
        text = data["content"].encode("utf-8")
        vocab.warn_replacing(token_id, text)
        toktype = gguf.TokenType.CONTROL if data.get("special") else gguf.TokenType.USER_DEFINED
        vocab.set(token_id, text, ADDED_SCORE, toktype)


def create_vocab_phi3(dir_model: Path, hparams: dict[str, Any]) -> SpmVocab:
    processor = load_processor(dir_model)
    vocab = SpmVocab.padded(text_hparams(hparams).get("vocab_size", processor.vocab_size()))
    fill_pieces(vocab, processor, stop_at_range=False, file=dir_model / "tokenizer.model")
    apply_added_tokens_json(vocab, dir_model)
    config_file = dir_model / "tokenizer_config.json"
    decoder = (read_json(config_file) or {}).get("added_tokens_decoder", {})
    _apply_flagged_added_tokens(vocab, [(int(k), v) for k, v in decoder.items()], config_file)
    tokenizer_file = dir_model / "tokenizer.json"
    added = (read_json(tokenizer_file) or {}).get("added_tokens", [])
    _apply_flagged_added_tokens(vocab, [(int(d["id"]), d) for d in added], tokenizer_file)
    return vocab


def set_vocab_phi3(writer: gguf.GGUFWriter, dir_model: Path, hparams: dict[str, Any]) -> None:
    """Phi3ForCausalLM: GPT-2 BPE for a GPT2Tokenizer (Phi-4), else Phi-3's SentencePiece reader."""
    dir_model = Path(dir_model)
    config = read_json(dir_model / "tokenizer_config.json")
    if config is not None and config.get("tokenizer_class") == "GPT2Tokenizer":
        set_vocab_gpt2(writer, dir_model, hparams)
        return
    if not (dir_model / "tokenizer.model").is_file():
        raise InputError("Phi-3 needs tokenizer.model (SentencePiece)", file=dir_model / "tokenizer.model")
    vocab = create_vocab_phi3(dir_model, hparams)
    write_llama_vocab(writer, vocab)
    SpecialVocab(dir_model, n_vocab=len(vocab.tokens)).add_to_gguf(writer)
