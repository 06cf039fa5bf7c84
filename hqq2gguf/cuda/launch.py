"""Where the kernel runs: a :class:`Launcher` takes one part's :class:`~hqq2gguf.cuda.host.BlockInputs` and returns
the block bytes. :class:`CudaLauncher` runs the NVRTC-compiled kernels on a GPU through CuPy;
:class:`hqq2gguf.cuda.emulate.HostLauncher` runs the same source compiled for the CPU (tests without a GPU).

Device memory is bounded by one launch chunk (:data:`CHUNK_ELEMENTS`), whatever the size of the part.
"""

from __future__ import annotations

from typing import Protocol

import gguf
import numpy as np
import torch

import hqq2gguf.cuda.loader as loader
from hqq2gguf.cuda.host import BlockInputs
from hqq2gguf.errors import DeviceError

THREADS_PER_CTA = 128
"""Threads per CTA of every launch; the kernels declare ``__launch_bounds__(HQQ_THREADS_PER_CTA)`` with the same
number (cuda/common.cuh), so the compiler may plan registers for it, and a larger launch fails loudly."""

CHUNK_ELEMENTS = 1 << 26
"""Elements per launch: about 26 bytes each on the GPU (inputs and their element-major copies, block bytes,
objectives), 1.7 GiB at most, whatever the size of the part."""


class Launcher(Protocol):
    """Runs the kernel of ``inputs.qtype``: (uint8 (n_blocks, type_size) block bytes, float32 objectives)."""

    def run(self, inputs: BlockInputs) -> tuple[np.ndarray, np.ndarray]: ...


class CudaLauncher:
    """Runs the NVRTC-compiled kernels on a CUDA device, on torch tensors (their data pointers)."""

    def __init__(self, device_index: int | None = None) -> None:
        if not torch.cuda.is_available():
            raise DeviceError("no CUDA device: torch.cuda.is_available() is False")
        self.device = torch.device("cuda", torch.cuda.current_device() if device_index is None else device_index)

    def run(self, inputs: BlockInputs) -> tuple[np.ndarray, np.ndarray]:
        kernel = loader.kernel(inputs.qtype, self.device.index)
        n, B = inputs.x.shape
        out = np.empty((n, gguf.GGML_QUANT_SIZES[inputs.qtype][1]), np.uint8)
        obj = np.empty(n, np.float32)
        p, dev = inputs.params, self.device
        hq_c, factors, one_minus = (torch.from_numpy(a).to(dev) for a in (p.hq_c, p.factors, p.one_minus))
        chunk = max(1, CHUNK_ELEMENTS // B)
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            out[lo:hi], obj[lo:hi] = self._launch(kernel, inputs, lo, hi, (hq_c, factors, one_minus))
        return out, obj

    def _launch(self, kernel: object, inputs: BlockInputs, lo: int, hi: int,
                params: tuple[torch.Tensor, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Blocks lo..hi on the device: copy in (element arrays element-major), launch, copy the results back."""
        cupy = loader.import_cupy()
        dev, m, p = self.device, hi - lo, inputs.params

        def element_major(a: np.ndarray) -> torch.Tensor:  # (m, B) host -> (B, m) device: coalesced loads
            return torch.from_numpy(a[lo:hi]).to(dev).t().contiguous()

        def per_block(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a[lo:hi])).to(dev)

        keep = [element_major(inputs.x), element_major(inputs.w), element_major(inputs.wf),
                element_major(inputs.base_q), per_block(inputs.base_d), per_block(inputs.base_m),
                per_block(inputs.base_sc), per_block(inputs.base_mn)]
        out = torch.empty((m, gguf.GGML_QUANT_SIZES[inputs.qtype][1]), dtype=torch.uint8, device=dev)
        obj = torch.empty(m, dtype=torch.float32, device=dev)
        x, w, wf, q0, d0, m0, sc0, mn0 = (np.uint64(t.data_ptr()) for t in keep)
        hq_c, factors, one_minus = (np.uint64(t.data_ptr()) for t in params)
        args = (x, w, wf, q0, np.int64(m), np.int64(1), np.int64(m), d0, m0, sc0, mn0,
                np.int32(p.iterations), np.int32(p.patience), np.int32(p.shrink), np.float32(p.p_exp),
                hq_c, np.int32(p.n_factors), factors, one_minus, np.int32(p.radius),
                np.uint64(out.data_ptr()), np.uint64(obj.data_ptr()))
        grid = (m + THREADS_PER_CTA - 1) // THREADS_PER_CTA
        stream = torch.cuda.current_stream(dev)
        try:
            with cupy.cuda.Device(dev.index), cupy.cuda.ExternalStream(stream.cuda_stream):
                kernel((grid,), (THREADS_PER_CTA,), args)
            stream.synchronize()  # launch errors surface here, before this chunk's inputs are freed
        except Exception as exc:  # CUDA errors: reported, never a silent fallback
            raise DeviceError(f"{inputs.qtype.name}: the CUDA kernel failed on device {dev.index}: {exc}") from exc
        return out.cpu().numpy(), obj.cpu().numpy()
