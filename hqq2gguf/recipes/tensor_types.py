"""The type of every tensor under a recipe: a port of llama.cpp's llama_tensor_get_type().

The choice for one tensor depends on the others (how many attn_v tensors came before it, whether
output.weight exists), so tensors are visited in llama.cpp's order: by layer (``blk.N.``; others
first), then by name. That is also the tensor order of llama-quantize's output file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import gguf

from hqq2gguf.errors import InputError, OptionError
from hqq2gguf.recipes.model import ModelInfo, TensorInfo, tensor_infos
from hqq2gguf.recipes.recipe import QuantOptions, Recipe, is_quantized
from hqq2gguf.recipes.rules import (
    ATTN_OUTPUT_8_EXPERTS, ATTN_OUTPUT_DENSE, ATTN_OUTPUT_FALCON, ATTN_V_RULES, FFN_DOWN_RULES, OUTPUT_NAME,
    Q8_FLOOR_BY_ARCH, SEVENTY_B_RAISE, TOKEN_EMBD_TYPES, Category, Site, allows_quantization, block_size,
    category, shape_fallback,
)

Q = gguf.GGMLQuantizationType
_LAYER = re.compile(r"blk\.\s*([+-]?\d+)")  # sscanf(name, "blk.%d.")
_FULL_PRECISION = frozenset({Q.F32, Q.F16, Q.BF16})


def layer_of(name: str) -> int | None:
    """The layer number of a ``blk.N.*`` tensor, None for the others."""
    m = _LAYER.match(name)
    return int(m.group(1)) if m else None


def llama_order(names: Sequence[str]) -> list[str]:
    """llama.cpp's tensor order (llama_model_loader::weight_name_comparer): layer (non-layer first), name."""
    def key(name: str) -> tuple[int, bytes]:
        layer = layer_of(name)
        return (-1 if layer is None else layer, name.encode())
    return sorted(names, key=key)


@dataclass
class _State:
    """quantize_state_impl: the counters the rules read and advance, in tensor order."""

    model: ModelInfo
    recipe: Recipe
    options: QuantOptions
    n_attention_wv: int
    tied_embeddings: bool
    patterns: list[tuple[re.Pattern[str], gguf.GGMLQuantizationType]]
    i_attention_wv: int = 0
    i_ffn_down: int = 0
    i_ffn_gate: int = 0
    i_ffn_up: int = 0

    @property
    def falcon(self) -> bool:
        return self.model.arch == "falcon"

    def layer_site(self, counter: int, name: str) -> Site:
        """layer_info(): the running count, or for MoE models the layer in the name."""
        n_layer = self.model.n_layer
        layer = counter
        if max(1, self.model.n_expert) > 1:
            parsed = layer_of(name)
            if parsed is None:
                raise InputError("cannot determine the layer of this tensor", tensor=name)
            if not 0 <= parsed < n_layer:
                raise InputError(f"bad layer {parsed}: must be in [0, {n_layer})", tensor=name)
            layer = parsed
        return Site(layer, n_layer, self.model.n_gqa, self.falcon, self.options.has_imatrix)


def plan_types(tensors: Sequence[TensorInfo | tuple], model: ModelInfo, recipe: Recipe,
               options: QuantOptions = QuantOptions()) -> dict[str, gguf.GGMLQuantizationType]:
    """The type llama-quantize gives every tensor, in llama-quantize's output order.

    ``tensors``: the input GGUF's tensors (TensorInfo, or ``(name, numpy_shape[, input_type])``).
    Tensors that are not quantized keep their input type.
    """
    infos = tensor_infos(tensors)
    by_name = {t.name: t for t in infos}
    if len(by_name) != len(infos):
        raise InputError("duplicate tensor names")
    state = _State(
        model=model, recipe=recipe, options=options,
        n_attention_wv=sum(category(t.name).is_attn_v for t in infos),
        tied_embeddings=OUTPUT_NAME not in by_name,
        patterns=[(re.compile(p), q) for p, q in options.tensor_types],
    )
    plan = {}
    for name in llama_order(list(by_name)):
        t = by_name[name]
        qtype = _tensor_type(state, t)
        if t.shape and t.ne0 % block_size(qtype) != 0:
            raise OptionError(f"type {qtype.name} needs rows of a multiple of {block_size(qtype)} elements, "
                              f"this tensor's are {t.ne0}", tensor=name)
        plan[name] = qtype
    return plan


