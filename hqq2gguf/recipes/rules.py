"""llama.cpp's per-tensor type rules (src/llama-quant.cpp), as data.

* :func:`allows_quantization` -- which tensors are quantized at all (tensor_allows_quantization);
* :func:`category` -- the broad role of a tensor, by name (tensor_get_category);
* the ``*_RULES`` tables -- which recipes give which roles more bits (llama_tensor_get_type_impl);
* :func:`shape_fallback` -- the type used when ne0 is not a multiple of the chosen block
  (tensor_type_fallback).

Only the branches reachable from the recipes of :class:`~.recipe.Recipe` are ported, with and without an
imatrix (the IQ1/IQ2/IQ3, Q2_K_S and MXFP4_MOE branches are not).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable

import gguf

from hqq2gguf.errors import UnsupportedError
from hqq2gguf.recipes.recipe import Recipe

Q = gguf.GGMLQuantizationType
R = Recipe


class Category(Enum):
    """The broad role of a tensor (llama.cpp's tensor_category)."""

    TOKEN_EMBD = "token_embd"
    ATTENTION_Q = "attn_q"
    ATTENTION_V = "attn_v"
    ATTENTION_K = "attn_k"
    ATTENTION_QKV = "attn_qkv"
    ATTENTION_KV_B = "attn_kv_b"
    ATTENTION_OUTPUT = "attn_output"
    FFN_UP = "ffn_up"
    FFN_GATE = "ffn_gate"
    FFN_DOWN = "ffn_down"
    OUTPUT = "output"
    OTHER = "other"

    @property
    def is_attn_v(self) -> bool:
        """attn_v-like: the rules for attn_v apply (llama.cpp's category_is_attn_v)."""
        return self in (Category.ATTENTION_V, Category.ATTENTION_QKV, Category.ATTENTION_KV_B)


OUTPUT_NAME = "output.weight"
TOKEN_EMBD_NAMES = ("token_embd.weight", "per_layer_token_embd.weight")

# substring -> category, first match wins (after the exact output/token_embd names)
CATEGORY_SUBSTRINGS: tuple[tuple[str, Category], ...] = (
    ("attn_qkv.weight", Category.ATTENTION_QKV),
    ("attn_kv_b.weight", Category.ATTENTION_KV_B),
    ("attn_v.weight", Category.ATTENTION_V),
    ("attn_k.weight", Category.ATTENTION_K),
    ("attn_q.weight", Category.ATTENTION_Q),
    ("attn_output.weight", Category.ATTENTION_OUTPUT),
    ("ffn_up", Category.FFN_UP),
    ("ffn_gate", Category.FFN_GATE),
    ("ffn_down", Category.FFN_DOWN),
)

# tensors never quantized: any of these substrings in the name ...
KEEP_SUBSTRINGS: tuple[str, ...] = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel", "per_layer_model_proj",
    "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight", "indexer.q_proj.weight",
    "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight", "time_mix_w2.weight",
    "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight", "time_mix_a0.weight", "time_mix_a1.weight",
    "time_mix_a2.weight", "time_mix_g1.weight", "time_mix_g2.weight", "time_mix_decay_w1.weight",
    "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight", "attn_rel_b.weight",
    ".position_embd", "sam.pos_embd", "sam.neck.", "sam.net_", ".rel_pos", ".patch_embd", ".patch_merger",
    "a.rvq.codebook", "mm.a.code_embd",
)
# ... or exactly these names
KEEP_NAMES = frozenset({"position_embd.weight", "token_types.weight"})
# ... and for some architectures more substrings
KEEP_SUBSTRINGS_BY_ARCH: dict[str, tuple[str, ...]] = {
    "glm5-next": ("hc_", "indexer.attn_q_b", "indexer.attn_k", "indexer.proj", "indexer_compressor_gate",
                  "indexer_compressor_ape", "ssm_f_a.weight", "ssm_f_b.weight", "ssm_g_a.weight", "ssm_g_b.weight",
                  "ssm_beta.weight", "attn_kv_a_mqa.weight", "attn_k_b.weight", "attn_v_b.weight"),
}
# architecture -> substrings of tensors never quantized below Q8_0 (unless F32/F16/BF16)
Q8_FLOOR_BY_ARCH: dict[str, tuple[str, ...]] = {"glm5-next": ("attn_q_a", "attn_q_b", "nextn.eh_proj")}


def allows_quantization(name: str, n_dims: int, arch: str, *, leave_output_tensor: bool = False) -> bool:
    """tensor_allows_quantization(): 2-D/3-D ``*weight`` tensors that are not norms, gates, positions, ..."""
    if n_dims < 2 or not name.endswith("weight"):
        return False
    if leave_output_tensor and name == OUTPUT_NAME:
        return False
    if name in KEEP_NAMES:
        return False
    keep = KEEP_SUBSTRINGS + KEEP_SUBSTRINGS_BY_ARCH.get(arch, ())
    return not any(s in name for s in keep)


def category(name: str) -> Category:
    """tensor_get_category()."""
    if name == OUTPUT_NAME:
        return Category.OUTPUT
    if name in TOKEN_EMBD_NAMES:
        return Category.TOKEN_EMBD
    for substring, cat in CATEGORY_SUBSTRINGS:
        if substring in name:
            return cat
    return Category.OTHER


def use_more_bits(i_layer: int, n_layer: int) -> bool:
    """The layers that get more bits in *_M mixtures: the first and last eighth, and every third between."""
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


@dataclass(frozen=True)
class Site:
    """Where a tensor sits, for the rules: its index among tensors of its role, and the model."""

    index: int
    """i_attention_wv / the ffn_down layer."""
    count: int
    """n_attention_wv / n_layer."""
    n_gqa: int
    falcon: bool
    has_imatrix: bool = False
    """An importance matrix was given (llama.cpp's qs.has_imatrix): two ffn_down rules depend on it."""

    @property
    def more_bits(self) -> bool:
        return use_more_bits(self.index, self.count)


