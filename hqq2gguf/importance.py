"""Per-column importance of the weight matrices: llama.cpp's imatrix files, or a data-free proxy.

llama.cpp's importance matrix holds, per matrix, the mean squared input activation of every column,
``E[a_j**2]`` (per expert for 3-D expert tensors). Its quantizers weight column ``j``'s errors by it.
Two sources here, both giving GGUF tensor name -> float32 (n_expert, ne0):

- :func:`read_imatrix`: llama.cpp's files — the GGUF format (``<tensor>.in_sum2`` / ``<tensor>.counts``
  tensors, normalized by the counts as llama-quantize does) and the legacy ``.dat`` format (values already
  averaged per call, times ``ncall``; divided by ``ncall``). Validated: a malformed or truncated file is an
  :class:`InputError` naming it, never a huge allocation (every length is checked against the file size).
- :func:`norm_importance`: calibration-free. The input of attn_q/k/v (attn_qkv) and ffn_gate/up is the
  RMS-normalized hidden state times the preceding norm's weight gamma (the GGUF stores Gemma's 1 + gamma),
  and the input of output.weight is the final norm's output; so ``gamma_j**2`` is proportional to
  ``E[a_j**2]`` up to the per-channel spread of the normalized state, which is unknown without data.
  Tensors fed by other activations (attn_output, ffn_down) get no entry (uniform importance).
"""

from __future__ import annotations

import logging
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import gguf
import numpy as np

from hqq2gguf.errors import InputError
from hqq2gguf.read.gguf_header import validate_gguf_header

logger = logging.getLogger(__name__)


class ImportanceSource(str, Enum):
    """Where column importance comes from when no imatrix file is given (``--importance``)."""

    NONE = "none"
    """Uniform: every column counts the same (llama.cpp without an imatrix)."""
    NORMS = "norms"
    """The squared weight of the norm feeding each matrix (data-free; see :func:`norm_importance`)."""
    DERIVED = "derived"
    """NORMS, plus weight-derived estimates for the matrices no norm feeds (attn_output, ffn_down; see
    :func:`derived_importance`). Reads attn_v, ffn_gate and ffn_up once more before writing."""


@dataclass(frozen=True)
class Importance:
    """Importance vectors by GGUF tensor name, each float32 (n_expert, ne0)."""

    entries: Mapping[str, np.ndarray] = field(default_factory=dict)
    origin: str = "none"  # for messages: the imatrix file, or "norms"

    def __len__(self) -> int:
        return len(self.entries)

    def for_tensor(self, name: str, shape: tuple[int, ...]) -> np.ndarray | None:
        """The (n_expert, ne0) importance of tensor ``name`` (numpy shape ``shape``), or None.

        A size that does not fit the tensor is an error naming both (llama-quantize refuses it too)."""
        v = self.entries.get(name)
        if v is None:
            return None
        ne0 = shape[-1]
        n_expert = shape[0] if len(shape) == 3 else 1
        if v.size != ne0 * n_expert:
            raise InputError(f"importance has {v.size} values, the tensor {list(shape)} needs {ne0 * n_expert} "
                             f"({n_expert} x {ne0}): the imatrix was made for another model", file=self.origin,
                             tensor=name)
        return v.reshape(n_expert, ne0)


def read_imatrix(path: Path) -> Importance:
    """llama.cpp's imatrix file (GGUF or legacy ``.dat``) as importance vectors (sums / counts)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no such imatrix file", file=path)
    with open(path, "rb") as f:
        magic = f.read(4)
    entries = _read_gguf_imatrix(path) if magic == b"GGUF" else _read_legacy_imatrix(path)
    if not entries:
        raise InputError("the imatrix holds no entries", file=path)
    for name, v in entries.items():
        if not np.isfinite(v).all() or (v < 0).any():
            raise InputError("imatrix values must be finite and non-negative", file=path, tensor=name)
    logger.info("imatrix %s: %d entries", path, len(entries))
    return Importance(entries, str(path))


def _read_gguf_imatrix(path: Path) -> dict[str, np.ndarray]:
    validate_gguf_header(path)  # bounded: counts, lengths and offsets checked against the file size first
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # gguf-py raises bare ValueError/struct errors on damaged files
        raise InputError(f"not a readable GGUF imatrix ({e})", file=path) from None
    sums, counts = {}, {}
    for t in reader.tensors:
        for suffix, into in ((".in_sum2", sums), (".counts", counts)):
            if t.name.endswith(suffix):
                if t.tensor_type != gguf.GGMLQuantizationType.F32:
                    raise InputError(f"{suffix[1:]} must be F32, got {t.tensor_type.name}", file=path,
                                     tensor=t.name)
                into[t.name.removesuffix(suffix)] = np.asarray(t.data, dtype=np.float32).reshape(-1)
    if not sums and not counts:
        raise InputError("a GGUF without <tensor>.in_sum2 / <tensor>.counts tensors is not an imatrix", file=path)
    entries = {}
    for name in sorted(set(sums) | set(counts)):
        if name not in sums or name not in counts:
            raise InputError("sums and counts do not come in pairs", file=path, tensor=name)
        s, c = sums[name], np.rint(counts[name])
        if c.size == 0 or s.size % c.size:
            raise InputError(f"{s.size} sums do not split into {c.size} experts", file=path, tensor=name)
        s = s.reshape(c.size, -1)
        # llama-quantize: sums / count per expert; an expert never seen gets 1 everywhere
        with np.errstate(divide="ignore", invalid="ignore"):
            entries[name] = np.where(c[:, None] > 0, s / np.where(c > 0, c, 1)[:, None], 1.0).astype(np.float32)
    return entries


def _read_legacy_imatrix(path: Path) -> dict[str, np.ndarray]:
    data = path.read_bytes()
    pos = 0

    def take(fmt: str, what: str) -> tuple:
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise InputError(f"truncated legacy imatrix: {what} at byte {pos}", file=path)
        out = struct.unpack_from(fmt, data, pos)
        pos += size
        return out

    (n_entries,) = take("<i", "entry count")
    if n_entries < 1 or n_entries > len(data) // 12:  # each entry takes at least 12 bytes
        raise InputError(f"not an imatrix (neither GGUF nor legacy .dat: {n_entries} entries claimed)", file=path)
    entries = {}
    for i in range(n_entries):
        (length,) = take("<i", f"entry {i}'s name length")
        if not 0 < length <= len(data) - pos:
            raise InputError(f"entry {i}: name length {length} is impossible", file=path)
        name = data[pos:pos + length].decode("utf-8", errors="replace")
        pos += length
        ncall, nval = take("<ii", f"entry {i}'s counts")
        if not 0 < nval <= (len(data) - pos) // 4:
            raise InputError(f"entry {i}: {nval} values do not fit in the file", file=path, tensor=name)
        values = np.frombuffer(data, dtype="<f4", count=nval, offset=pos).astype(np.float32)
        pos += 4 * nval
        entries[name] = (values / ncall if ncall > 0 else values).reshape(1, -1)
    return entries


# The norm whose output feeds each matrix (GGUF names; {bid} = block index).
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
