"""hqq2gguf.runtime: run, chat with and validate exported GGUF files with llama-cpp-python (no torch needed,
except to convert a Hugging Face reference for ``validate``).

Imported as ``hqq2gguf.runtime`` (the folder ``runtime/`` is mapped onto that package). Modules, in the
order data flows through them:

    llama.py            load a GGUF (CPU or GPU), logits, what the build can offload to
    generate.py         streaming generation and chat through the embedded chat template
    metrics.py          llama-perplexity's per-token maths and statistics (pure numpy)
    evaluate.py         the model loop: PPL and KL-divergence exactly as llama-perplexity
    structure.py        structural checks of a GGUF (readable, sizes, finite blocks, metadata)
    thresholds.py       pass/fail limits per quantization level
    validate.py         structure + numbers vs a reference -> ValidationReport;  report.py  its table
    chat_families.py    Jinja chat template -> family -> Ollama Go template;  ollama.py  the Modelfile
    llama_perplexity.py llama.cpp's own llama-perplexity, run as the cross-check of evaluate.py
"""

# ``evaluate`` and ``validate`` (the functions) are not re-exported: they would shadow their submodules.
from hqq2gguf.runtime.evaluate import (
    ReferenceFile,
    kl_divergence,
    perplexity,
    reference_cache,
    write_reference,
)
from hqq2gguf.runtime.generate import (
    ChatSession,
    Sampling,
    stream_chat,
    stream_completion,
)
from hqq2gguf.runtime.llama import (
    device_info,
    eval_logits,
    gpu_offload_supported,
    load_model,
)
from hqq2gguf.runtime.metrics import EvalResult, PerplexityResult
from hqq2gguf.runtime.validate import ValidateOptions, ValidationReport

__all__ = [
    "ChatSession", "EvalResult", "PerplexityResult", "ReferenceFile", "Sampling", "ValidateOptions",
    "ValidationReport", "device_info", "eval_logits", "gpu_offload_supported", "kl_divergence", "load_model",
    "perplexity", "reference_cache", "stream_chat", "stream_completion", "write_reference",
]
