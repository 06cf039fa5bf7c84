"""llama.cpp's importance matrix files, read as per-column importance of the weight matrices.

llama.cpp's importance matrix holds, per matrix, the mean squared input activation of every column,
``E[a_j**2]`` (per expert for 3-D expert tensors). Its quantizers weight column ``j``'s errors by it.
:func:`read_imatrix` reads both of its formats — GGUF (``<tensor>.in_sum2`` / ``<tensor>.counts`` tensors,
normalized by the counts as llama-quantize does) and the legacy ``.dat`` (values already averaged per call,
times ``ncall``; divided by ``ncall``). Validated: a malformed or truncated file is an :class:`InputError`
naming it, never a huge allocation (every length is checked against the file size).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

from hqq2gguf.calibrate.covariance import Covariances
from hqq2gguf.errors import InputError
from hqq2gguf.read.gguf_reader import GgufReader

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Importance:
    """Importance vectors by GGUF tensor name, each float32 (n_expert, ne0)."""

    entries: Mapping[str, np.ndarray] = field(default_factory=dict)
    origin: str = "none"  # for messages: the imatrix file, or "norms"
    provenance: Mapping[str, object] | None = None
    """What the output file records about where the importance came from (None: nothing to record)."""
    sequences: tuple[tuple[int, ...], ...] = ()
    """The token sequences the model wrote for it (self-calibration only): the sensitivity probes read their
    beginnings instead of writing text of their own."""
    covariances: Covariances = field(default_factory=Covariances)
    """The matrices' input covariances on the same text, for the error feedback (empty: none collected)."""

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

    def covariance_for(self, name: str, shape: tuple[int, ...]) -> list[np.ndarray] | None:
        """The input covariance of 2-D tensor ``name`` (its diagonal blocks, :mod:`.covariance`), or None."""
        return self.covariances.for_tensor(name, shape[-1]) if len(shape) == 2 else None


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
    try:  # bounded: counts, lengths and offsets checked against the file size first
        reader = GgufReader(path)
    except (ValueError, OSError) as e:
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
        entries[name] = mean_squares(s.reshape(c.size, -1), c)
    return entries


def mean_squares(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """llama-quantize's reading of an imatrix entry: sums (n_mat, ne0) / count per matrix (expert), float32;
    an expert never routed to gets 1 everywhere."""
    c = np.asarray(counts, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(c[:, None] > 0, sums / np.where(c > 0, c, 1)[:, None], 1.0).astype(np.float32)


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


def write_imatrix(path: Path, sums: Mapping[str, np.ndarray], counts: Mapping[str, np.ndarray], *,
                  datasets: list[str], chunk_count: int, chunk_size: int) -> None:
    """llama.cpp's GGUF imatrix (what ``llama-imatrix -o FILE.gguf`` writes): per weight ``<name>.in_sum2``
    (n_mat, ne0) and ``<name>.counts`` (n_mat, 1), F32, sorted by name; ``general.type`` "imatrix",
    ``imatrix.datasets``, ``imatrix.chunk_count``, ``imatrix.chunk_size``. llama-imatrix writes no
    ``general.architecture``, and neither does this."""
    writer = gguf.GGUFWriter(path=None, arch="")
    writer.kv_data[0].pop(gguf.Keys.General.ARCHITECTURE, None)
    writer.add_string(gguf.Keys.General.TYPE, "imatrix")
    writer.add_array(_DATASETS, datasets)
    writer.add_uint32(_CHUNK_COUNT, chunk_count)
    writer.add_uint32(_CHUNK_SIZE, chunk_size)
    for name in sorted(sums):
        c = np.asarray(counts[name], dtype=np.float32).reshape(-1, 1)
        s = np.asarray(sums[name], dtype=np.float32).reshape(c.shape[0], -1)
        if c.shape[0] == 1:  # ggml drops trailing dimensions of 1: a dense matrix's entry is 1-D there
            s, c = s.reshape(-1), c.reshape(-1)
        writer.add_tensor(f"{name}.in_sum2", s)
        writer.add_tensor(f"{name}.counts", c)
    writer.write_header_to_file(path=path)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


_DATASETS, _CHUNK_COUNT, _CHUNK_SIZE = "imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"
