"""Loading a GGUF in llama-cpp-python, reading its logits, and saying plainly what the build can offload to.

A llama-cpp-python wheel is built for one set of backends: the default (what ``pip install`` compiles
without ``CMAKE_ARGS``) is CPU-only, and asking it for ``n_gpu_layers`` silently runs on the CPU. Every
entry point here therefore checks :func:`device_info` first and either says so in a warning (run,
chat) or refuses (``validate --compare-devices``, which would otherwise compare the CPU with itself).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hqq2gguf.errors import DeviceError, InputError

logger = logging.getLogger(__name__)

CUDA_INSTALL_HINT = ('CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir '
                     '--no-binary llama-cpp-python llama-cpp-python')
GPU_BACKENDS = ("CUDA", "Metal", "Vulkan", "ROCm", "HIP", "SYCL", "MUSA", "CANN", "OpenCL")


@dataclass(frozen=True)
class DeviceInfo:
    """What the installed llama-cpp-python can run on."""

    version: str
    gpu_offload: bool
    """``llama_supports_gpu_offload()``: a GPU backend is compiled in AND it found a device."""
    gpu_backends: tuple[str, ...]
    """GPU backends compiled into the build (from ``llama_print_system_info``), with or without a device."""

    def describe(self, *, hint: bool = False) -> str:
        """One plain sentence for the terminal; ``hint`` adds what to do when there is no GPU."""
        if self.gpu_offload:
            return f"GPU offload available (llama-cpp-python {self.version}, {', '.join(self.gpu_backends) or 'GPU'})"
        if self.gpu_backends:
            return (f"GPU offload unavailable: llama-cpp-python {self.version} has {', '.join(self.gpu_backends)} "
                    "compiled in but found no usable GPU" + (" (check nvidia-smi and CUDA_VISIBLE_DEVICES)"
                                                             if hint else ""))
        return (f"GPU offload unavailable: llama-cpp-python {self.version} is a CPU-only build"
                + (f"; for CUDA reinstall it with {CUDA_INSTALL_HINT}" if hint else ""))


def system_info() -> str:
    """llama.cpp's build line: the backends and CPU features compiled in."""
    import llama_cpp

    return llama_cpp.llama_print_system_info().decode("utf-8", errors="replace")


def device_info() -> DeviceInfo:
    import llama_cpp

    system = system_info()
    backends = tuple(b for b in GPU_BACKENDS if f"{b} :" in system or f"{b.upper()} :" in system)
    return DeviceInfo(llama_cpp.__version__, bool(llama_cpp.llama_supports_gpu_offload()), backends)


AMX_HINT = ('CFLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" CXXFLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" '
            'pip install --force-reinstall --no-cache-dir --no-binary llama-cpp-python llama-cpp-python')


def amx_hazard(system_info: str, cpu_flags: str) -> bool:
    """Whether the build has ggml's AMX buffer compiled in AND the CPU has AMX: the pair that segfaults in the
    first decode (llama.cpp issue #20824; seen with llama-cpp-python 0.3.36 on a Sapphire Rapids class CPU)."""
    return "AMX_INT8 = 1" in system_info and "amx_int8" in cpu_flags.split()


@functools.cache
def warn_if_amx() -> None:
    """Warn once, before the first model load, when :func:`amx_hazard` holds for this build and CPU."""
    try:
        flags = next((line.split(":", 1)[1] for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), "")
    except OSError:  # not Linux: no way to ask, and no report of the crash there
        return
    if amx_hazard(system_info(), flags):
        logger.warning("this llama-cpp-python build uses Intel AMX, which segfaults in llama.cpp's first decode on "
                       "this CPU (llama.cpp issue #20824); if it crashes, rebuild it without AMX: %s", AMX_HINT)


def gpu_offload_supported() -> bool:
    """Whether the installed llama-cpp-python build can offload layers to a GPU."""
    return device_info().gpu_offload


def require_gpu(purpose: str) -> DeviceInfo:
    """The device info, or DeviceError saying plainly why ``purpose`` cannot run on a GPU."""
    info = device_info()
    if not info.gpu_offload:
        raise DeviceError(f"{purpose} needs CUDA, but CUDA is unavailable here: {info.describe(hint=True)}")
    return info


def effective_gpu_layers(n_gpu_layers: int) -> int:
    """``n_gpu_layers`` when the build can offload; otherwise 0, with a warning that says so."""
    if n_gpu_layers and not gpu_offload_supported():
        logger.warning("running on the CPU: %s", device_info().describe(hint=True))
        return 0
    return n_gpu_layers


def check_gguf(path: Path | str) -> Path:
    """``path`` as a Path after checking it is a GGUF file: llama.cpp's own message for a bad file is only
    'Failed to load model'."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", file=path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise InputError(f"not a GGUF file (magic {magic!r})", file=path)
    return path


def load_model(path: Path | str, *, n_ctx: int = 512, n_gpu_layers: int = 0, n_threads: int | None = None,
               logits_all: bool = True, seed: int = 1234, verbose: bool = False):
    """Load a GGUF; ``n_gpu_layers=-1`` offloads every layer when the build supports it (a warning says
    when it does not)."""
    from llama_cpp import Llama

    path = check_gguf(path)
    warn_if_amx()
    try:
        return Llama(model_path=str(path), n_ctx=n_ctx, n_gpu_layers=effective_gpu_layers(n_gpu_layers),
                     n_threads=n_threads, logits_all=logits_all, seed=seed, verbose=verbose)
    except ValueError as exc:  # llama-cpp-python's "Failed to load model from file"
        raise InputError(f"llama.cpp cannot load it: {exc}", file=path) from exc


def eval_logits(model, tokens: Sequence[int]) -> np.ndarray:
    """Logits for every position of ``tokens`` (row i predicts token i+1), as float32 [n_tokens, n_vocab]."""
    model.reset()
    model.eval(list(tokens))
    return np.array(model.scores[: len(tokens)], dtype=np.float32)
