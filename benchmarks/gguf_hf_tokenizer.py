"""Rebuild a Hugging Face fast tokenizer from a GGUF's ``tokenizer.ggml.*`` metadata (BPE only).

transformers can rebuild a tokenizer from a GGUF, but it picks the converter by *model*
architecture, not by tokenizer: SmolLM2 (architecture ``llama``, tokenizer ``gpt2``) gets the
SentencePiece-style Llama converter — plain ByteLevel with no digit split, byte fallback, a ``▁``
decoder, ``eos = <|im_start|>`` and a copy of the whole GGUF saved as ``tokenizer.model``. llama.cpp
cannot identify that pre-tokenizer. This module instead builds the tokenizer from what the GGUF
says: ``tokenizer.ggml.model == "gpt2"`` (byte-level BPE), the pre-tokenizer named by
``tokenizer.ggml.pre`` (rebuilt from the original models' ``tokenizer.json``), the token types
(CONTROL -> special added token, USER_DEFINED -> added token, UNUSED padding -> dropped, as
llama.cpp's converter re-pads to ``vocab_size``), the special token ids, ``add_bos_token`` and the
chat template.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gguf import GGUFReader, TokenType
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

# GPT-4-style split used by Qwen2 (from Qwen2.5's tokenizer.json / transformers' Qwen2Converter).
QWEN2_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def _smollm(tok: Tokenizer) -> None:
    """SmolLM / StarCoder: every digit its own pre-token, then GPT-2 byte-level with its regex."""
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )


def _qwen2(tok: Tokenizer) -> None:
    """Qwen2: NFC, then the GPT-4-style regex split, then byte-level without its own regex."""
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


# tokenizer.ggml.pre -> how to set the normalizer and pre-tokenizer of the original tokenizer.json
PRE_TOKENIZERS: dict[str, Callable[[Tokenizer], None]] = {"smollm": _smollm, "qwen2": _qwen2}


def _field(reader: GGUFReader, key: str, default=None):
    field = reader.get_field(key)
    return default if field is None else field.contents()


def tokenizer_from_gguf(path: Path) -> PreTrainedTokenizerFast:
    """A byte-level BPE fast tokenizer equivalent to the GGUF's vocabulary."""
    reader = GGUFReader(path)
    kind = _field(reader, "tokenizer.ggml.model")
    pre = _field(reader, "tokenizer.ggml.pre")
    if kind != "gpt2":
        raise ValueError(f"{path.name}: tokenizer.ggml.model={kind!r}; only 'gpt2' (byte-level BPE) is supported")
    if pre not in PRE_TOKENIZERS:
        raise ValueError(f"{path.name}: tokenizer.ggml.pre={pre!r}; known: {sorted(PRE_TOKENIZERS)}")
    tokens: list[str] = _field(reader, "tokenizer.ggml.tokens")
    types: list[int] = _field(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ")) for m in _field(reader, "tokenizer.ggml.merges")]

    used = [i for i, t in enumerate(types) if t != TokenType.UNUSED]
    if used != list(range(len(used))):
        raise ValueError(f"{path.name}: UNUSED tokens are not all at the end of the vocabulary")
    vocab = {tokens[i]: i for i in used}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None,
                               continuing_subword_prefix="", end_of_word_suffix="",
                               fuse_unk=False, byte_fallback=False))
    PRE_TOKENIZERS[pre](tok)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    added = [AddedToken(tokens[i], special=types[i] == TokenType.CONTROL, normalized=False)
             for i in used if types[i] in (TokenType.CONTROL, TokenType.USER_DEFINED)]
    tok.add_tokens(added)  # keeps each AddedToken's own `special` flag

    specials = {}
    for name in ("bos", "eos", "unknown", "padding"):
        token_id = _field(reader, f"tokenizer.ggml.{name}_token_id")
        if token_id is not None:
            specials[{"unknown": "unk", "padding": "pad"}.get(name, name) + "_token"] = tokens[token_id]
    arch = _field(reader, "general.architecture")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        chat_template=_field(reader, "tokenizer.chat_template"),
        add_bos_token=bool(_field(reader, "tokenizer.ggml.add_bos_token", False)),
        clean_up_tokenization_spaces=False,
        model_max_length=int(_field(reader, f"{arch}.context_length")),
        **specials,
    )
