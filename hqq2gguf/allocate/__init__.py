"""Allocate: each weight matrix's type, chosen by measured error within a byte budget (instead of a recipe's
fixed rules), for ``--target-size``, ``--target-bpw`` and ``--type RECIPE --allocate``.

    allocation = allocate(source, options, importance, runnable)   # None unless options ask for one
    plan = make_plan(source, options, allocation.types())  # applied as --tensor-type would be

1. the recipe's plan says which tensors are matrices to allocate and gives the budget of ``--allocate`` (its
   bytes, less what the allocation adds to the file's metadata). Not allocated, keeping the recipe's types:
   norms and 1-D tensors; what the user fixed with --tensor-type / --output-tensor-type /
   --token-embedding-type; and the token embedding of a model with its own output.weight, a lookup table
   that the cost below (error x input importance) does not describe: on a tiny Llama, costing it as the
   per-token error of the row it looks up put it at Q2_K and raised the KLD of a Q4_K_M-sized file from
   0.035 to 0.13 (0.028 with it kept at Q4_K);
2. each matrix gets candidate types (:data:`~.costs.LADDER` through llama.cpp's shape fallbacks, the recipe's
   own type, F16) with bytes and predicted cost: the KLD it adds, its squared output error measured by the
   solver on sampled rows times the matrix's sensitivity measured on the model's own text (:mod:`.costs`,
   :mod:`hqq2gguf.calibrate.sensitivity`). Without sensitivities the cost on SmolLM2-135M at Q4_K_M's bytes
   measured 1.11x the recipe types' KLD; with them 0.75x. Only a window of each matrix's candidates around its
   recipe type is costed, widened while the choice could move past it (:mod:`.windows`): the whole ladder's
   choice for about 0.6x the costing time;
3. the cheapest mix that fits is chosen (:mod:`.choose`).

Budgets count the tensor data as it lies in the file (each tensor padded to the data alignment); the file
adds its header and metadata. A budget outside what the candidates can reach is an OptionError naming the range.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import gguf

from hqq2gguf.allocate.choose import Option, TensorOptions, choose, feasible_range
from hqq2gguf.allocate.costs import SAMPLED_ROWS, candidate_types, file_bytes, measure_costs
from hqq2gguf.allocate.result import (
    Allocation, Choice, format_table, llama_quantize_args, provenance_nbytes,
)
from hqq2gguf.allocate.windows import Windows
from hqq2gguf.calibrate import Importance, Sensitivity, measure_sensitivity
from hqq2gguf.errors import OptionError
from hqq2gguf.options import ConvertOptions
from hqq2gguf.plan import PlannedTensor, make_plan
from hqq2gguf.recipes import Category, allows_quantization, category
from hqq2gguf.recipes.recipe import is_quantized
from hqq2gguf.recipes.model import TensorInfo
from hqq2gguf.recipes.rules import OUTPUT_NAME, Q8_FLOOR_BY_ARCH
from hqq2gguf.sources import Source

logger = logging.getLogger(__name__)

__all__ = ["Allocation", "Choice", "allocate", "check_budget", "format_table", "llama_quantize_args"]

_MAX_RESERVE_ROUNDS = 8


@dataclass(frozen=True)
class _Layout:
    """The recipe's plan split into what is allocated (name -> candidate types) and what is not."""

    recipe: dict[str, PlannedTensor]
    candidates: dict[str, tuple[gguf.GGMLQuantizationType, ...]]
    fixed_bytes: int
    user_fixed_bytes: int

    def range(self) -> tuple[int, int]:
        """The bytes of the smallest and the largest mix, the fixed tensors included."""
        sizes = [[file_bytes(self.recipe[n].shape, t) for t in types] for n, types in self.candidates.items()]
        return self.fixed_bytes + sum(map(min, sizes)), self.fixed_bytes + sum(map(max, sizes))


def allocate(source: Source, options: ConvertOptions, importance: Importance,
             runnable: Path | None = None) -> Allocation | None:
    """The allocation ``options`` ask for (None when they ask for none). The budget is checked against the
    feasible range before any tensor is read; then the candidates' sensitivities are measured on ``runnable``
    (a GGUF of the source llama.cpp runs; without one, every error costs the same) and the candidates of each
    matrix's window costed, the tensors read one at a time, again in each round that widens their windows."""
    if not options.allocating:
        return None
    start = time.perf_counter()
    layout, target, budget = _checked_budget(source, options)
    logger.info("allocation (%s): measuring %d tensors x up to %d types on at most %d rows each", target,
                len(layout.candidates), max(map(len, layout.candidates.values()), default=0), SAMPLED_ROWS)
    sensitivity = (Sensitivity() if runnable is None else
                   measure_sensitivity(runnable, list(layout.candidates), seed=options.seed or 0,
                                       written=importance.sequences))

    def measure(wanted: Mapping[str, tuple[gguf.GGMLQuantizationType, ...]]) -> list[TensorOptions]:
        return measure_costs(source, wanted, importance, options.solver, sensitivity, options.device)

    allocation, costs = choose_in_windows(layout, target, budget, options.allocate, measure, sensitivity.record,
                                          start)
    n_measured, n_ladder = sum(map(len, costs.values())), sum(map(len, layout.candidates.values()))
    logger.info("allocation: %d tensors typed in %.1f s (%d of the ladders' %d candidates measured), tensor data %s "
                "of %s bytes", len(allocation.choices), allocation.seconds, n_measured, n_ladder,
                f"{allocation.nbytes:,}", f"{allocation.budget:,}")
    return allocation


