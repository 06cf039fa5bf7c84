"""GPT-2 style byte-level BPE vocabularies (``tokenizer.ggml.model = "gpt2"``).

Tokens come from ``transformers.AutoTokenizer`` on purpose: llama.cpp's converter uses it, and
using it too makes the pre-tokenizer hash and the normalization of added tokens identical.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import gguf

from hqq2gguf.vocab.common import (SPM_SPACE, check_vocab_ids, load_auto_tokenizer, looks_special,
                                   text_hparams)
from hqq2gguf.vocab.pretokenizer import resolve_pre_tokenizer
from hqq2gguf.vocab.special import SpecialVocab

logger = logging.getLogger(__name__)


def _added_token_entry(tokenizer: Any, token_id: int, token: str) -> tuple[str, int]:
    """(text, type) of an added token, pre-normalized as llama.cpp expects CONTROL/USER_DEFINED."""
    decoded = tokenizer.added_tokens_decoder[token_id]
    if not decoded.normalized:
        before = token
        token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False))
        if token != before:
            logger.info("%r is encoded and decoded back to %r using AutoTokenizer", before, token)
    if decoded.special or looks_special(token):
        return token, gguf.TokenType.CONTROL
    # SentencePiece-trained BPE (Gemma): user-defined spaces are stored as plain spaces
    return token.replace(SPM_SPACE, " "), gguf.TokenType.USER_DEFINED


def bpe_tokens(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    """Token texts and types for ids 0..vocab_size-1; ids the tokenizer lacks become ``[PAD<id>]``."""
    reverse_vocab = {token_id: text for text, token_id in tokenizer.vocab.items()}
    added_vocab = tokenizer.get_added_vocab()
    tokens: list[str] = []
    toktypes: list[int] = []
    for token_id in range(vocab_size):
        text = reverse_vocab.get(token_id)
        if text is None:
            tokens.append(f"[PAD{token_id}]")
            toktypes.append(gguf.TokenType.UNUSED)
            continue
        toktype = gguf.TokenType.NORMAL
        if text in added_vocab:
            text, toktype = _added_token_entry(tokenizer, token_id, text)
        tokens.append(text)
        toktypes.append(toktype)
    return tokens, toktypes


def get_vocab_base(dir_model: Path, hparams: dict[str, Any]) -> tuple[list[str], list[int], str]:
    """Tokens, token types and pre-tokenizer name of a BPE tokenizer directory."""
    tokenizer = load_auto_tokenizer(dir_model)
    vocab_size = text_hparams(hparams).get("vocab_size", len(tokenizer.vocab))
    check_vocab_ids(max(tokenizer.vocab.values()), vocab_size, dir_model / "tokenizer.json")
    tokpre = resolve_pre_tokenizer(tokenizer, dir_model / "tokenizer.json")
    tokens, toktypes = bpe_tokens(tokenizer, vocab_size)
    return tokens, toktypes, tokpre


def set_vocab_gpt2(writer: gguf.GGUFWriter, dir_model: Path, hparams: dict[str, Any]) -> None:
    """Write a byte-level BPE vocabulary with its merges (llama.cpp's ``_set_vocab_gpt2``).

    Raises UnsupportedError when llama.cpp does not recognize the pre-tokenizer.
    """
    dir_model = Path(dir_model)
    tokens, toktypes, tokpre = get_vocab_base(dir_model, hparams)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(tokpre)
    writer.add_token_list(tokens)
    writer.add_token_types(toktypes)
    SpecialVocab(dir_model, load_merges=True).add_to_gguf(writer)
