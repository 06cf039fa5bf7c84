"""The HQQ solver: half-quadratic optimization of every GGUF block format, started from llama.cpp's answer.

    from hqq2gguf.optimize import SolverConfig, WeightMode, quantize_tensor, solve
    blocks = quantize_tensor(x, GGMLQuantizationType.Q4_K, config=SolverConfig(weights=WeightMode.SQUARE))
    blocks = quantize_tensor(x, GGMLQuantizationType.Q4_K, config=SolverConfig.preset("thorough"))

``quantize_tensor`` returns packed bytes; ``solve`` the fields, decoded values and per-block objectives
(the oracle the CUDA kernels are tested against); ``encode`` the packed bytes and the error sums, each row
part packed on its worker (what a file conversion uses); ``llama_cpp_encoded`` the same for llama.cpp's own
blocks, for the types the solver leaves to it (``SolverConfig.llama_cpp_types``).
"""

from hqq2gguf.optimize.config import Preset, SolverConfig, WeightMode
from hqq2gguf.optimize.solver import (
    SOLVER_TYPES, Encoded, Solution, block_objective, encode, llama_cpp_encoded, quantize_tensor, solve,
)
from hqq2gguf.optimize.weights import element_weights

__all__ = ["SOLVER_TYPES", "Encoded", "Preset", "Solution", "SolverConfig", "WeightMode", "block_objective",
           "element_weights", "encode", "llama_cpp_encoded", "quantize_tensor", "solve"]
