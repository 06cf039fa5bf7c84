"""The quantization recipes (llama.cpp's ``llama_ftype``) and the llama-quantize options that bend them.

A recipe names a mixture: a default block type, plus the per-tensor rules of :mod:`.rules` that give
some tensors more (or fewer) bits. Each recipe is written to ``general.file_type`` as its
:class:`gguf.LlamaFileType`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

import gguf

from hqq2gguf.errors import OptionError

Q = gguf.GGMLQuantizationType
FT = gguf.LlamaFileType


class Recipe(str, Enum):
    """A llama-quantize type name (``llama-quantize model.gguf out.gguf Q4_K_M``)."""

    Q8_0 = "Q8_0"
    """Q8_0 everywhere (output.weight stays Q8_0)."""
    Q6_K = "Q6_K"
    """Q6_K everywhere."""
    Q5_K_M = "Q5_K_M"
    """Q5_K; attn_v and ffn_down Q6_K in the use_more_bits layers; output Q6_K."""
    Q5_K_S = "Q5_K_S"
    """Q5_K everywhere but output (Q6_K)."""
    Q4_K_M = "Q4_K_M"
    """Q4_K; attn_v and ffn_down Q6_K in the use_more_bits layers; output Q6_K."""
    Q4_K_S = "Q4_K_S"
    """Q4_K; attn_v of the first 4 attention layers and ffn_down of the first n/8 layers Q5_K."""
    Q3_K_L = "Q3_K_L"
    """Q3_K; attn_v, attn_output and ffn_down Q5_K."""
    Q3_K_M = "Q3_K_M"
    """Q3_K; attn_v Q5_K (first 2) / Q4_K, ffn_down Q5_K (first n/16) / Q4_K, attn_output Q4_K."""
    Q3_K_S = "Q3_K_S"
    """Q3_K everywhere but output (Q6_K)."""
    Q2_K = "Q2_K"
    """Q2_K; attn_v Q4_K (GQA >= 4) or Q3_K, ffn_down and attn_output Q3_K."""
    Q4_0 = "Q4_0"
    """Legacy Q4_0 (block 32); output Q6_K."""
    Q4_1 = "Q4_1"
    """Legacy Q4_1 (block 32); output Q6_K."""
    Q5_0 = "Q5_0"
    """Legacy Q5_0 (block 32); output Q6_K."""
    Q5_1 = "Q5_1"
    """Legacy Q5_1 (block 32); output Q6_K."""
    IQ4_NL = "IQ4_NL"
    """Non-linear 4-bit (block 32); attn_v Q5_K with GQA >= 4, ffn_down Q5_K in the first n/8 layers."""
    IQ4_XS = "IQ4_XS"
    """Non-linear 4-bit (block 256); same extra bits as IQ4_NL."""
    TQ1_0 = "TQ1_0"
    """Ternary 1.69 bpw; token_embd Q4_K, output Q6_K."""
    TQ2_0 = "TQ2_0"
    """Ternary 2.06 bpw; token_embd Q4_K, output Q6_K."""

    @property
    def file_type(self) -> gguf.LlamaFileType:
        """The ``general.file_type`` value llama-quantize writes for this recipe."""
        return RECIPE_TABLE[self][0]

    @property
    def default_type(self) -> gguf.GGMLQuantizationType:
        """The block type of every quantizable tensor no rule singles out."""
        return RECIPE_TABLE[self][1]

    @property
    def group_size(self) -> int:
        """Weights sharing one scale in the default type's blocks (the HQQ group size the format fixes)."""
        from hqq2gguf.qtypes import spec

        s = spec(self.default_type)
        return s.sub_block or s.block_size

    def check_group_size(self, group_size: int) -> None:
        """``--group-size``: the GGUF block fixes the group; accept the recipe's own, explain any other."""
        if group_size != self.group_size:
            raise OptionError(f"--group-size {group_size}: {self.value} stores one scale per {self.group_size} "
                              f"weights in its {self.default_type.name} blocks, and a GGUF block type cannot "
                              f"hold any other group size (drop the option, or give {self.group_size})")

    @classmethod
    def parse(cls, name: str) -> "Recipe":
        """A recipe from a llama-quantize type name, case-insensitive, aliases Q3_K/Q4_K/Q5_K included."""
        key = name.strip().upper()
        key = RECIPE_ALIASES.get(key, key)
        try:
            return cls(key)
        except ValueError:
            known = ", ".join(r.value for r in cls)
            raise OptionError(f"unknown quantization type {name!r} (known: {known})") from None


