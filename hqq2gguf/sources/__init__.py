"""The input side of the pipeline: an HF directory or a GGUF file, opened as an immutable :class:`Source`.

    source = open_source(Path("SmolLM2-135M"), options)
    source.steps      # every input tensor: how to load it, and the GGUF names and shapes it becomes
    source.hparams    # the architecture's hyper-parameter keys, computed once
    source.write_metadata(writer)

Nothing is read but headers and config files until a step's ``tensors()`` is called.
"""

from __future__ import annotations

from pathlib import Path

from hqq2gguf.errors import InputError
from hqq2gguf.options import ConvertOptions
from hqq2gguf.read.gguf_in import open_gguf
from hqq2gguf.read.hf_dir import open_hf_dir
from hqq2gguf.sources.base import NameParts, Source, SourceStep, TensorOut, check_finite
from hqq2gguf.sources.gguf_file import GgufSource
from hqq2gguf.sources.hf import HfSource

__all__ = ["GgufSource", "HfSource", "NameParts", "Source", "SourceStep", "TensorOut", "check_finite",
           "open_source"]


def open_source(path: Path, options: ConvertOptions) -> Source:
    """``path`` (an HF directory or a GGUF file), validated and opened lazily, as ``options`` read it."""
    if path.is_dir():
        return HfSource.open(open_hf_dir(path, allow_pickle=options.allow_pickle), options)
    if not path.exists():
        raise InputError("no such file or directory", file=path)
    if path.suffix == ".safetensors" or path.name == "config.json":
        raise InputError("give the model directory (with config.json and the safetensors), not one file", file=path)
    return GgufSource.open(open_gguf(path, allow_requantize=options.allow_requantize), options)
