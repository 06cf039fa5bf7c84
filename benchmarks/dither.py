"""Make the DITHERED F16 reference of an already-quantized GGUF (shared/eval/README.md, "Why references
must be dithered").

A pre-quantized model has every weight on its source grid; re-quantizing it is not a fair test (a target
grid containing the source grid is hit exactly by a least-squares fit). Real weights are the dequantized
values plus a rounding residual close to uniform over one step, so the reference is:

- every QUANTIZED tensor, in file order: dequantize (``gguf.quants.dequantize``); per group of the source
  type's (sub-)block (32 for Q4_0/Q4_1/Q5_x/Q8_0/Q4_K/Q5_K, 16 for Q6_K/Q3_K/Q2_K) take
  ``step`` = the smallest gap between distinct dequantized values of the group (0 when the group has a
  single value); add ``(u - 0.5) * step`` per element, ``u = rng.random(dtype=float32)`` from
  ``numpy.random.default_rng(seed)``, drawn in tensor order (one float32 draw per element, row-major;
  sum in float64, then F16). The float32 draws matter: they are what reproduces the published reference
  PPL 29.59 on SmolLM2 (float64 draws, another realization, give 29.35);
- every non-quantized tensor (F32 norms and biases, F16/BF16) is copied as it is, with no draw;
- all metadata is copied, ``general.file_type`` set to MOSTLY_F16.

The output is streamed tensor by tensor (memory: one tensor).

    python benchmarks/dither.py /work/models/gguf/SmolLM2-135M-Instruct.Q4_1.gguf \
        /work/models/ref/SmolLM2-135M-Instruct.dithered-s1234.F16.gguf --seed 1234
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import click
import gguf
import numpy as np

logger = logging.getLogger("dither")

Q = gguf.GGMLQuantizationType
# Dither group = the source type's (sub-)block: the set of weights sharing one step.
GROUP_SIZE: dict[Q, int] = {
    Q.Q4_0: 32, Q.Q4_1: 32, Q.Q5_0: 32, Q.Q5_1: 32, Q.Q8_0: 32,
    Q.Q4_K: 32, Q.Q5_K: 32,
    Q.Q6_K: 16, Q.Q3_K: 16, Q.Q2_K: 16,
}
NOT_QUANTIZED = (Q.F32, Q.F16, Q.BF16, Q.F64, Q.I8, Q.I16, Q.I32, Q.I64)
DEFAULT_SEED = 1234
ROWS_PER_PIECE = 4096  # bound on the temporary arrays of one step computation


def group_steps(values: np.ndarray, group_size: int) -> np.ndarray:
    """Smallest gap between distinct values of each consecutive ``group_size`` group (last axis), as one
    step per element (same shape as ``values``); 0 for a group holding a single distinct value."""
    if values.shape[-1] % group_size:
        raise ValueError(f"row length {values.shape[-1]} is not a multiple of the group size {group_size}")
    groups = np.sort(values.reshape(-1, group_size), axis=1)
    gaps = np.diff(groups, axis=1)
    gaps[gaps <= 0] = np.inf
    step = gaps.min(axis=1)
    step[~np.isfinite(step)] = 0.0
    return np.repeat(step, group_size).reshape(values.shape)


def dither_tensor(values: np.ndarray, group_size: int, rng: np.random.Generator) -> np.ndarray:
    """``values`` + U(-step/2, step/2) per element (one float32 draw per element, row-major), as F16."""
    rows = values.reshape(-1, values.shape[-1])
    out = np.empty(rows.shape, dtype=np.float16)
    for r0 in range(0, rows.shape[0], ROWS_PER_PIECE):
        piece = rows[r0:r0 + ROWS_PER_PIECE].astype(np.float64)
        step = group_steps(piece, group_size)
        # float32 draws (next_float), as the README's reference was made: float64 draws give another
        # realization (PPL 29.35 instead of the published 29.59 on SmolLM2).
        noise = (rng.random(piece.shape, dtype=np.float32) - np.float32(0.5)) * step
        out[r0:r0 + ROWS_PER_PIECE] = (piece + noise).astype(np.float16)
    return out.reshape(values.shape)


def _copy_metadata(reader: gguf.GGUFReader, writer: gguf.GGUFWriter) -> None:
    for field in reader.fields.values():
        name = field.name
        if name.startswith("GGUF.") or name == gguf.Keys.General.ARCHITECTURE:
            continue
        vtype = field.types[0]
        if name == gguf.Keys.General.FILE_TYPE:
            writer.add_key_value(name, int(gguf.LlamaFileType.MOSTLY_F16), vtype)
            continue
        sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), vtype, sub_type=sub_type)


def dither_gguf(src: Path, dst: Path, seed: int = DEFAULT_SEED) -> dict[str, int]:
    """Write the dithered F16 reference of ``src`` to ``dst``; returns counts of dithered/copied tensors."""
    reader = gguf.GGUFReader(src)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    for t in reader.tensors:
        if t.tensor_type not in NOT_QUANTIZED and t.tensor_type not in GROUP_SIZE:
            raise ValueError(f"{t.name}: source type {t.tensor_type.name} has no dither group size")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".part")
    writer = gguf.GGUFWriter(tmp, arch)
    _copy_metadata(reader, writer)
    for t in reader.tensors:
        shape = [int(n) for n in reversed(t.shape)]  # numpy order (rows, ..., ne0)
        if t.tensor_type in NOT_QUANTIZED:
            writer.add_tensor_info(t.name, shape, t.data.dtype, int(t.n_bytes), raw_dtype=t.tensor_type)
        else:
            writer.add_tensor_info(t.name, shape, np.dtype(np.float16), int(np.prod(shape)) * 2,
                                   raw_dtype=Q.F16)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()

    rng = np.random.default_rng(seed)
    counts = {"dithered": 0, "copied": 0}
    for i, t in enumerate(reader.tensors):
        if t.tensor_type in NOT_QUANTIZED:
            writer.write_tensor_data(np.asarray(t.data))
            counts["copied"] += 1
            continue
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        writer.write_tensor_data(dither_tensor(values, GROUP_SIZE[t.tensor_type], rng))
        counts["dithered"] += 1
        logger.debug("[%d/%d] %s %s %s dithered", i + 1, len(reader.tensors), t.name, t.tensor_type.name,
                     values.shape)
    writer.close()
    tmp.replace(dst)
    return counts


@click.command()
@click.argument("src", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("dst", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--seed", type=int, default=DEFAULT_SEED, show_default=True)
def main(src: Path, dst: Path, seed: int) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    t0 = time.perf_counter()
    counts = dither_gguf(src, dst, seed)
    logger.info("%s -> %s (seed %d): %d tensors dithered, %d copied, %.1f s", src, dst, seed,
                counts["dithered"], counts["copied"], time.perf_counter() - t0)


if __name__ == "__main__":
    main()
