"""Resolve a BPE tokenizer's ``tokenizer.ggml.pre`` exactly as llama.cpp's converter does.

llama.cpp cannot run a Hugging Face pre-tokenizer; it implements each known one natively and picks
it by name.  The name is found by encoding a fixed check text (``CHKTXT``) and hashing the string
form of the token-id list: the hash identifies both the pre-tokenizer and the vocabulary.
"""

from __future__ import annotations

import logging
from hashlib import sha256
from pathlib import Path
from typing import Any

from hqq2gguf.errors import UnsupportedError
from hqq2gguf.vocab.pretokenizer_table import CHKTXT, PRE_TOKENIZERS

logger = logging.getLogger(__name__)


def pre_tokenizer_hash(tokenizer: Any) -> str:
    """sha256 of ``str(tokenizer.encode(CHKTXT))`` (the special tokens the tokenizer adds included)."""
    token_ids = tokenizer.encode(CHKTXT)
    return sha256(str(token_ids).encode()).hexdigest()


def resolve_pre_tokenizer(tokenizer: Any, source: Path) -> str:
    """The llama.cpp pre-tokenizer name for ``tokenizer`` loaded from ``source``.

    Raises UnsupportedError, naming the tokenizer file and the hash, when llama.cpp does not know
    the pre-tokenizer: a GGUF with a guessed pre-tokenizer would tokenize text differently.
    """
    chkhsh = pre_tokenizer_hash(tokenizer)
    entry = PRE_TOKENIZERS.get(chkhsh)
    if entry is None:
        raise UnsupportedError(
            "BPE pre-tokenizer was not recognized (the same failure as llama.cpp's converter): "
            f"sha256 of the check text's token ids is {chkhsh}. Either llama.cpp does not support this "
            "tokenizer yet (see convert_hf_to_gguf_update.py) or its pre-tokenization config differs "
            "from the upstream model's",
            file=source)
    name, ref = entry
    logger.debug("tokenizer.ggml.pre = %r (hash %s, as %s)", name, chkhsh, ref)
    return name
