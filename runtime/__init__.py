"""hqq2gguf.runtime: run exported GGUF files with llama-cpp-python (no torch needed at run time).

Imported as ``hqq2gguf.runtime`` (the folder ``runtime/`` is mapped onto that package).
"""

# ``evaluate`` (the function) is not re-exported: it would shadow the submodule hqq2gguf.runtime.evaluate.
from hqq2gguf.runtime.evaluate import (
    EvalResult,
    PerplexityResult,
    ReferenceFile,
    kl_divergence,
    perplexity,
    reference_cache,
    write_reference,
)
from hqq2gguf.runtime.llama import eval_logits, gpu_offload_supported, load_model

__all__ = [
    "EvalResult", "PerplexityResult", "ReferenceFile", "eval_logits", "gpu_offload_supported",
    "kl_divergence", "load_model", "perplexity", "reference_cache", "write_reference",
]
