"""Which solver runs: ``--device auto|cpu|cuda`` resolved against what this machine can actually do.

    resolve_device("auto")   # Device.CUDA when a GPU, CuPy and the compiled kernels are usable, else Device.CPU
    resolve_device("cuda")   # Device.CUDA, or DeviceError saying in one line why not (never a silent fallback)
    resolve_device("cpu")    # Device.CPU when the kernels compiled for the CPU are usable, else Device.TORCH
"""

from __future__ import annotations

import logging

import torch

import hqq2gguf.cuda.loader as loader
from hqq2gguf.errors import DeviceError, OptionError
from hqq2gguf.options import Device

logger = logging.getLogger(__name__)


def cuda_unusable_reason(device_index: int = 0) -> str | None:
    """None when the CUDA solver can run on ``device_index`` (its kernels compile there), else why not."""
    found = _probe(device_index)
    return None if found is None else found[0]


def resolve_device(requested: Device | str, device_index: int = 0) -> Device:
    """``requested`` resolved to :attr:`Device.CPU` or :attr:`Device.CUDA`.

    AUTO falls back to the CPU with an INFO line (no GPU, no CuPy) or a WARNING (a GPU whose kernels fail to
    compile or load); CUDA raises :class:`DeviceError` instead."""
    try:
        device = Device(requested)
    except ValueError:
        known = ", ".join(d.value for d in Device)
        raise OptionError(f"--device must be one of {known}, got {requested!r}") from None
    if device in (Device.CPU, Device.TORCH):
        return _cpu(device)
    found = _probe(device_index)
    if found is None:
        return Device.CUDA
    reason, level = found
    if device is Device.CUDA:
        raise DeviceError(f"--device cuda: {reason}")
    logger.log(level, "--device auto: solving on the CPU: %s", reason)
    return _cpu(Device.CPU)


def _cpu(device: Device) -> Device:
    """CPU when the compiled kernels write the torch solver's bytes here, else TORCH (an INFO line says why)."""
    if device is Device.TORCH:
        return device
    from hqq2gguf.cuda.solve_cpu import cpu_kernels_unusable_reason  # compiles the kernels once (cached on disk)

    reason = cpu_kernels_unusable_reason()
    if reason is None:
        return Device.CPU
    logger.info("solving with the torch solver (slower; the same bytes): %s", reason)
    return Device.TORCH


def _probe(device_index: int) -> tuple[str, int] | None:
    """(why the CUDA solver cannot run, the log level AUTO reports it at), or None when it can."""
    if not torch.cuda.is_available():
        build = f" (torch {torch.__version__} is a CPU-only build)" if torch.version.cuda is None else ""
        return f"no CUDA device: torch.cuda.is_available() is False{build}", logging.INFO
    if not 0 <= device_index < torch.cuda.device_count():
        return f"no CUDA device {device_index}: torch sees {torch.cuda.device_count()}", logging.INFO
    try:
        loader.import_cupy()
    except DeviceError as exc:
        return exc.reason, logging.INFO
    try:
        loader.load_all(device_index)
    except DeviceError as exc:  # a GPU is there but the kernels cannot run on it: worth a warning
        return exc.reason, logging.WARNING
    return None