def _tensor_type(state: _State, t: TensorInfo) -> gguf.GGMLQuantizationType:
    """llama_tensor_get_type(): options first, then manual patterns or the recipe rules, then the shape."""
    options = state.options
    if not allows_quantization(t.name, t.n_dims, state.model.arch, leave_output_tensor=options.leave_output_tensor):
        return t.type
    cat = category(t.name)
    if options.token_embedding_type is not None and cat is Category.TOKEN_EMBD:
        # per_layer_token_embd follows --token-embedding-type unless a --tensor-type names it
        named = t.name == "per_layer_token_embd.weight" and _manual_type(state, t.name) is not None
        if not named:
            return options.token_embedding_type
    if options.output_tensor_type is not None and cat is Category.OUTPUT:
        return options.output_tensor_type
    qtype = state.recipe.default_type
    if not is_quantized(qtype):
        return qtype
    manual = _manual_type(state, t.name)
    if manual is not None:
        qtype = manual
    elif not options.pure:
        qtype = _recipe_type(state, t, cat, qtype)
    return shape_fallback(qtype, t.ne0, tensor=t.name)


def _manual_type(state: _State, name: str) -> gguf.GGMLQuantizationType | None:
    """--tensor-type: the first pattern found anywhere in the name (std::regex_search) wins."""
    for pattern, qtype in state.patterns:
        if pattern.search(name):
            return qtype
    return None


def _recipe_type(state: _State, t: TensorInfo, cat: Category,
                 qtype: gguf.GGMLQuantizationType) -> gguf.GGMLQuantizationType:
    """llama_tensor_get_type_impl(): the mixture rules of the recipe."""
    model, recipe = state.model, state.recipe
    if any(s in t.name for s in Q8_FLOOR_BY_ARCH.get(model.arch, ())) and qtype not in _FULL_PRECISION:
        return Q.Q8_0
    if cat is Category.OUTPUT or (state.tied_embeddings and cat is Category.TOKEN_EMBD):
        return _output_type(state, t, qtype)
    if cat is Category.TOKEN_EMBD:
        if state.options.token_embedding_type is not None:  # unreachable: handled by the caller
            return state.options.token_embedding_type
        return TOKEN_EMBD_TYPES.get(recipe, qtype)
    if cat.is_attn_v:
        return _attn_v_type(state, qtype)
    if cat is Category.ATTENTION_K:
        return Q.Q8_0 if model.n_expert == 8 else qtype
    if cat is Category.FFN_DOWN:
        site = state.layer_site(state.i_ffn_down, t.name)
        state.i_ffn_down += 1
        rule = FFN_DOWN_RULES.get(recipe)
        return (rule(site) if rule else None) or qtype
    if cat is Category.ATTENTION_OUTPUT:
        if state.falcon:
            table = ATTN_OUTPUT_FALCON
        else:
            table = ATTN_OUTPUT_8_EXPERTS if model.n_expert == 8 else ATTN_OUTPUT_DENSE
        return table.get(recipe, qtype)
    if cat is Category.FFN_GATE:  # only IQ3_XS changes these; the layer check still applies
        state.layer_site(state.i_ffn_gate, t.name)
        state.i_ffn_gate += 1
    elif cat is Category.FFN_UP:
        state.layer_site(state.i_ffn_up, t.name)
        state.i_ffn_up += 1
    return qtype


def _output_type(state: _State, t: TensorInfo, qtype: gguf.GGMLQuantizationType) -> gguf.GGMLQuantizationType:
    """output.weight, and token_embd.weight when the model has no output.weight (tied embeddings)."""
    if state.options.output_tensor_type is not None:
        return state.options.output_tensor_type
    if state.falcon or t.ne0 % block_size(qtype) != 0:
        return Q.Q8_0
    return qtype if qtype == Q.Q8_0 else Q.Q6_K


def _attn_v_type(state: _State, qtype: gguf.GGMLQuantizationType) -> gguf.GGMLQuantizationType:
    """attn_v, attn_qkv, attn_kv_b: the recipe rule, then the 70B and 8-expert bumps."""
    model = state.model
    site = Site(state.i_attention_wv, state.n_attention_wv, model.n_gqa, state.falcon)
    rule = ATTN_V_RULES.get(state.recipe)
    qtype = (rule(site) if rule else None) or qtype
    if model.is_70b and qtype in SEVENTY_B_RAISE:
        qtype = Q.Q5_K
    if model.n_expert == 8:
        qtype = Q.Q8_0
    state.i_attention_wv += 1
    return qtype