def choose_in_windows(layout: _Layout, target: str, budget: int, within_recipe_file: bool,
                      measure: Callable[[Mapping[str, tuple[gguf.GGMLQuantizationType, ...]]], list[TensorOptions]],
                      record: Mapping[str, object], start: float
                      ) -> tuple[Allocation, dict[str, dict[gguf.GGMLQuantizationType, Option]]]:
    """The allocation from each matrix's window of candidates, widened until it is the whole ladder's
    (:mod:`.windows`), and every candidate measured: ``measure(name -> types)`` gives their options.
    ``within_recipe_file``: the file must stay within the recipe's (``--allocate``)."""
    windows = _windows(layout, budget)
    costs: dict[str, dict[gguf.GGMLQuantizationType, Option]] = {}
    for round_ in itertools.count(1):
        wanted = windows.unmeasured(costs)
        logger.info("allocation: round %d, measuring %d candidates of %d tensors", round_,
                    sum(map(len, wanted.values())), len(wanted))
        for t in measure(wanted):
            costs.setdefault(t.name, {}).update((o.qtype, o) for o in t.options)
        tables = windows.tables(costs)
        recipe = {n: costs[n][layout.recipe[n].out_type] for n in layout.candidates}
        measured = _Measured(tables, recipe, record, start)
        try:
            if within_recipe_file:  # its own metadata comes out of the budget
                allocation = _within_recipe_file(target, budget, measured, layout)
            else:
                allocation = _allocation(target, budget, measured, layout)
        except _TooNarrow:
            if windows.widen_down():
                continue
            raise OptionError(f"{target}: no mix of the candidates fits (internal error)") from None
        chosen = {c.name: Option(c.qtype, c.nbytes, c.cost) for c in allocation.choices}
        if not windows.widen(chosen, tables, allocation.budget - allocation.nbytes):
            return allocation, costs
    raise AssertionError("unreachable")


def check_budget(source: Source, options: ConvertOptions) -> None:
    """Refuse a budget the candidates cannot reach (an OptionError naming the feasible range): before anything
    is calibrated or measured."""
    if options.allocating:
        _checked_budget(source, options)


def _checked_budget(source: Source, options: ConvertOptions) -> tuple[_Layout, str, int]:
    layout = _layout(source, options)
    target, budget = _budget(source, options, layout)
    low, high = layout.range()
    if not low <= budget <= high:
        raise OptionError(_range_message(target, budget, low, high, layout, source))
    return layout, target, budget


def _layout(source: Source, options: ConvertOptions) -> _Layout:
    recipe = {t.name: t for t in make_plan(source, options).tensors}
    tied = OUTPUT_NAME not in recipe
    floors = Q8_FLOOR_BY_ARCH.get(source.arch, ())
    candidates, fixed, user_fixed = {}, 0, 0
    for t in recipe.values():
        info = TensorInfo(t.name, t.shape, t.out_type)
        user = _fixed_by_user(t.name, tied, options)
        lookup = category(t.name) is Category.TOKEN_EMBD and not tied
        if (user or lookup or not is_quantized(t.out_type) or any(s in t.name for s in floors)
                or not allows_quantization(t.name, info.n_dims, source.arch,
                                           leave_output_tensor=options.quant.leave_output_tensor)):
            fixed += file_bytes(t.shape, t.out_type)
            user_fixed += file_bytes(t.shape, t.out_type) if user else 0
        else:
            candidates[t.name] = candidate_types(info.ne0, t.out_type)
    return _Layout(recipe, candidates, fixed, user_fixed)


def _fixed_by_user(name: str, tied: bool, options: ConvertOptions) -> bool:
    """Whether the user's own per-tensor options decide this tensor's type (llama-quantize's precedence)."""
    q, cat = options.quant, category(name)
    if q.token_embedding_type is not None and cat is Category.TOKEN_EMBD:
        return True
    if q.output_tensor_type is not None and (cat is Category.OUTPUT or (tied and cat is Category.TOKEN_EMBD)):
        return True
    return any(re.search(pattern, name) for pattern, _ in q.tensor_types)


