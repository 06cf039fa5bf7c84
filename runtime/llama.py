"""Loading a GGUF in llama-cpp-python and reading its logits."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

logger = logging.getLogger(__name__)


def gpu_offload_supported() -> bool:
    """Whether the installed llama-cpp-python build can offload layers to a GPU."""
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


def load_model(path: Path | str, *, n_ctx: int = 512, n_gpu_layers: int = 0, n_threads: int | None = None,
               logits_all: bool = True, seed: int = 1234, verbose: bool = False):
    """Load a GGUF; ``n_gpu_layers=-1`` offloads every layer when the build supports it."""
    from llama_cpp import Llama

    if n_gpu_layers and not gpu_offload_supported():
        logger.warning("this llama-cpp-python build cannot offload to a GPU: running on the CPU")
    return Llama(model_path=str(path), n_ctx=n_ctx, n_gpu_layers=n_gpu_layers, n_threads=n_threads,
                 logits_all=logits_all, seed=seed, verbose=verbose)


def eval_logits(model, tokens: Sequence[int]) -> np.ndarray:
    """Logits for every position of ``tokens`` (row i predicts token i+1), as float32 [n_tokens, n_vocab]."""
    model.reset()
    model.eval(list(tokens))
    return np.array(model.scores[: len(tokens)], dtype=np.float32)
