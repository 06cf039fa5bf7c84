"""Element weights of the objective, per :class:`WeightMode` (float64, same shape as the rows)."""

from __future__ import annotations

import gguf
import torch

from hqq2gguf.errors import InputError
from hqq2gguf.optimize.config import WeightMode
from hqq2gguf.qtypes import QuantSpec

Q = gguf.GGMLQuantizationType

# llama.cpp's _ref quantizers without an imatrix (ggml-quants.c): which weights each one fits with.
_LLAMA_ABS = (Q.Q2_K,)
_LLAMA_AVX_ABS = (Q.Q4_K, Q.Q5_K)
_LLAMA_SQUARE = (Q.Q3_K, Q.Q6_K, Q.IQ4_NL, Q.IQ4_XS)
# WeightMode.AUTO: where measured KLD chose other weights than llama.cpp's (config.WeightMode.AUTO says why).
_AUTO_ABS = (Q.Q3_K,)


def uniform_weights(spec: QuantSpec, mode: WeightMode, importance: torch.Tensor | None) -> bool:
    """Whether :func:`element_weights` is all ones for this type, mode and importance (the objective is then the
    plain squared error, and the weights need not be built or multiplied in)."""
    if importance is not None:  # multiplied in by every mode
        return False
    if mode is WeightMode.NONE:
        return True
    if mode is WeightMode.AUTO and spec.qtype in _AUTO_ABS:
        return False
    return mode in (WeightMode.AUTO, WeightMode.LLAMA, WeightMode.IMPORTANCE) and spec.qtype not in (
        _LLAMA_ABS + _LLAMA_AVX_ABS + _LLAMA_SQUARE)


def element_weights(x: torch.Tensor, spec: QuantSpec, mode: WeightMode,
                    importance: torch.Tensor | None) -> torch.Tensor:
    """Weights (rows, ne0) float64 for rows ``x`` (rows, ne0) float64."""
    if mode is WeightMode.IMPORTANCE:
        if importance is None:  # as llama.cpp: a tensor the imatrix does not cover is quantized without it
            return _llama_weights(x, spec)
        sigma2 = (x * x).mean(dim=1, keepdim=True)
        return importance[None, :] * torch.sqrt(sigma2 + x * x)
    if mode is WeightMode.AUTO:
        w = x.abs() if spec.qtype in _AUTO_ABS else _llama_weights(x, spec)
    elif mode is WeightMode.NONE:
        w = torch.ones_like(x)
    elif mode is WeightMode.ABS:
        w = x.abs()
    elif mode is WeightMode.SQUARE:
        w = x * x
    else:
        w = _llama_weights(x, spec)
    return w if importance is None else w * importance[None, :]


def _llama_weights(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    if spec.qtype in _LLAMA_ABS:
        return x.abs()
    if spec.qtype in _LLAMA_AVX_ABS:
        g = x.reshape(x.shape[0], -1, 32)
        av_x = torch.sqrt((g * g).mean(dim=2, keepdim=True))
        return (av_x + g.abs()).reshape(x.shape)
    if spec.qtype in _LLAMA_SQUARE:
        return x * x
    return torch.ones_like(x)


def checked_importance(importance: object, ne0: int, name: str) -> torch.Tensor | None:
    """``importance`` as float64 (ne0,), validated (finite, >= 0)."""
    if importance is None:
        return None
    imp = torch.as_tensor(importance).detach().to(torch.float64).cpu()
    if imp.shape != (ne0,):
        raise InputError(f"{name}: importance has shape {tuple(imp.shape)}, expected ({ne0},)")
    if not bool(torch.isfinite(imp).all()) or bool((imp < 0).any()):
        raise InputError(f"{name}: importance must be finite and non-negative")
    return imp