Rule = Callable[[Site], "gguf.GGMLQuantizationType | None"]  # None: keep the type chosen so far


def _gqa4(qtype: gguf.GGMLQuantizationType) -> Rule:
    return lambda s: qtype if s.n_gqa >= 4 else None


# attn_v, attn_qkv, attn_kv_b; Site.index counts attn_v-like tensors in llama.cpp's tensor order
ATTN_V_RULES: dict[Recipe, Rule] = {
    R.Q2_K: lambda s: Q.Q4_K if s.n_gqa >= 4 else Q.Q3_K,
    R.Q3_K_M: lambda s: Q.Q5_K if s.index < 2 else Q.Q4_K,
    R.Q3_K_L: lambda s: Q.Q5_K,
    R.IQ4_NL: _gqa4(Q.Q5_K),
    R.IQ4_XS: _gqa4(Q.Q5_K),
    R.Q4_K_M: lambda s: Q.Q6_K if s.more_bits else None,
    R.Q5_K_M: lambda s: Q.Q6_K if s.more_bits else None,
    R.Q4_K_S: lambda s: Q.Q5_K if s.index < 4 else None,
}

# ffn_down*; Site.index is the layer (the name's blk.N for MoE models, else a running count)
FFN_DOWN_RULES: dict[Recipe, Rule] = {
    R.Q2_K: lambda s: Q.Q3_K,
    R.Q3_K_M: lambda s: (Q.Q5_K if s.index < s.count // 16
                         else Q.Q4_K if not s.falcon or s.more_bits else Q.Q3_K),
    R.Q3_K_L: lambda s: Q.Q4_K if s.falcon else Q.Q5_K,
    R.Q4_K_M: lambda s: ((Q.Q6_K if s.index < s.count // 16 else Q.Q5_K if s.more_bits else Q.Q4_K) if s.falcon
                         else Q.Q6_K if s.more_bits else None),
    R.IQ4_NL: lambda s: Q.Q5_K if s.index < s.count // 8 and not s.has_imatrix else None,
    R.IQ4_XS: lambda s: Q.Q5_K if s.index < s.count // 8 and not s.has_imatrix else None,
    R.Q5_K_M: lambda s: Q.Q6_K if s.more_bits else None,
    R.Q4_K_S: lambda s: Q.Q5_K if not s.falcon and s.index < s.count // 8 else None,
    # "guard against craziness in the first few ffn_down layers", only with an imatrix
    R.Q4_0: lambda s: Q.Q4_1 if s.has_imatrix and s.index < s.count // 8 else None,
    R.Q5_0: lambda s: Q.Q5_1 if s.has_imatrix and s.index < s.count // 8 else None,
}

# attn_output: dense non-Falcon models, 8-expert models, Falcon
ATTN_OUTPUT_DENSE: dict[Recipe, gguf.GGMLQuantizationType] = {R.Q2_K: Q.Q3_K, R.Q3_K_M: Q.Q4_K, R.Q3_K_L: Q.Q5_K}
ATTN_OUTPUT_8_EXPERTS: dict[Recipe, gguf.GGMLQuantizationType] = {
    r: Q.Q5_K for r in (R.Q2_K, R.Q3_K_S, R.Q3_K_M, R.IQ4_NL, R.Q4_K_S, R.Q4_K_M, R.IQ4_XS)
}
ATTN_OUTPUT_FALCON: dict[Recipe, gguf.GGMLQuantizationType] = {R.Q3_K_L: Q.Q4_K}

# token_embd of untied models
TOKEN_EMBD_TYPES: dict[Recipe, gguf.GGMLQuantizationType] = {R.TQ1_0: Q.Q4_K, R.TQ2_0: Q.Q4_K}

# attn_v of "70B" models: these types are raised to Q5_K
SEVENTY_B_RAISE = frozenset({Q.Q3_K, Q.Q4_K})

# tensor_type_fallback(): the type used when ne0 is not a multiple of the chosen type's block
FALLBACK_TYPES: dict[gguf.GGMLQuantizationType, gguf.GGMLQuantizationType] = {
    **{t: Q.IQ4_NL for t in (Q.IQ1_S, Q.IQ1_M, Q.IQ2_XXS, Q.IQ2_XS, Q.IQ2_S, Q.IQ3_XXS, Q.IQ3_S, Q.IQ4_XS)},
    **{t: Q.Q4_0 for t in (Q.Q2_K, Q.Q3_K, Q.TQ1_0, Q.TQ2_0)},
    Q.Q4_K: Q.Q5_0,
    Q.Q5_K: Q.Q5_1,
    Q.Q6_K: Q.Q8_0,
}


def block_size(qtype: gguf.GGMLQuantizationType) -> int:
    return gguf.GGML_QUANT_SIZES[qtype][0]


def shape_fallback(qtype: gguf.GGMLQuantizationType, ne0: int, *, tensor: str = "") -> gguf.GGMLQuantizationType:
    """tensor_type_fallback(): a type whose block divides the row length ne0; F16 as the last resort."""
    block = block_size(qtype)
    if ne0 % block == 0:
        return qtype
    if qtype in FALLBACK_TYPES:
        out = FALLBACK_TYPES[qtype]
    elif block <= 32:
        out = qtype  # already a small-block type: nothing smaller to demote to, F16 below
    else:
        raise UnsupportedError(f"no type fallback is defined for {qtype.name} (row length {ne0})", tensor=tensor)
    return out if ne0 % block_size(out) == 0 else Q.F16