def _budget(source: Source, options: ConvertOptions, layout: _Layout) -> tuple[str, int]:
    """What the user asked for, in words, and the bytes it allows the tensor data."""
    if options.target_size is not None:
        return f"--target-size {options.target_size}", options.target_size
    if options.target_bpw is not None:
        n_weights = sum(math.prod(t.shape) for t in layout.recipe.values())
        return f"--target-bpw {options.target_bpw:g}", math.floor(options.target_bpw * n_weights / 8)
    recipe_bytes = sum(file_bytes(t.shape, t.out_type) for t in layout.recipe.values())
    return f"--type {options.recipe.value} --allocate", recipe_bytes


def _range_message(target: str, budget: int, low: int, high: int, layout: _Layout, source: Source) -> str:
    n_weights = sum(math.prod(t.shape) for t in layout.recipe.values())
    def size(n: int) -> str:
        return f"{n:,} bytes ({n / 1e6:.3f} MB, {8 * n / n_weights:.3f} bpw)"
    fixed = (f"; {layout.user_fixed_bytes:,} bytes of it fixed by --tensor-type/--output-tensor-type/"
             "--token-embedding-type" if layout.user_fixed_bytes else "")
    return (f"{target}: {size(budget)} of tensor data is outside what {source.path.name} can take: from "
            f"{size(low)} (the smallest candidate types) to {size(high)} (F16){fixed}")


@dataclass(frozen=True)
class _Measured:
    """Every candidate's bytes and cost, how the sensitivities were measured, and when allocating started."""

    tables: list[TensorOptions]
    recipe: Mapping[str, Option]
    """Each tensor's option at its recipe type (measured though its window may not hold it)."""
    sensitivity: Mapping[str, object]
    start: float


class _TooNarrow(Exception):
    """The windows' smallest mix does not fit the budget (the whole ladder's does: checked before)."""


def _windows(layout: _Layout, budget: int) -> Windows:
    """Each allocated matrix's window of candidates, around its recipe type (:mod:`.windows`)."""
    ladders = {n: sorted(((t, file_bytes(layout.recipe[n].shape, t)) for t in types), key=lambda x: (x[1], int(x[0])))
               for n, types in layout.candidates.items()}
    start = {n: layout.recipe[n].out_type for n in layout.candidates}
    return Windows.around(ladders, start, budget - layout.fixed_bytes)


def _allocation(target: str, budget: int, measured: _Measured, layout: _Layout) -> Allocation:
    if budget - layout.fixed_bytes < feasible_range(measured.tables)[0]:
        raise _TooNarrow
    chosen = choose(measured.tables, budget - layout.fixed_bytes)
    choices = []
    for t in measured.tables:
        recipe = measured.recipe[t.name]
        pick: Option = chosen[t.name]
        choices.append(Choice(t.name, pick.qtype, pick.nbytes, pick.cost, recipe.qtype, recipe.nbytes, recipe.cost))
    return Allocation(target, budget, layout.fixed_bytes, tuple(choices), SAMPLED_ROWS,
                      time.perf_counter() - measured.start, measured.sensitivity)


def _within_recipe_file(target: str, budget: int, measured: _Measured, layout: _Layout) -> Allocation:
    """The allocation whose file is no larger than the recipe's: what it adds to the header (its provenance
    keys, type names, alignment) is reserved out of the budget, until the reserve covers it."""
    reserve = 0
    for _ in range(_MAX_RESERVE_ROUNDS):
        allocation = _allocation(target, budget - reserve, measured, layout)
        needed = _header_growth(allocation, layout)
        if needed <= reserve:
            return allocation
        reserve = needed
        if budget - reserve < layout.range()[0]:
            raise OptionError(f"{target}: the recipe's {budget:,} bytes leave no room for the allocation's "
                              f"{reserve:,} bytes of metadata")
    raise OptionError(f"{target}: the metadata reserve did not settle (internal error)")


def _header_growth(allocation: Allocation, layout: _Layout) -> int:
    """Bytes the allocated file's header may have beyond the recipe file's: the allocation's keys, the longer
    list of distinct types (hqq2gguf.tensor_types), and the header's padding to the data alignment."""
    recipe_types = {t.out_type.name for t in layout.recipe.values()}
    allocated = {t.out_type.name for n, t in layout.recipe.items() if n not in layout.candidates}
    allocated |= {c.qtype.name for c in allocation.choices}
    growth = sum(8 + len(t) for t in allocated - recipe_types) - sum(8 + len(t) for t in recipe_types - allocated)
    return provenance_nbytes(allocation.provenance()) + growth + gguf.GGUF_DEFAULT_ALIGNMENT - 1
