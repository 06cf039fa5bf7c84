"""The hyper-parameter keys every text model gets, as llama.cpp's converter writes them.

``general.file_type`` depends on the output type, not the model: the architecture is built with it and
writes it where llama.cpp's converter does (last here). The functions take any :class:`ModelHparams` (an
:class:`~hqq2gguf.models.base.Architecture`), so this module does not import the one that imports it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Protocol, Sequence

import gguf

from hqq2gguf.errors import InputError, UnsupportedError

logger = logging.getLogger(__name__)


class ModelHparams(Protocol):
    """What the common keys are computed from: an architecture's parsed config.json."""

    hparams: dict[str, Any]
    dir_model: Path
    block_count: int
    rope_parameters: dict[str, Any]

    @property
    def arch_name(self) -> str: ...

    def find_hparam(self, keys: Sequence[str], optional: bool = False) -> Any: ...

    def write_file_type(self, writer: gguf.GGUFWriter) -> None: ...


def write_common_hparams(arch: ModelHparams, writer: gguf.GGUFWriter) -> None:
    find = arch.find_hparam
    writer.add_block_count(arch.block_count)
    if (n_ctx := find(["max_position_embeddings", "n_ctx", "n_positions", "max_length", "max_sequence_length",
                       "model_max_length"], optional=True)) is not None:
        writer.add_context_length(n_ctx)
    if (n_embd := find(["hidden_size", "n_embd", "dim"], optional=True)) is not None:
        writer.add_embedding_length(n_embd)
    if (n_ff := find(["prefix_dense_intermediate_size", "dense_intermediate_size", "intermediate_size", "n_inner",
                      "hidden_dim"], optional=True)) is not None:
        writer.add_feed_forward_length(n_ff)
    if (n_head := find(["num_attention_heads", "n_head", "n_heads"], optional=True)) is not None:
        writer.add_head_count(n_head)
    if (n_head_kv := find(["num_key_value_heads", "n_kv_heads"], optional=True)) is not None:
        writer.add_head_count_kv(n_head_kv)
    if arch.hparams.get("is_causal") is False:
        writer.add_causal_attention(False)
    _write_rope(arch, writer)
    if (rms_eps := find(["rms_norm_eps", "norm_eps"], optional=True)) is not None:
        writer.add_layer_norm_rms_eps(rms_eps)
    if (norm_eps := find(["layer_norm_eps", "layer_norm_epsilon", "norm_epsilon"], optional=True)) is not None:
        writer.add_layer_norm_eps(norm_eps)
    if (n_experts := find(["num_local_experts", "num_experts", "n_routed_experts"], optional=True)) is not None:
        writer.add_expert_count(n_experts)
    if (n_used := find(["num_experts_per_tok", "num_experts_per_token", "top_k_experts"], optional=True)) is not None:
        writer.add_expert_used_count(n_used)
    if (head_dim := arch.hparams.get("head_dim")) is not None:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    arch.write_file_type(writer)


def _write_rope(arch: ModelHparams, writer: gguf.GGUFWriter) -> None:
    rope = arch.rope_parameters.get("full_attention", arch.rope_parameters)
    if (rope_type := rope.get("rope_type")) is not None:
        factor = rope.get("factor")
        if rope_type == "linear" and factor is not None:
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(factor)
        elif rope_type == "yarn" and factor is not None:
            writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            writer.add_rope_scaling_factor(factor)
            writer.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
            if (ext := rope.get("extrapolation_factor")) is not None:
                writer.add_rope_scaling_yarn_ext_factor(ext)
            if (attn := rope.get("attention_factor", rope.get("attn_factor"))) is not None:
                writer.add_rope_scaling_yarn_attn_factor(attn)
            if (beta_fast := rope.get("beta_fast")) is not None:
                writer.add_rope_scaling_yarn_beta_fast(beta_fast)
            if (beta_slow := rope.get("beta_slow")) is not None:
                writer.add_rope_scaling_yarn_beta_slow(beta_slow)
        elif rope_type in ("su", "longrope"):
            writer.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)
        elif rope_type in ("default", "dynamic") or rope_type.lower() == "llama3":
            pass  # llama3 is written as a rope_freqs tensor by the architecture; default needs no key
        else:
            logger.warning("unknown RoPE scaling type %r in config.json: written without scaling keys, "
                           "as llama.cpp's converter does", rope_type)
    if (theta := rope.get("rope_theta")) is not None:
        writer.add_rope_freq_base(theta)
    if (local_theta := arch.rope_parameters.get("sliding_attention", {}).get("rope_theta")) is not None:
        writer.add_rope_freq_base_swa(local_theta)


_POOLING_MODES = {"mean": gguf.PoolingType.MEAN, "cls": gguf.PoolingType.CLS, "lasttoken": gguf.PoolingType.LAST}


def write_pooling_type(arch: ModelHparams, writer: gguf.GGUFWriter) -> None:
    """Pooling of sentence-transformers embedding models (llama.cpp's ``_try_set_pooling_type``)."""
    pooling_dir = None
    modules_file = arch.dir_model / "modules.json"
    if modules_file.is_file():
        for module in read_json(modules_file):
            if str(module.get("type", "")).endswith("Pooling"):
                pooling_dir = module["path"]
                break
    if pooling_dir is not None:
        pooling_file = arch.dir_model / pooling_dir / "config.json"
        pooling = read_json(pooling_file)
        if pooling.get("pooling_mode_mean_tokens"):
            writer.add_pooling_type(gguf.PoolingType.MEAN)
        elif pooling.get("pooling_mode_cls_token"):
            writer.add_pooling_type(gguf.PoolingType.CLS)
        elif pooling.get("pooling_mode_lasttoken"):
            writer.add_pooling_type(gguf.PoolingType.LAST)
        elif (mode := pooling.get("pooling_mode")) in _POOLING_MODES:
            writer.add_pooling_type(_POOLING_MODES[mode])
        else:
            raise UnsupportedError("only mean, cls and last-token pooling are supported", file=pooling_file)
    if (classifier_pooling := arch.hparams.get("classifier_pooling")) is not None:
        if classifier_pooling not in ("cls", "mean"):
            raise UnsupportedError(f"unsupported classifier_pooling {classifier_pooling!r}",
                                   file=arch.dir_model / "config.json")
        # key spelled out: gguf 0.19.0 has no add_classifier_pooling_type (llama.cpp's vendored gguf-py does)
        writer.add_uint32(f"{arch.arch_name}.classifier.pooling_type", _POOLING_MODES[classifier_pooling].value)


def read_json(path: Path) -> Any:
    """A JSON file of the model directory, with errors that name the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"invalid JSON: {e}", file=path) from e

