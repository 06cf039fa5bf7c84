"""The order torch's CPU adds a float32 row in, detected, so the kernels can add in the same order.

torch's ``sum`` over a contiguous last axis (aten cascade_sum) keeps one partial per lane of its
``Vectorized<float>`` and four ILP partials per lane; the lane count depends on the CPU kernels torch
dispatches to, and is not reliably what ``torch.backends.cpu.get_cpu_capability()`` names (torch 2.13 reports
AVX512 and sums 8-wide). So it is measured: torch sums probe rows, and the lane count whose order reproduces
every result bit for bit wins. cuda/common.cuh's ``torch_sum`` is the same order, given ``-DHQQ_SUM_LANES``.
"""

from __future__ import annotations

import functools
import logging

import numpy as np
import torch

logger = logging.getLogger(__name__)

CANDIDATE_LANES = (8, 16, 4, 32)
DEFAULT_LANES = 8
_SIZES = (8, 16, 32, 256)  # the sums the solver makes: sub-blocks, blocks, super-blocks, sub-block counts


def ordered_sum(row: np.ndarray, lanes: int) -> np.float32:
    """``row`` (float32) summed in torch's order for ``lanes``-wide vectors (common.cuh torch_sum)."""
    f32, n = np.float32, len(row)
    total = f32(0)
    if n >= lanes:
        nvec = n // lanes
        ilp = nvec // 4
        for e in range(nvec * lanes, n):
            total = f32(total + row[e])
        for lane in range(lanes):
            p = [f32(0)] * 4
            for i in range(ilp):
                for k in range(4):
                    p[k] = f32(p[k] + row[(4 * i + k) * lanes + lane])
            for m in range(4 * ilp, nvec):
                p[0] = f32(p[0] + row[m * lanes + lane])
            total = f32(total + f32(f32(f32(p[0] + p[1]) + p[2]) + p[3]))
        return total
    p = [f32(0)] * 4
    for i in range(n // 4):
        for k in range(4):
            p[k] = f32(p[k] + row[4 * i + k])
    for e in range(4 * (n // 4), n):
        p[0] = f32(p[0] + row[e])
    return f32(total + f32(f32(f32(p[0] + p[1]) + p[2]) + p[3]))


@functools.cache
def torch_sum_lanes() -> int:
    """The lane count whose order reproduces this process's ``torch.sum`` on float32 rows (DEFAULT_LANES,
    with a warning, when none does: the kernels then still run, but may differ from the torch path in the
    last bits of some sums)."""
    lanes = detected_lanes()
    if lanes is None:
        logger.warning("torch's CPU sum order is none of %s-lane; the CUDA kernels assume %d lanes and may differ "
                       "from the torch solver in the last bits", CANDIDATE_LANES, DEFAULT_LANES)
        return DEFAULT_LANES
    return lanes


@functools.cache
def detected_lanes() -> int | None:
    """The lane count whose order reproduces this process's ``torch.sum`` on float32 rows, None when none does."""
    rng = np.random.default_rng(20240611)
    probes = {n: (rng.standard_normal((4, n)) * np.exp(3 * rng.standard_normal((4, n)))).astype(np.float32)
              for n in _SIZES}
    with torch.no_grad():
        sums = {n: torch.from_numpy(rows).sum(-1).numpy() for n, rows in probes.items()}
    for lanes in CANDIDATE_LANES:
        if all(ordered_sum(row, lanes) == s for n, rows in probes.items() for row, s in zip(rows, sums[n])):
            return lanes
    return None
