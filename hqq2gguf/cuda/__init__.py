"""The HQQ solver on a GPU: fused CUDA kernels (``cuda/*.cu``) compiled at run time with NVRTC through CuPy.

    from hqq2gguf.cuda import Device, encode_cuda, resolve_device, solve_cuda
    if resolve_device("auto") is Device.CUDA:
        encoded = encode_cuda(x, GGMLQuantizationType.Q4_K, config=SolverConfig())  # == optimize.encode(...)
        blocks = solve_cuda(x, GGMLQuantizationType.Q4_K, config=SolverConfig())   # == solve(...).packed()

Optional: ``pip install hqq2gguf[cuda]`` (CuPy, which brings NVRTC; no nvcc needed). Nothing here imports
CuPy until a kernel is needed, so the package works without it. Status: compiled and emulated on the CPU,
not yet run on a GPU (cuda/README.md).
"""

# Submodules import each other by full module path (``import hqq2gguf.cuda.loader as loader``), never
# through this package, so imports point one way: loader <- device, solve_cuda <- this package.
from hqq2gguf.cuda.device import cuda_unusable_reason, resolve_device
from hqq2gguf.options import Device  # lives with the other options; re-exported here for compatibility
from hqq2gguf.cuda.solve_cuda import CUDA_TYPES, CudaLauncher, encode_cuda, solve_cuda, solve_cuda_solution

__all__ = ["CUDA_TYPES", "CudaLauncher", "Device", "cuda_unusable_reason", "encode_cuda", "resolve_device", "solve_cuda",
           "solve_cuda_solution"]
