"""Tokenizer metadata (``tokenizer.*`` KV pairs) identical to llama.cpp's converter output.

    spm.py          SentencePiece tokenizer.model            -> tokenizer.ggml.model "llama"
    llama_hf.py     byte-fallback BPE tokenizer.json         -> "llama"
    bpe.py          byte-level BPE via AutoTokenizer         -> "gpt2" (+ pretokenizer.py)
    phi3.py         Phi-3's SentencePiece variant
    special.py      special token ids, add_* flags, merges, chat template (SpecialVocab)
    families.py     which of the above each architecture uses
"""

from hqq2gguf.vocab.bpe import set_vocab_gpt2
from hqq2gguf.vocab.families import (VOCAB_WRITERS, set_vocab, set_vocab_gemma2, set_vocab_gemma3,
                                     set_vocab_llama, set_vocab_qwen2)
from hqq2gguf.vocab.llama_hf import set_vocab_llama_hf
from hqq2gguf.vocab.phi3 import set_vocab_phi3
from hqq2gguf.vocab.pretokenizer import pre_tokenizer_hash, resolve_pre_tokenizer
from hqq2gguf.vocab.special import SpecialVocab
from hqq2gguf.vocab.spm import set_vocab_sentencepiece

__all__ = [
    "VOCAB_WRITERS", "SpecialVocab", "pre_tokenizer_hash", "resolve_pre_tokenizer", "set_vocab",
    "set_vocab_gemma2", "set_vocab_gemma3", "set_vocab_gpt2", "set_vocab_llama", "set_vocab_llama_hf",
    "set_vocab_phi3", "set_vocab_qwen2", "set_vocab_sentencepiece",
]
