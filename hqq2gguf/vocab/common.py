"""Helpers shared by the vocabulary writers: JSON files, hyper-parameters, token classification.

Behaviour mirrors llama.cpp's converter (``conversion/base.py``) so that the tokenizer KV pairs we
write are identical to the ones it writes for the same Hugging Face directory.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hqq2gguf.errors import InputError, UnsupportedError

logger = logging.getLogger(__name__)

# SentencePiece's word-boundary mark; user-defined added tokens are written with plain spaces.
SPM_SPACE = "\u2581"

# Added tokens that some models fail to mark special although they are control tokens
# (deepseek-coder "<pad>", gemma "<mask>", "<2mass>", "[@BOS@]").
_SPECIAL_LOOKING = frozenset({"<pad>", "<mask>", "<2mass>", "[@BOS@]"})
_SPECIAL_BRACKETS = (("<|", "|>"), ("<\uff5c", "\uff5c>"), ("<unused", ">"))


def looks_special(token: str | bytes) -> bool:
    """True for added tokens llama.cpp treats as CONTROL even when not flagged ``special``."""
    text = token.decode("utf-8") if isinstance(token, (bytes, bytearray)) else token
    if text in _SPECIAL_LOOKING:
        return True
    return any(text.startswith(head) and text.endswith(tail) for head, tail in _SPECIAL_BRACKETS)


def read_json(path: Path) -> Any | None:
    """The parsed JSON file, or None when it does not exist."""
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"not valid JSON: {exc}", file=path) from exc


def text_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """Hyper-parameters with ``text_config`` lifted to the root, as llama.cpp's TextModel sees them."""
    text_config = hparams.get("text_config")
    if isinstance(text_config, dict):
        return {**hparams, **text_config}
    return hparams


def first_hparam(hparams: dict[str, Any], keys: tuple[str, ...]) -> Any | None:
    """The value of the first of ``keys`` present in ``hparams`` (llama.cpp's find_hparam, optional)."""
    for key in keys:
        if key in hparams:
            return hparams[key]
    return None


# Files that hold a vocabulary: without any of them there is nothing to write into tokenizer.*.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tekken.json")


def check_tokenizer_present(dir_model: Path) -> None:
    """Fail early, naming the directory, when the model comes without its tokenizer."""
    if not any((dir_model / name).is_file() for name in TOKENIZER_FILES):
        raise InputError("no tokenizer found (expected tokenizer.json or tokenizer.model): copy the tokenizer "
                         "files of the original model into the directory", file=dir_model)


def load_auto_tokenizer(dir_model: Path) -> Any:
    """The Hugging Face tokenizer of a local directory, never downloading and never running its code."""
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:  # a declared dependency; a broken install is the user's environment
        raise UnsupportedError("BPE vocabularies need the 'transformers' package") from exc
    for name in ("tokenizer.json", "tokenizer_config.json"):  # name the broken file, not AutoTokenizer
        read_json(dir_model / name)
    try:
        if _saved_by_transformers5_for_4(dir_model):
            from transformers import PreTrainedTokenizerFast

            return PreTrainedTokenizerFast.from_pretrained(dir_model, local_files_only=True)
        return AutoTokenizer.from_pretrained(dir_model, local_files_only=True, trust_remote_code=False)
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot load the tokenizer with transformers.AutoTokenizer: {first_line}",
                         file=dir_model) from exc


def _saved_by_transformers5_for_4(dir_model: Path) -> bool:
    """A tokenizer saved by transformers 5 (class ``TokenizersBackend``: tokenizer.json alone) read by transformers 4,
    which lacks that class: 4's PreTrainedTokenizerFast over the same tokenizer.json is the same tokenizer."""
    import transformers

    config = read_json(dir_model / "tokenizer_config.json")
    return (isinstance(config, dict) and config.get("tokenizer_class") == "TokenizersBackend"
            and not hasattr(transformers, "TokenizersBackend") and (dir_model / "tokenizer.json").is_file())


def check_vocab_ids(max_id: int, vocab_size: int, file: Path) -> None:
    """Every token id must fit in the model's vocabulary (``vocab_size`` rows of the embedding)."""
    if max_id >= vocab_size:
        raise InputError(f"tokenizer has token id {max_id} but the model's vocab_size is {vocab_size}",
                         file=file)
