"""What an allocation is, and the three ways it is shown: a table, llama-quantize's arguments, provenance keys.

    allocation.types()                       # {name: type}, applied by make_plan as --tensor-type would be
    format_table(allocation)                 # tensor, type, bytes, predicted cost (and the recipe's type)
    llama_quantize_args(allocation, quant)   # ["--tensor-type", "^blk\\.0\\.attn_q\\.weight$=q4_k", ...]
    allocation.provenance()                  # the hqq2gguf.allocation* keys of the output file
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import gguf

from hqq2gguf import PROVENANCE_PREFIX
from hqq2gguf.recipes import QuantOptions

KEY = PROVENANCE_PREFIX + "allocation"
TENSORS_KEY = KEY + ".tensors"
COSTS_KEY = KEY + ".costs"


@dataclass(frozen=True)
class Choice:
    """One allocated tensor: its type, the bytes it takes in the file, its predicted cost, and the recipe's."""

    name: str
    qtype: gguf.GGMLQuantizationType
    nbytes: int
    cost: float
    recipe_type: gguf.GGMLQuantizationType
    recipe_nbytes: int
    recipe_cost: float


@dataclass(frozen=True)
class Allocation:
    """The type of every allocated tensor (file order) within a byte budget. Tensors the allocator does not
    choose (norms, 1-D, the user's fixed overrides) keep the recipe's types and count as ``fixed_bytes``."""

    target: str
    """What set the budget, as the user asked: ``--target-size 4200000000``, ``--type Q4_K_M --allocate``."""
    budget: int
    """Bytes the tensor data may take in the file (each tensor padded to the data alignment)."""
    fixed_bytes: int
    choices: tuple[Choice, ...]
    sampled_rows: int
    seconds: float
    sensitivity: Mapping[str, object] = field(default_factory=dict)
    """How the sensitivities were measured (empty: they were not; every error cost the same)."""

    @property
    def nbytes(self) -> int:
        """The tensor data's bytes in the file: never above ``budget``."""
        return self.fixed_bytes + sum(c.nbytes for c in self.choices)

    @property
    def cost(self) -> float:
        return sum(c.cost for c in self.choices)

    @property
    def recipe_cost(self) -> float:
        """The predicted cost of the recipe's own types for the same tensors."""
        return sum(c.recipe_cost for c in self.choices)

    @property
    def recipe_nbytes(self) -> int:
        """The tensor data's bytes with the recipe's own types (the fixed tensors included)."""
        return self.fixed_bytes + sum(c.recipe_nbytes for c in self.choices)

    def types(self) -> dict[str, gguf.GGMLQuantizationType]:
        return {c.name: c.qtype for c in self.choices}

    def provenance(self) -> dict[str, str | list[str] | list[float]]:
        """The output file's record of the allocation: budget and totals (JSON), then each tensor's type and
        predicted cost, in file order."""
        summary = {"target": self.target, "budget": self.budget, "bytes": self.nbytes,
                   "predicted_cost": float(f"{self.cost:.6g}"), "recipe_cost": float(f"{self.recipe_cost:.6g}"),
                   "sampled_rows": self.sampled_rows, "sensitivity": dict(self.sensitivity) or None}
        return {KEY: json.dumps(summary, sort_keys=True),
                TENSORS_KEY: [f"{c.name}={c.qtype.name}" for c in self.choices],
                COSTS_KEY: [float(c.cost) for c in self.choices]}


def kv_nbytes(key: str, value: str | Sequence[str] | Sequence[float]) -> int:
    """The bytes a GGUF key/value pair takes in the header: a string, or an array of strings or float32."""
    head = 8 + len(key.encode()) + 4  # key length, key, value type
    if isinstance(value, str):
        return head + 8 + len(value.encode())
    items = sum(8 + len(v.encode()) if isinstance(v, str) else 4 for v in value)
    return head + 4 + 8 + items  # item type, count, items


def provenance_nbytes(values: Mapping[str, str | Sequence[str] | Sequence[float]]) -> int:
    return sum(kv_nbytes(k, v) for k, v in values.items())


def format_table(allocation: Allocation) -> list[str]:
    """One line per allocated tensor, then the totals."""
    width = max([len(c.name) for c in allocation.choices] + [6])
    lines = [f"{'tensor':<{width}}  {'type':<6}  {'recipe':<6}  {'bytes':>12}  {'predicted cost':>14}"]
    for c in allocation.choices:
        lines.append(f"{c.name:<{width}}  {c.qtype.name:<6}  {c.recipe_type.name:<6}  {c.nbytes:>12,}  "
                     f"{c.cost:>14.4g}")
    lines.append(f"allocated {len(allocation.choices)} tensors ({allocation.target}) in {allocation.seconds:.1f} s: "
                 f"tensor data {allocation.nbytes:,} of {allocation.budget:,} bytes, predicted cost "
                 f"{allocation.cost:.4g}; the recipe's types: {allocation.recipe_nbytes:,} bytes, predicted cost "
                 f"{allocation.recipe_cost:.4g}")
    return lines


def llama_quantize_args(allocation: Allocation, quant: QuantOptions) -> list[str]:
    """llama-quantize's options that reproduce the mix from the same F16 input: the user's own overrides,
    then one ``--tensor-type`` per allocated tensor (an anchored, escaped pattern: it names that tensor only)."""
    args: list[str] = []
    if quant.output_tensor_type is not None:
        args += ["--output-tensor-type", quant.output_tensor_type.name.lower()]
    if quant.token_embedding_type is not None:
        args += ["--token-embedding-type", quant.token_embedding_type.name.lower()]
    if quant.leave_output_tensor:
        args.append("--leave-output-tensor")
    if quant.pure:
        args.append("--pure")
    for pattern, qtype in quant.tensor_types:
        args += ["--tensor-type", f"{pattern}={qtype.name.lower()}"]
    for c in allocation.choices:
        args += ["--tensor-type", f"^{re.escape(c.name)}$={c.qtype.name.lower()}"]
    return args
