"""Calibration-free column importance, from the weights alone.

The input of attn_q/k/v (attn_qkv) and ffn_gate/up is the RMS-normalized hidden state times the preceding
norm's weight gamma (the GGUF stores Gemma's 1 + gamma), and the input of output.weight is the final norm's
output; so ``gamma_j**2`` is proportional to ``E[a_j**2]`` up to the per-channel spread of the normalized
state, which is unknown without data (:func:`norm_importance`). :func:`derived_importance` adds estimates
for the matrices no norm feeds (attn_output, ffn_down) from the weights that produce their inputs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import numpy as np

from hqq2gguf.calibrate.imatrix import Importance


_FED_BY = (
    (re.compile(r"^blk\.(\d+)\.(attn_q|attn_k|attn_v|attn_qkv)\.weight$"), "blk.{bid}.attn_norm.weight"),
    (re.compile(r"^blk\.(\d+)\.(ffn_gate|ffn_up|ffn_gate_exps|ffn_up_exps|ffn_gate_shexp|ffn_up_shexp)\.weight$"),
     "blk.{bid}.ffn_norm.weight"),
)


def norm_importance(names: list[str], norms: Mapping[str, np.ndarray]) -> Importance:
    """Data-free importance ``gamma**2`` for the matrices among ``names`` fed by a norm in ``norms``.

    ``output.weight`` (or ``token_embd.weight`` when the model ties it as the output) gets output_norm's."""
    entries = {}
    tied = "output.weight" not in names
    for name in names:
        norm = None
        for pattern, norm_name in _FED_BY:
            m = pattern.match(name)
            if m:
                norm = norm_name.format(bid=m.group(1))
                break
        if name == "output.weight" or (tied and name == "token_embd.weight"):
            norm = "output_norm.weight"
        if norm is not None and norm in norms:
            g = np.asarray(norms[norm], dtype=np.float64).reshape(-1)
            entries[name] = (g * g).astype(np.float32).reshape(1, -1)
    return Importance(entries, "norms")


def needed_norms(names: list[str]) -> set[str]:
    """The norm tensors :func:`norm_importance` reads for matrices ``names``."""
    out = {"output_norm.weight"}
    for name in names:
        for pattern, norm_name in _FED_BY:
            m = pattern.match(name)
            if m:
                out.add(norm_name.format(bid=m.group(1)))
    return out & set(names)


_DERIVED_FROM = re.compile(r"^blk\.(\d+)\.(attn_v|ffn_gate|ffn_up)\.weight$")


def derived_inputs(names: list[str]) -> set[str]:
    """The matrices :func:`derived_importance` reads (attn_v, ffn_gate, ffn_up of every block)."""
    return {n for n in names if _DERIVED_FROM.match(n)}


def derived_importance(names: list[str], norms: Mapping[str, np.ndarray],
                       tensors: Iterable[tuple[str, np.ndarray]], n_head: int, n_head_kv: int) -> Importance:
    """:func:`norm_importance`, plus estimates of ``E[a_j**2]`` for the inputs of attn_output and ffn_down.

    With the normalized hidden state modelled as independent unit-variance channels scaled by the norm's
    gamma, row ``j`` of a matrix W fed by that norm produces an output of variance ``e_j = sum_k gamma_k**2
    W_jk**2`` (its row energy). ffn_down's input ``j`` is ``act(gate_j . x) * (up_j . x)``: importance
    ``e_gate_j * e_up_j`` (``e_up_j`` without a gate). attn_output's input column ``c`` (head ``h``, dim
    ``d``) is a softmax-weighted mix of value rows: importance ``e_v`` of value row ``(h // group, d)``.
    ``tensors`` yields the (rows, ne0) arrays named by :func:`derived_inputs`, one at a time."""
    entries = dict(norm_importance(names, norms).entries)
    energy: dict[tuple[int, str], np.ndarray] = {}
    for name, w in tensors:
        m = _DERIVED_FROM.match(name)
        if m is None or w.ndim != 2:
            continue
        bid, kind = int(m.group(1)), m.group(2)
        gamma = norms.get(f"blk.{bid}.{'attn_norm' if kind == 'attn_v' else 'ffn_norm'}.weight")
        g2 = np.ones(w.shape[1]) if gamma is None else np.asarray(gamma, dtype=np.float64).reshape(-1) ** 2
        if g2.shape[0] != w.shape[1]:
            continue
        energy[(bid, kind)] = np.square(w, dtype=np.float64) @ g2
    group = max(1, n_head // max(1, n_head_kv))
    for name in names:
        m = re.match(r"^blk\.(\d+)\.(attn_output|ffn_down)\.weight$", name)
        if m is None:
            continue
        bid, kind = int(m.group(1)), m.group(2)
        if kind == "ffn_down" and (bid, "ffn_up") in energy:
            e = energy[(bid, "ffn_up")]
            e = e * energy[(bid, "ffn_gate")] if (bid, "ffn_gate") in energy else e
        elif kind == "attn_output" and (bid, "attn_v") in energy and n_head > 0:
            ev = energy[(bid, "attn_v")]
            head_dim = ev.shape[0] // max(1, n_head_kv)
            c = np.arange(n_head * head_dim)
            e = ev[(c // head_dim // group) * head_dim + c % head_dim]
        else:
            continue
        entries[name] = (e / max(float(e.mean()), 1e-300)).astype(np.float32).reshape(1, -1)
    return Importance(entries, "derived")
