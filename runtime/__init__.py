"""hqq2gguf.runtime: run exported GGUF files with llama-cpp-python (no torch needed at run time).

Imported as ``hqq2gguf.runtime`` (the folder ``runtime/`` is mapped onto that package).
"""

from hqq2gguf.runtime.llama import eval_logits, gpu_offload_supported, load_model

__all__ = ["eval_logits", "gpu_offload_supported", "load_model"]
