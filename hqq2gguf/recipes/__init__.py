"""Per-tensor quantization types: llama.cpp's recipes (Q4_K_M, ...), ported so that hqq2gguf picks the
same type for every tensor as llama-quantize does on the same input.

    info, tensors = read_gguf_model("model-f16.gguf")
    types = plan_types(tensors, info, Recipe.Q4_K_M)          # {name: GGMLQuantizationType}
    Recipe.Q4_K_M.file_type                                     # general.file_type
"""

from hqq2gguf.recipes.model import ModelInfo, TensorInfo, read_gguf_model
from hqq2gguf.recipes.tensor_types import llama_order, plan_types
from hqq2gguf.recipes.recipe import QuantOptions, Recipe, parse_ggml_type, parse_tensor_type
from hqq2gguf.recipes.rules import Category, allows_quantization, category, shape_fallback, use_more_bits

__all__ = [
    "Category", "ModelInfo", "QuantOptions", "Recipe", "TensorInfo", "allows_quantization", "category",
    "llama_order", "parse_ggml_type", "parse_tensor_type", "plan_types", "read_gguf_model", "shape_fallback",
    "use_more_bits",
]
