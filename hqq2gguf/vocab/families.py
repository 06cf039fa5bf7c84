"""Per-architecture vocabulary choice, as each llama.cpp model class's ``set_vocab`` makes it.

| HF architecture                        | llama.cpp class | vocabulary written                             |
|----------------------------------------|-----------------|------------------------------------------------|
| LlamaForCausalLM, MistralForCausalLM   | LlamaModel      | tokenizer.model -> SentencePiece; else         |
|                                        |                 | byte-fallback tokenizer.json -> llama_hf;      |
|                                        |                 | else GPT-2 BPE. add_space_prefix from          |
|                                        |                 | tokenizer_config add_prefix_space; CodeLlama   |
|                                        |                 | (vocab 32016) EOT 32010; vocab 49152 (Granite, |
|                                        |                 | SmolLM) add_bos_token = False                  |
| Qwen2ForCausalLM, Qwen3ForCausalLM     | Qwen2/Qwen3Model| tokenizer.model -> SentencePiece; else GPT-2   |
| Gemma2ForCausalLM                      | Gemma2Model     | SentencePiece, add_space_prefix = False        |
| Gemma3ForCausalLM                      | Gemma3Model     | tokenizer.model -> SentencePiece +             |
|                                        |                 | add_space_prefix = False; else GPT-2 BPE       |
| Phi3ForCausalLM                        | Phi3MiniModel   | see phi3.py                                    |
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import gguf

from hqq2gguf.errors import UnsupportedError
from hqq2gguf.vocab.bpe import set_vocab_gpt2
from hqq2gguf.vocab.common import read_json, text_hparams
from hqq2gguf.vocab.llama_hf import is_llama_hf_tokenizer, set_vocab_llama_hf
from hqq2gguf.vocab.phi3 import set_vocab_phi3
from hqq2gguf.vocab.special import SpecialVocab
from hqq2gguf.vocab.spm import set_vocab_sentencepiece

logger = logging.getLogger(__name__)

VocabWriter = Callable[[gguf.GGUFWriter, Path, dict[str, Any]], None]

CODELLAMA_VOCAB_SIZE = 32016
CODELLAMA_EOT_ID = 32010
GRANITE_SMALL_VOCAB_SIZE = 49152  # also SmolLM/SmolLM2: llama.cpp writes add_bos_token = False


def _has_spm(dir_model: Path) -> bool:
    return (dir_model / "tokenizer.model").is_file()


def _set_vocab_spm_or(fallback: VocabWriter, writer: gguf.GGUFWriter, dir_model: Path,
                      hparams: dict[str, Any]) -> None:
    if _has_spm(dir_model):
        set_vocab_sentencepiece(writer, dir_model, hparams)
    else:
        fallback(writer, dir_model, hparams)


def _check_llama_supported(dir_model: Path, hparams: dict[str, Any],
                           tokenizer_config: dict[str, Any] | None) -> None:
    if "draft_vocab_size" in hparams and hparams.get("num_hidden_layers") == 1:
        raise UnsupportedError("EAGLE-3 draft models are not supported", file=dir_model / "config.json")
    if (dir_model / "tekken.json").is_file() and not (dir_model / "tokenizer.json").is_file():
        raise UnsupportedError("Mistral tekken.json tokenizers (without tokenizer.json) are not supported",
                               file=dir_model / "tekken.json")
    if (tokenizer_config or {}).get("tokenizer_class") == "HybridDNATokenizer":
        raise UnsupportedError("HybridDNATokenizer is not supported", file=dir_model / "tokenizer_config.json")


def set_vocab_llama(writer: gguf.GGUFWriter, dir_model: Path, hparams: dict[str, Any]) -> None:
    """LlamaForCausalLM / MistralForCausalLM (llama.cpp ``LlamaModel.set_vocab``)."""
    dir_model = Path(dir_model)
    hparams = text_hparams(hparams)
    tokenizer_config = read_json(dir_model / "tokenizer_config.json")
    _check_llama_supported(dir_model, hparams, tokenizer_config)
    if tokenizer_config is not None and (prefix := tokenizer_config.get("add_prefix_space")) is not None:
        writer.add_add_space_prefix(prefix)
    if _has_spm(dir_model):
        set_vocab_sentencepiece(writer, dir_model, hparams)
    elif is_llama_hf_tokenizer(dir_model):
        set_vocab_llama_hf(writer, dir_model, hparams)
    else:
        set_vocab_gpt2(writer, dir_model, hparams)  # Llama 3, SmolLM, ...
    vocab_size = hparams.get("vocab_size", 32000)
    if vocab_size == CODELLAMA_VOCAB_SIZE:
        special = SpecialVocab(dir_model, load_merges=False,
                               special_token_types=["prefix", "suffix", "middle", "eot"])
        for typ, token_id in (("prefix", 32007), ("suffix", 32008), ("middle", 32009),
                              ("eot", CODELLAMA_EOT_ID)):
            special._set_special_token(typ, token_id)
        special.add_to_gguf(writer)
    if vocab_size == GRANITE_SMALL_VOCAB_SIZE:
        writer.add_add_bos_token(False)


def set_vocab_qwen2(writer: gguf.GGUFWriter, dir_model: Path, hparams: dict[str, Any]) -> None:
    """Qwen2ForCausalLM / Qwen3ForCausalLM: SentencePiece if tokenizer.model, else GPT-2 BPE."""
    _set_vocab_spm_or(set_vocab_gpt2, writer, Path(dir_model), hparams)


def set_vocab_gemma2(writer: gguf.GGUFWriter, dir_model: Path, hparams: dict[str, Any]) -> None:
    """Gemma2ForCausalLM: SentencePiece (FileNotFoundError without tokenizer.model), no space prefix."""
    set_vocab_sentencepiece(writer, Path(dir_model), hparams)
    writer.add_add_space_prefix(False)


def set_vocab_gemma3(writer: gguf.GGUFWriter, dir_model: Path, hparams: dict[str, Any]) -> None:
    """Gemma3ForCausalLM: as Gemma 2 when tokenizer.model exists, else GPT-2 BPE."""
    dir_model = Path(dir_model)
    if _has_spm(dir_model):
        set_vocab_gemma2(writer, dir_model, hparams)
    else:
        set_vocab_gpt2(writer, dir_model, hparams)


VOCAB_WRITERS: dict[str, VocabWriter] = {
    "LlamaForCausalLM": set_vocab_llama,
    "MistralForCausalLM": set_vocab_llama,
    "Qwen2ForCausalLM": set_vocab_qwen2,
    "Qwen3ForCausalLM": set_vocab_qwen2,
    "Gemma2ForCausalLM": set_vocab_gemma2,
    "Gemma3ForCausalLM": set_vocab_gemma3,
    "Phi3ForCausalLM": set_vocab_phi3,
}


def set_vocab(writer: gguf.GGUFWriter, architecture: str, dir_model: Path, hparams: dict[str, Any]) -> None:
    """Write the tokenizer KV pairs llama.cpp's converter writes for ``architecture``."""
    vocab_writer = VOCAB_WRITERS.get(architecture)
    if vocab_writer is None:
        raise UnsupportedError(f"no vocabulary writer for architecture {architecture!r} "
                               f"(supported: {', '.join(sorted(VOCAB_WRITERS))})", file=Path(dir_model))
    vocab_writer(writer, Path(dir_model), hparams)
