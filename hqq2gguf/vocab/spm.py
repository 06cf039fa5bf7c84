"""SentencePiece vocabularies from ``tokenizer.model`` (``tokenizer.ggml.model = "llama"``).

Pieces, scores and types come from the sentencepiece library; added tokens from
``added_tokens.json`` and ``tokenizer_config.json`` (``added_tokens_decoder``) override them,
as in llama.cpp's ``_create_vocab_sentencepiece``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from hqq2gguf.errors import InputError
from hqq2gguf.vocab.common import (
    SPM_SPACE,
    first_hparam,
    looks_special,
    read_json,
    text_hparams,
)
from hqq2gguf.vocab.special import SpecialVocab

logger = logging.getLogger(__name__)

UNUSED_SCORE = -10000.0  # ids the model has but tokenizer.model lacks
ADDED_SCORE = -1000.0  # added tokens


@dataclass
class SpmVocab:
    """Token texts (bytes), scores and types, one per id of the model's vocabulary."""

    tokens: list[bytes]
    scores: list[float]
    toktypes: list[int]

    @classmethod
    def padded(cls, size: int) -> SpmVocab:
        return cls([f"[PAD{i}]".encode() for i in range(size)], [UNUSED_SCORE] * size,
                   [gguf.TokenType.UNUSED] * size)

    def set(self, token_id: int, text: bytes, score: float, toktype: int) -> None:
        self.tokens[token_id], self.scores[token_id], self.toktypes[token_id] = text, score, toktype

    def warn_replacing(self, token_id: int, text: bytes) -> None:
        if self.toktypes[token_id] != gguf.TokenType.UNUSED and self.tokens[token_id] != text:
            logger.warning("replacing token %d: %r -> %r", token_id,
                           self.tokens[token_id].decode("utf-8"), text.decode("utf-8"))


def load_processor(dir_model: Path) -> Any:
    """The SentencePieceProcessor of ``dir_model/tokenizer.model`` (FileNotFoundError if absent)."""
    from sentencepiece import SentencePieceProcessor

    path = dir_model / "tokenizer.model"
    if not path.is_file():
        raise FileNotFoundError(f"File not found: {path}")
    processor = SentencePieceProcessor()
    try:
        processor.LoadFromFile(str(path))
    except (OSError, RuntimeError) as exc:
        raise InputError(f"not a SentencePiece model: {exc}", file=path) from exc
    return processor


def piece_type(processor: Any, token_id: int) -> int:
    if processor.IsUnknown(token_id):
        return gguf.TokenType.UNKNOWN
    if processor.IsControl(token_id):
        return gguf.TokenType.CONTROL
    if processor.IsUnused(token_id):
        return gguf.TokenType.UNUSED
    if processor.IsByte(token_id):
        return gguf.TokenType.BYTE
    return gguf.TokenType.NORMAL


def fill_pieces(vocab: SpmVocab, processor: Any, *, stop_at_range: bool, file: Path | None = None) -> None:
    """Copy the model's pieces; past the vocabulary's end stop (llama) or fail (Phi-3's IndexError).

    Stopping is llama.cpp's converter behaviour: the pieces past ``vocab_size`` have no embedding row.
    """
    size = len(vocab.tokens)
    for token_id in range(processor.vocab_size()):
        if token_id >= size:
            if not stop_at_range:
                raise InputError(f"tokenizer has {processor.vocab_size()} pieces but the model's vocab_size "
                                 f"is {size}", file=file)
            logger.warning("%s: ignore tokens from %d: id is out of range, max=%d (config.json vocab_size %d)",
                           file or "tokenizer.model", token_id, size - 1, size)
            break
        vocab.set(token_id, processor.IdToPiece(token_id).encode("utf-8"),
                  processor.GetScore(token_id), piece_type(processor, token_id))


def apply_added_tokens_json(vocab: SpmVocab, dir_model: Path) -> None:
    """``added_tokens.json`` ({text: id}) entries become USER_DEFINED tokens."""
    added = read_json(dir_model / "added_tokens.json") or {}
    for text, token_id in added.items():
        if token_id >= len(vocab.tokens):
            logger.warning("ignore token %d: id is out of range, max=%d", token_id, len(vocab.tokens) - 1)
            continue
        vocab.set(token_id, text.encode("utf-8"), ADDED_SCORE, gguf.TokenType.USER_DEFINED)


def _apply_added_tokens_decoder(vocab: SpmVocab, dir_model: Path) -> None:
    config = read_json(dir_model / "tokenizer_config.json") or {}
    for key, data in config.get("added_tokens_decoder", {}).items():
        token_id = int(key)
        text: str = data["content"]
        if token_id >= len(vocab.tokens):
            logger.warning("ignore token %d: id is out of range, max=%d", token_id, len(vocab.tokens) - 1)
            continue
        vocab.warn_replacing(token_id, text.encode("utf-8"))
        if data.get("special") or looks_special(text):
            toktype = gguf.TokenType.CONTROL
        else:
            text = text.replace(SPM_SPACE, " ")  # user-defined spaces are stored as plain spaces
            toktype = gguf.TokenType.USER_DEFINED
        vocab.set(token_id, text.encode("utf-8"), ADDED_SCORE, toktype)


def create_vocab_sentencepiece(dir_model: Path, hparams: dict[str, Any]) -> SpmVocab:
    """llama.cpp's ``_create_vocab_sentencepiece`` (FileNotFoundError without tokenizer.model)."""
    processor = load_processor(dir_model)
    keys = ("vocab_size_per_layer_input", "vocab_size")  # gemma3n first
    vocab_size = first_hparam(text_hparams(hparams), keys) or processor.vocab_size()
    vocab = SpmVocab.padded(vocab_size)
    fill_pieces(vocab, processor, stop_at_range=True, file=dir_model / "tokenizer.model")
    apply_added_tokens_json(vocab, dir_model)
    _apply_added_tokens_decoder(vocab, dir_model)
    return vocab


def write_llama_vocab(writer: gguf.GGUFWriter, vocab: SpmVocab) -> None:
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.toktypes)


def set_vocab_sentencepiece(writer: gguf.GGUFWriter, dir_model: Path, hparams: dict[str, Any]) -> None:
    """Write a SentencePiece vocabulary (llama.cpp's ``_set_vocab_sentencepiece``).

    Raises FileNotFoundError when ``tokenizer.model`` is absent, so that family code can fall back
    to another vocabulary kind exactly where llama.cpp does.
    """
    dir_model = Path(dir_model)
    vocab = create_vocab_sentencepiece(dir_model, hparams)
    write_llama_vocab(writer, vocab)
    SpecialVocab(dir_model, n_vocab=len(vocab.tokens)).add_to_gguf(writer)
