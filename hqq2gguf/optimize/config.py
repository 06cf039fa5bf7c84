"""The solver's options: one frozen dataclass, validated on construction (CLI flags map 1:1 onto it)."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from enum import Enum

from hqq2gguf.errors import OptionError
from hqq2gguf.qtypes import QUANT_TYPES


DEFAULT_ITERATIONS = 4
"""Half-quadratic iterations per block unless :data:`TYPE_ITERATIONS` or ``SolverConfig.iterations`` says otherwise."""

CHUNK_ELEMENTS = 1 << 18
"""Elements per row part when ``chunk_blocks`` is 0: a part's working set then stays near the CPU caches. On 2 cores,
Qwen2.5-1.5B ffn_gate (8960 x 1536): Q4_K 1.11 s at 1024 super-blocks vs 1.61 s at 4096, Q6_K 0.66 vs 0.90 s;
Q4_0 0.91 s at 8192 blocks vs 0.96 at 4096 and 1.68 at 1024 (throwaway timings, same bytes)."""

TYPE_ITERATIONS: dict[str, int] = {"Q4_K": 2, "Q3_K": 2}
"""Per-type iteration defaults, chosen by KLD and time. Q4_K: 2 (objective 0.974x llama.cpp's after one iteration,
0.971x after two, 0.970x after four at 1.35x the solve time of two; Qwen2.5-Coder-1.5B Q4_K_M mean KLD: one
iteration 1.033 +- 0.025 (1 s.e.) x four's, benchmarks/results/quality_qwen2.5-coder-1.5b-q4k-iterations.md).
Q3_K: 2 (objective 0.9535x llama.cpp's vs 0.9502x after four, solver_levers_qwen2.5-coder-1.5b.md; chunk-paired
mean KLD of Q3_K_S, two iterations over four: Qwen2.5-Coder-1.5B 1.013 +- 0.024, SmolLM2 0.997 +- 0.003 (2 s.e.),
benchmarks/results/quality_q3k-iterations_*.md; the solve on one thread 0.66 s instead of 1.02 s in
solver_levers, Qwen Q3_K_S 2.90x llama-quantize's time instead of 3.38x in quantize_speed_qwen2.5-coder-1.5b.md)."""


LLAMA_CPP_TYPES: tuple[str, ...] = ("Q8_0",)
"""Block types left to llama.cpp's own encoding when no importance is given (with an imatrix or self-calibration
the solver runs as for every type). Q8_0: the solver's blocks gave no measurable KLD gain without importance
(Qwen2.5-Coder-1.5B 1.015 +- 0.286 x llama.cpp's, SmolLM2 0.973 x; benchmarks/results/quality_*.md) at ten times
llama.cpp's time, so llama.cpp's blocks are kept, byte for byte (``SolverConfig.llama_cpp_types``)."""


_BLOCK_TYPE_NAMES = frozenset(t.name for t in QUANT_TYPES)


class WeightMode(str, Enum):
    """Element weights w of the objective ``sum w * (x - x_hat)**2`` (per block)."""

    NONE = "none"
    """w = 1: plain squared error."""
    ABS = "abs"
    """w = |x|."""
    SQUARE = "square"
    """w = x**2."""
    LLAMA = "llama"
    """The weights llama.cpp's own quantizer of the type uses without an imatrix: 1 for Q4_0..Q8_0 and TQ*,
    |x| for Q2_K, av_x + |x| (av_x = RMS of the 32-group) for Q4_K/Q5_K, x**2 for Q3_K/Q6_K/IQ4_*."""
    AUTO = "auto"
    """The default: LLAMA's weights, except where KLD on the dev models chose otherwise: |x| for Q3_K
    (Qwen2.5-Coder-1.5B Q3_K_S: mean KLD 0.959x llama.cpp's with |x|, 1.027x with llama.cpp's x**2)."""
    IMPORTANCE = "importance"
    """llama.cpp's imatrix weighting ``importance[j] * sqrt(sigma2 + x**2)``, sigma2 = mean x**2 of the row;
    without an importance vector (a tensor the imatrix does not cover), LLAMA's weights, as llama.cpp does."""


class Preset(str, Enum):
    """Named settings of :class:`SolverConfig` (``SolverConfig.preset(name, **overrides)``)."""

    FAST = "fast"
    """The defaults: llama.cpp's answer (plus one extra start for the one-scale block types; Q8_0 without
    importance is llama.cpp's answer alone, :data:`LLAMA_CPP_TYPES`), at most 4 iterations (2 for Q4_K and Q3_K,
    :data:`TYPE_ITERATIONS`), a block stops at its first iteration without improvement; blocks are solved on every
    CPU. Keeps most of THOROUGH's gain."""
    THOROUGH = "thorough"
    """5 extra starts, 12 iterations, no early stop, every block type solved: the lowest objective, 5-15x slower
    than FAST."""


_PRESETS: dict[Preset, dict[str, object]] = {
    Preset.FAST: {},
    Preset.THOROUGH: {"iterations": 12, "llama_cpp_types": (), "range_factors": (1.0, 0.95, 0.9, 0.85, 0.8),
                      "super_range_factors": (1.0, 0.95, 0.9, 0.85, 0.8), "patience": 0},
}


@dataclass(frozen=True)
class SolverConfig:
    """How :func:`hqq2gguf.optimize.solve` searches each block.

    The half-quadratic loop measures the error in quantization steps (error / group scale), shrinks it with
    the lp proximal operator (``p < 1``; ``p == 2`` turns shrinkage off: plain alternating least squares),
    and refits what the format leaves free to ``x - shrunk error``. ``beta`` starts at ``beta0`` and is
    multiplied by ``kappa`` every iteration (larger beta = stronger shrinkage). Every iterate is scored on the
    exact objective after snapping to the format; each block keeps its best, and never ends worse than
    llama.cpp's own answer for that block.

    When ``importance`` is passed with a mode other than IMPORTANCE, the mode's weights are multiplied by it.
    """

    weights: WeightMode = WeightMode.AUTO
    p: float = 0.7
    beta0: float = 1.0
    kappa: float = 1.05
    iterations: int | None = None
    """Half-quadratic iterations per block; None: :data:`TYPE_ITERATIONS` for the block type, else
    :data:`DEFAULT_ITERATIONS` (resolved by :meth:`for_type`)."""
    range_factors: tuple[float, ...] = (1.0,)
    """Extra starts besides llama.cpp's answer for the one-scale block types (Q4_0, Q5_1, IQ4_NL, ...):
    min/max (or absmax, both signs) fits of the range shrunk by each factor. Every start multiplies the work."""
    super_range_factors: tuple[float, ...] = ()
    """The same for K-quant super-blocks (per-sub-block range fits). None by default: on SmolLM2's ffn_down one
    extra start moved the objective 0.971 -> 0.969 x llama.cpp's (Q4_K; Q3_K 0.950 -> 0.942) for twice the time."""
    sub_scale_radius: int = 1
    """K-quants: integer sub-scales (and mins) tried around the rounded least-squares value, +-radius."""
    patience: int = 1
    """A (start, block) pair stops iterating after this many iterations in a row without improving its best
    (0: never; all run ``iterations``). Per block, so results do not depend on chunking."""
    chunk_blocks: int = 0
    """Blocks solved together: a tensor is cut into parts of whole rows holding at most this many blocks
    (one row at least); 0: :data:`CHUNK_ELEMENTS` elements' worth (1024 K-quant super-blocks, 8192 32-blocks).
    Memory bound: about 30 float32 copies of chunk_blocks * block * starts. The output does not depend on it."""
    threads: int = 1
    """torch intra-op threads while solving (0: leave torch's setting alone). 1 by default: the loop is many
    small memory-bound ops, and on a busy 2-core machine 2 OpenMP threads measured 10x SLOWER than 1;
    the parallelism comes from ``workers`` instead."""
    llama_cpp_types: tuple[str, ...] = LLAMA_CPP_TYPES
    """Block types (names, e.g. "Q8_0") whose blocks are llama.cpp's own, unsolved, when no importance is given:
    :data:`LLAMA_CPP_TYPES` by default, () to solve every type."""
    workers: int = 0
    """Row parts solved at the same time by this many threads, each running every step of its part (llama.cpp's
    answer, weights, loop, re-check) with single-threaded torch ops (0: one per CPU this process may use).
    The output does not depend on it."""

    def __post_init__(self) -> None:
        if not isinstance(self.weights, WeightMode):
            try:
                object.__setattr__(self, "weights", WeightMode(self.weights))
            except ValueError:
                known = ", ".join(m.value for m in WeightMode)
                raise OptionError(f"weights must be one of {known}, got {self.weights!r}") from None
        if not (0.0 < self.p <= 1.0 or self.p == 2.0):
            raise OptionError(f"p must lie in (0, 1] (lp shrinkage) or be 2 (no shrinkage), got {self.p}")
        if not (math.isfinite(self.beta0) and self.beta0 > 0):
            raise OptionError(f"beta0 must be a positive finite number, got {self.beta0}")
        if not (math.isfinite(self.kappa) and self.kappa >= 1.0):
            raise OptionError(f"kappa must be >= 1, got {self.kappa}")
        if self.iterations is not None and not (isinstance(self.iterations, int) and 0 <= self.iterations <= 1000):
            raise OptionError(f"iterations must be None or an integer in 0..1000, got {self.iterations!r}")
        for name in ("range_factors", "super_range_factors"):
            factors = tuple(float(f) for f in getattr(self, name))
            if any(not (0.0 < f <= 2.0) for f in factors):
                raise OptionError(f"{name} must lie in (0, 2], got {getattr(self, name)}")
            object.__setattr__(self, name, factors)
        names = tuple(str(t) for t in self.llama_cpp_types)
        if unknown := [t for t in names if t not in _BLOCK_TYPE_NAMES]:
            raise OptionError(f"llama_cpp_types: unknown block type(s) {', '.join(unknown)}")
        object.__setattr__(self, "llama_cpp_types", names)
        if not (isinstance(self.sub_scale_radius, int) and 0 <= self.sub_scale_radius <= 4):
            raise OptionError(f"sub_scale_radius must be an integer in 0..4, got {self.sub_scale_radius!r}")
        if not (isinstance(self.patience, int) and 0 <= self.patience <= 1000):
            raise OptionError(f"patience must be an integer in 0..1000, got {self.patience!r}")
        if not (isinstance(self.threads, int) and 0 <= self.threads <= 1024):
            raise OptionError(f"threads must be an integer in 0..1024, got {self.threads!r}")
        if not (isinstance(self.workers, int) and 0 <= self.workers <= 1024):
            raise OptionError(f"workers must be an integer in 0..1024, got {self.workers!r}")
        if not (isinstance(self.chunk_blocks, int) and self.chunk_blocks >= 0):
            raise OptionError(f"chunk_blocks must be 0 (automatic) or a positive integer, got {self.chunk_blocks!r}")

    @classmethod
    def preset(cls, name: Preset | str, **overrides: object) -> SolverConfig:
        """The settings of preset ``name`` (see :class:`Preset`), with ``overrides`` on top."""
        try:
            preset = Preset(name)
        except ValueError:
            known = ", ".join(p.value for p in Preset)
            raise OptionError(f"preset must be one of {known}, got {name!r}") from None
        return cls(**(_PRESETS[preset] | overrides))

    def for_type(self, name: str) -> SolverConfig:
        """This config with ``iterations`` resolved for block type ``name`` (e.g. "Q4_K")."""
        if self.iterations is not None:
            return self
        return dataclasses.replace(self, iterations=TYPE_ITERATIONS.get(name, DEFAULT_ITERATIONS))

    def blocks_per_part(self, block_size: int) -> int:
        """``chunk_blocks``, with 0 resolved for blocks of ``block_size`` elements."""
        return self.chunk_blocks or max(1, CHUNK_ELEMENTS // block_size)

    def worker_count(self) -> int:
        """``workers``, with 0 resolved to the CPUs this process may run on."""
        if self.workers:
            return self.workers
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not on Linux
            return max(1, os.cpu_count() or 1)

    def leaves_to_llama_cpp(self, name: str, weighted: bool) -> bool:
        """Whether blocks of type ``name`` are llama.cpp's own here: listed, no importance (``weighted``), and an
        objective whose weights are 1 for the type (what the measurement behind :data:`LLAMA_CPP_TYPES` used)."""
        plain = self.weights in (WeightMode.AUTO, WeightMode.LLAMA, WeightMode.NONE)
        return plain and not weighted and name in self.llama_cpp_types

    @property
    def shrinks(self) -> bool:
        """True when the half-quadratic lp shrinkage is on (p < 2)."""
        return self.p < 2.0