# recipe -> (general.file_type, default tensor type): llama_ftype_get_default_type()
RECIPE_TABLE: dict[Recipe, tuple[gguf.LlamaFileType, gguf.GGMLQuantizationType]] = {
    Recipe.Q8_0: (FT.MOSTLY_Q8_0, Q.Q8_0),
    Recipe.Q6_K: (FT.MOSTLY_Q6_K, Q.Q6_K),
    Recipe.Q5_K_M: (FT.MOSTLY_Q5_K_M, Q.Q5_K),
    Recipe.Q5_K_S: (FT.MOSTLY_Q5_K_S, Q.Q5_K),
    Recipe.Q4_K_M: (FT.MOSTLY_Q4_K_M, Q.Q4_K),
    Recipe.Q4_K_S: (FT.MOSTLY_Q4_K_S, Q.Q4_K),
    Recipe.Q3_K_L: (FT.MOSTLY_Q3_K_L, Q.Q3_K),
    Recipe.Q3_K_M: (FT.MOSTLY_Q3_K_M, Q.Q3_K),
    Recipe.Q3_K_S: (FT.MOSTLY_Q3_K_S, Q.Q3_K),
    Recipe.Q2_K: (FT.MOSTLY_Q2_K, Q.Q2_K),
    Recipe.Q4_0: (FT.MOSTLY_Q4_0, Q.Q4_0),
    Recipe.Q4_1: (FT.MOSTLY_Q4_1, Q.Q4_1),
    Recipe.Q5_0: (FT.MOSTLY_Q5_0, Q.Q5_0),
    Recipe.Q5_1: (FT.MOSTLY_Q5_1, Q.Q5_1),
    Recipe.IQ4_NL: (FT.MOSTLY_IQ4_NL, Q.IQ4_NL),
    Recipe.IQ4_XS: (FT.MOSTLY_IQ4_XS, Q.IQ4_XS),
    Recipe.TQ1_0: (FT.MOSTLY_TQ1_0, Q.TQ1_0),
    Recipe.TQ2_0: (FT.MOSTLY_TQ2_0, Q.TQ2_0),
}

# llama-quantize's short names (tools/quantize/quantize.cpp QUANT_OPTIONS)
RECIPE_ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}

# ggml types that are not block-quantized (ggml_is_quantized() is false)
UNQUANTIZED_TYPES = frozenset({Q.F32, Q.F16, Q.BF16, Q.F64, Q.I8, Q.I16, Q.I32, Q.I64})


def is_quantized(qtype: gguf.GGMLQuantizationType) -> bool:
    """ggml_is_quantized(): a block type (Q*, IQ*, TQ*, MXFP4, ...)."""
    return qtype not in UNQUANTIZED_TYPES


def parse_ggml_type(name: str) -> gguf.GGMLQuantizationType:
    """A ggml type from its name, case-insensitive ("q4_K", "Q8_0", "f16"), as llama-quantize parses it."""
    try:
        return Q[name.strip().upper()]
    except KeyError:
        raise OptionError(f"invalid ggml type {name!r}") from None


def parse_tensor_type(spec: str) -> tuple[str, gguf.GGMLQuantizationType]:
    """``--tensor-type REGEX=TYPE``: the pattern (lower-cased, as llama-quantize does) and the type."""
    pattern, sep, type_name = spec.partition("=")
    if not sep:
        raise OptionError(f"malformed tensor type {spec!r}: expected REGEX=TYPE")
    if not pattern:
        raise OptionError(f"missing tensor name in tensor type {spec!r}")
    if not type_name:
        raise OptionError(f"missing quantization type in tensor type {spec!r}")
    return pattern.lower(), parse_ggml_type(type_name)


@dataclass(frozen=True)
class QuantOptions:
    """The llama-quantize switches that change per-tensor types (defaults: none given)."""

    output_tensor_type: gguf.GGMLQuantizationType | None = None
    """``--output-tensor-type``: output.weight's type, taken as is (no shape fallback)."""
    token_embedding_type: gguf.GGMLQuantizationType | None = None
    """``--token-embedding-type``: token_embd.weight's type, taken as is (no shape fallback)."""
    tensor_types: tuple[tuple[str, gguf.GGMLQuantizationType], ...] = ()
    """``--tensor-type REGEX=TYPE``, in order: the first pattern found in the name wins, then the shape
    fallback applies. Patterns are Python ``re`` (llama.cpp uses ECMAScript std::regex: the same for
    ordinary patterns)."""
    pure: bool = False
    """``--pure``: the default type everywhere (output and token_embd included), no mixture rules."""
    leave_output_tensor: bool = False
    """``--leave-output-tensor``: output.weight keeps its input type."""
    has_imatrix: bool = False
    """``--imatrix`` was given: llama.cpp then skips the IQ4_NL/IQ4_XS ffn_down bump to Q5_K and raises the
    first eighth of Q4_0/Q5_0 ffn_down layers to Q4_1/Q5_1."""

    def __post_init__(self) -> None:
        for pattern, qtype in self.tensor_types:
            if not isinstance(qtype, Q):
                raise OptionError(f"tensor type for {pattern!r} is not a GGMLQuantizationType: {qtype!r}")
            try:
                re.compile(pattern)
            except re.error as e:
                raise OptionError(f"invalid tensor type pattern {pattern!r}: {e}") from None
        for what, qtype in (("output tensor", self.output_tensor_type), ("token embedding", self.token_embedding_type)):
            if qtype is not None and not isinstance(qtype, Q):
                raise OptionError(f"{what} type is not a GGMLQuantizationType: {qtype!r}")

    @classmethod
    def from_cli(cls, *, tensor_type: list[str] | tuple[str, ...] = (), output_tensor_type: str | None = None,
                 token_embedding_type: str | None = None, pure: bool = False,
                 leave_output_tensor: bool = False) -> "QuantOptions":
        """Options from llama-quantize style strings."""
        return cls(
            output_tensor_type=parse_ggml_type(output_tensor_type) if output_tensor_type else None,
            token_embedding_type=parse_ggml_type(token_embedding_type) if token_embedding_type else None,
            tensor_types=tuple(parse_tensor_type(s) for s in tensor_type),
            pure=pure,
            leave_output_tensor=leave_output_tensor,
        )
