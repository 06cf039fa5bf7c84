"""Conversion options: one frozen dataclass, validated on construction; the CLI maps 1:1 onto it."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import gguf

from hqq2gguf.errors import OptionError
from hqq2gguf.optimize.config import SolverConfig, WeightMode
from hqq2gguf.recipes import QuantOptions, Recipe

E = TypeVar("E", bound=Enum)

#: ``--bits N``: the recipe the seed documents map each bit width to.
BITS_RECIPES = {"8": "Q8_0", "6": "Q6_K", "5": "Q5_K_M", "4": "Q4_K_M", "3": "Q3_K_M", "2": "Q2_K", "1": "TQ1_0"}


def _parse(enum: type[E], value: str, option: str) -> E:
    try:
        return enum(value)
    except ValueError:
        raise OptionError(f"{option} must be one of {', '.join(m.value for m in enum)}, got {value!r}") from None


class Device(str, Enum):
    """Where the HQQ solver runs (``--device``)."""

    AUTO = "auto"
    """The fused CUDA kernels when a GPU, CuPy and the compiled kernels are all usable; CPU otherwise, with a log
    line saying why."""
    CPU = "cpu"
    """The CPU: the same kernel sources compiled by the host C++ compiler (the torch solver's bytes, several times
    faster), the torch solver where they cannot promise its bytes (no C++ compiler, say; a log line says why)."""
    CUDA = "cuda"
    """The fused CUDA kernels; an error (not a fallback) when they cannot run."""
    TORCH = "torch"
    """The pure-torch solver on the CPU: the reference, and the test oracle of the kernels."""


class ImportanceSource(str, Enum):
    """Where column importance comes from when no imatrix file is given (``--importance``)."""

    NONE = "none"
    """Uniform: every column counts the same (llama.cpp without an imatrix)."""
    NORMS = "norms"
    """The squared weight of the norm feeding each matrix (data-free; see
    :func:`hqq2gguf.calibrate.proxy.norm_importance`)."""
    DERIVED = "derived"
    """NORMS, plus weight-derived estimates for the matrices no norm feeds (attn_output, ffn_down; see
    :func:`hqq2gguf.calibrate.proxy.derived_importance`). Reads attn_v, ffn_gate and ffn_up once more before writing."""


class Calibration(str, Enum):
    """Where column importance comes from when no ``--imatrix`` is given (``--calibration``; a path means the
    user's own text)."""

    AUTO = "auto"
    """The default: SELF for the recipes in :data:`SELF_CALIBRATED` when neither ``--imatrix`` nor
    ``--importance`` is given, NONE otherwise."""
    SELF = "self"
    """The model writes its own text (random vocabulary starts, several temperatures) and llama.cpp reads it
    back, as llama-imatrix would: the statistics of an imatrix, with no data from the user."""
    NONE = "none"
    """No text: uniform importance, or the data-free proxy of ``--importance``."""


SELF_CALIBRATED: frozenset[str] = frozenset({
    "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K",
    "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0"})
"""Recipes that calibrate on the model's own text by default. Measured to lower KLD (benchmarks/results/
quality_*-default.md, self_calibration_summary.md): Q2_K, Q3_K_S, Q3_K_M, Q4_K_S, Q4_K_M, Q5_K_M, Q6_K, IQ4_XS,
Q4_0 on SmolLM2, Q2_K/Q3_K_M/Q4_K_M on both Qwen2.5-Coder models; the rest share those block types' solver and
objective and are not measured yet. Q8_0 keeps its speed (its KLD is at the noise floor)."""


def resolve_calibration(calibration: Calibration | Path, recipe: Recipe | None, imatrix: Path | None,
                        importance: ImportanceSource) -> Calibration | Path:
    """AUTO made concrete: SELF for a self-calibrated recipe with no imatrix and no data-free importance."""
    if calibration is not Calibration.AUTO:
        return calibration
    if recipe is None or imatrix is not None or importance is not ImportanceSource.NONE:
        return Calibration.NONE
    return Calibration.SELF if recipe.value in SELF_CALIBRATED else Calibration.NONE


class OutType(str, Enum):
    """Output encoding of the weight matrices (1-D tensors and norms stay F32, as in llama.cpp)."""

    F32 = "f32"
    """Exact copy of F32 inputs (and exact widening of F16/BF16)."""
    F16 = "f16"
    """IEEE half precision: llama.cpp's default for F32/F16 checkpoints."""
    BF16 = "bf16"
    """bfloat16: exact for BF16 checkpoints."""
    Q8_0 = "q8_0"
    """8-bit blocks of 32 with an fp16 scale, rounded to nearest (llama.cpp's converter Q8_0)."""
    AUTO = "auto"
    """The checkpoint's own precision, losslessly: BF16 for BF16 weights, F16 for F16, F32 for F32.
    (llama.cpp's converter picks F16 for F32 checkpoints, which rounds; this does not.)"""

    @property
    def tensor_type(self) -> gguf.GGMLQuantizationType:
        """The ggml type of the weight matrices (not defined for AUTO, which depends on the input)."""
        return _OUTTYPE_TENSOR_TYPE[self]

    @property
    def file_type(self) -> gguf.LlamaFileType:
        return FILE_TYPES[self.tensor_type]

    @property
    def label(self) -> str:
        """The encoding part of the file name (``F16``, ``Q8_0`` ...), as llama.cpp names it."""
        return self.file_type.name.partition("_")[2]


_OUTTYPE_TENSOR_TYPE = {
    OutType.F32: gguf.GGMLQuantizationType.F32,
    OutType.F16: gguf.GGMLQuantizationType.F16,
    OutType.BF16: gguf.GGMLQuantizationType.BF16,
    OutType.Q8_0: gguf.GGMLQuantizationType.Q8_0,
}
# general.file_type of an unquantized conversion whose weight matrices have this type.
FILE_TYPES = {
    gguf.GGMLQuantizationType.F32: gguf.LlamaFileType.ALL_F32,
    gguf.GGMLQuantizationType.F16: gguf.LlamaFileType.MOSTLY_F16,
    gguf.GGMLQuantizationType.BF16: gguf.LlamaFileType.MOSTLY_BF16,
    gguf.GGMLQuantizationType.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0,
}


def parse_split_size(text: str) -> int:
    """``--split-max-size`` as llama.cpp's converter reads it: bytes, or a whole number followed by K, M or G
    (powers of 1000: ``50G`` is 50 * 1000**3 bytes)."""
    factor = {"K": 1000, "M": 1000**2, "G": 1000**3}.get(text[-1:], 1)
    digits = text[:-1] if factor > 1 else text
    if not digits.isdecimal():
        raise OptionError(f"--split-max-size must be a number of bytes, optionally followed by K, M or G "
                          f"(e.g. 50G), got {text!r}")
    return int(digits) * factor


#: The recipe an allocation without ``--type`` starts from: its general.file_type, calibration default and the
#: types of the tensors the allocator does not choose (norms stay F32 whatever it is).
ALLOCATION_BASE = Recipe.Q4_K_M

_SIZE_UNITS = {"": 1, "B": 1, "K": 1000, "KB": 1000, "M": 1000**2, "MB": 1000**2, "G": 1000**3, "GB": 1000**3,
               "T": 1000**4, "TB": 1000**4, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str) -> int:
    """``--target-size``: bytes, or a number with a unit (``4.2GB``, ``3.9GiB``, ``500M``; K/M/G/T and KB/MB/GB/TB
    are powers of 1000, KiB/MiB/GiB/TiB powers of 1024), rounded down to whole bytes."""
    number = text.strip().rstrip("BbIiKkMmGgTt")
    unit = text.strip()[len(number):].strip().upper()
    try:
        value = float(number) * _SIZE_UNITS[unit]
    except (ValueError, KeyError):
        raise OptionError(f"--target-size must be bytes or a size such as 4.2GB or 3.9GiB, got {text!r}") from None
    if not (value >= 1 and value < 2**63):
        raise OptionError(f"--target-size must be a size from 1 byte up, got {text!r}")
    return int(value)


@dataclass(frozen=True)
class ConvertOptions:
    """Everything that decides the output bytes (and where they go)."""

    outtype: OutType = OutType.F16
    output: Path | None = None
    """A file path, an existing directory (file named by the GGUF naming convention), or None (next to
    the input, named by the convention)."""
    force: bool = False
    """Overwrite an existing output file."""
    allow_requantize: bool = False
    """Accept an already-quantized GGUF input: it is dequantized first (lossy twice)."""
    allow_pickle: bool = False
    """Load pickle checkpoints (.bin/.pt) with torch.load(weights_only=True). Refused by default."""
    model_name: str | None = None
    """Override general.name (and so the file name)."""
    check_finite: bool = True
    """Refuse tensors holding NaN or Inf (named in the error)."""
    recipe: Recipe | None = None
    """Quantize with llama.cpp's per-tensor types for this recipe (``--type Q4_K_M``), blocks chosen by the
    HQQ solver. ``outtype`` then only sets the type of the tensors the recipe leaves unquantized."""
    quant: QuantOptions = QuantOptions()
    """llama-quantize's per-tensor overrides (--output-tensor-type, --tensor-type, --pure, ...)."""
    solver: SolverConfig = SolverConfig()
    """How the HQQ solver searches each block."""
    imatrix: Path | None = None
    """llama.cpp's importance matrix (GGUF or legacy .dat): per-column weights of the solver's objective."""
    importance: ImportanceSource = ImportanceSource.NONE
    """Data-free column importance when no imatrix is given (see :mod:`hqq2gguf.calibrate`)."""
    device: Device = Device.CPU
    """Where the solver runs: the torch path (CPU), the fused CUDA kernels, or AUTO (CUDA when usable). The
    output bytes are meant to be the same (cuda/README.md says how far that is verified)."""
    calibration: Calibration | Path = Calibration.AUTO
    """Column importance from text when no imatrix is given: the model's own (SELF), none, or a text file; AUTO
    (the default) is resolved to SELF or NONE at construction (:func:`resolve_calibration`)."""
    save_calibration: Path | None = None
    """Where to keep the calibration text that was read (for inspection)."""
    group_size: int | None = None
    """HQQ's group size, accepted for compatibility: the recipe's block type fixes it, other values are refused."""
    seed: int | None = None
    """Seeds the self-calibration text (``calibration=SELF``; None: 0). The solver draws no random numbers, so
    without self-calibration every seed gives the same bytes; with it, the same seed gives the same bytes."""
    revision: str | None = None
    """The revision (branch, tag or commit) of a Hugging Face Hub id input (``--revision``); default ``main``."""
    split_max_size: int = 0
    """Split the output into parts of at most this many bytes, as llama.cpp's converter's ``--split-max-size``
    (given as a string: bytes, or a number followed by K, M or G, powers of 1000); 0: no limit."""
    split_max_tensors: int = 0
    """Split the output into parts of at most this many tensors (``--split-max-tensors``); 0: no limit."""
    target_size: int | None = None
    """Choose every weight matrix's type by measured error so that the tensor data takes at most this many bytes
    in the file (``--target-size``; a string such as ``4.2GB`` is parsed by :func:`parse_size`)."""
    target_bpw: float | None = None
    """As ``target_size``, the budget given in bits per weight over all tensors (``--target-bpw``)."""
    allocate: bool = False
    """As ``target_size``, with the recipe's own bytes as the budget (``--type RECIPE --allocate``): the file is
    no larger than the recipe's."""
    feedback: bool = True
    """Error feedback across each row's blocks from the calibration text's input covariances
    (:mod:`hqq2gguf.feedback`; ``--no-feedback`` turns it off). Only with calibration text (self or a file of at
    least :data:`~hqq2gguf.calibrate.FEEDBACK_MIN_TOKENS` tokens). Measured at recipes' types: 0.78-0.92x the
    KLD on three models, no change shown on a fourth (Qwen2.5-Coder-1.5B); about 2x the conversion's time on a
    CPU."""

    def __post_init__(self) -> None:
        if self.recipe is None and (self.target_size is not None or self.target_bpw is not None):
            object.__setattr__(self, "recipe", ALLOCATION_BASE)
        if not isinstance(self.outtype, OutType):
            raise OptionError(f"outtype must be one of {[t.value for t in OutType]}, got {self.outtype!r}")
        if self.recipe is not None and not isinstance(self.recipe, Recipe):
            raise OptionError(f"recipe must be one of {[r.value for r in Recipe]}, got {self.recipe!r}")
        if self.recipe is not None and self.outtype is OutType.Q8_0:
            raise OptionError("--outtype q8_0 and --type are exclusive: use --type Q8_0")
        if not isinstance(self.importance, ImportanceSource):
            raise OptionError(f"importance must be one of {[s.value for s in ImportanceSource]}, "
                              f"got {self.importance!r}")
        if self.quant.has_imatrix != (self.imatrix is not None):  # llama.cpp's recipe rules read it
            object.__setattr__(self, "quant", dataclasses.replace(self.quant, has_imatrix=self.imatrix is not None))
        if not isinstance(self.device, Device):
            raise OptionError(f"device must be one of {[d.value for d in Device]}, got {self.device!r}")
        if self.recipe is None and self.device is not Device.CPU:
            raise OptionError("--device chooses where the quantization solver runs: it needs --type (or --bits)")
        if self.recipe is None and (self.imatrix is not None or self.importance is not ImportanceSource.NONE):
            raise OptionError("--imatrix and --importance need --type (or --bits)")
        if not isinstance(self.calibration, (Calibration, Path)):
            raise OptionError(f"calibration must be one of {[c.value for c in Calibration]} or a Path, "
                              f"got {self.calibration!r}")
        object.__setattr__(self, "calibration", resolve_calibration(self.calibration, self.recipe, self.imatrix,
                                                                    self.importance))
        if self.importance is not ImportanceSource.NONE and self.calibrated:
            raise OptionError("--importance is the data-free alternative to calibration: give --calibration none")
        if self.save_calibration is not None and not self.calibrated:
            raise OptionError("--save-calibration needs calibration text (--calibration self or FILE, no --imatrix)")
        if self.model_name is not None and not self.model_name.strip():
            raise OptionError("model name must not be empty")
        if self.recipe is None and (self.group_size is not None or self.seed is not None):
            raise OptionError("--group-size and --seed need --type (or --bits)")
        if self.group_size is not None:
            self.recipe.check_group_size(self.group_size)
        if self.recipe is None and dataclasses.replace(self.quant, has_imatrix=False) != QuantOptions():
            raise OptionError("per-tensor type options need --type (or --bits)")
        self._check_split_and_revision()
        self._check_allocation()

    def _check_split_and_revision(self) -> None:
        if isinstance(self.split_max_size, str):
            object.__setattr__(self, "split_max_size", parse_split_size(self.split_max_size))
        for name in ("split_max_size", "split_max_tensors"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise OptionError(f"--{name.replace('_', '-')} must be a whole number >= 0, got {value!r}")
        if self.split_max_size and self.split_max_tensors:
            raise OptionError("--split-max-size and --split-max-tensors are exclusive (as in llama.cpp's converter)")
        if self.revision is not None and not self.revision.strip():
            raise OptionError("--revision must not be empty")

    def _check_allocation(self) -> None:
        if isinstance(self.target_size, str):
            object.__setattr__(self, "target_size", parse_size(self.target_size))
        if sum((self.target_size is not None, self.target_bpw is not None, self.allocate)) > 1:
            raise OptionError("--target-size, --target-bpw and --allocate are exclusive")
        size = self.target_size
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
            raise OptionError(f"--target-size must be a whole number of bytes >= 1, got {self.target_size!r}")
        bpw = self.target_bpw
        if bpw is not None and (isinstance(bpw, bool) or not isinstance(bpw, (int, float)) or not 0 < bpw < 64):
            raise OptionError(f"--target-bpw must be a number of bits per weight above 0, got {bpw!r}")
        if self.allocate and self.recipe is None:
            raise OptionError("--allocate re-allocates a recipe's bytes: give --type (or --bits)")

    @classmethod
    def from_args(cls, *, recipe: str | None = None, bits: str | int | None = None, outtype: str = "f16",
                  output_tensor_type: str | None = None, keep_lm_head_fp16: bool = False,
                  token_embedding_type: str | None = None, tensor_type: Sequence[str] = (), pure: bool = False,
                  leave_output_tensor: bool = False, imatrix: Path | None = None, importance: str = "none",
                  device: str = "cpu", solver_weights: str | None = None, solver_iterations: int | None = None,
                  calibration: str = "auto", target_size: str | int | None = None,
                  target_bpw: float | None = None, **kwargs: Any) -> ConvertOptions:
        """Options from the command line's words (``hqq2gguf convert``'s options, one keyword each), with its
        shorthands resolved: ``bits`` for ``recipe``, ``keep_lm_head_fp16`` for ``output_tensor_type="F16"``,
        ``solver_weights`` defaulting to ``importance`` with an imatrix. Every conflict is an OptionError,
        whether it comes from here or from the fields' own validation."""
        if recipe is not None and bits is not None:
            raise OptionError("--type and --bits are exclusive")
        if bits is not None and str(bits) not in BITS_RECIPES:
            raise OptionError(f"--bits must be one of {', '.join(sorted(BITS_RECIPES))}, got {bits!r}")
        if keep_lm_head_fp16:
            if output_tensor_type is not None:
                raise OptionError("--keep-lm-head-fp16 and --output-tensor-type are exclusive")
            output_tensor_type = "F16"
        chosen = recipe or (BITS_RECIPES[str(bits)] if bits is not None else None)
        calib = Calibration(calibration) if calibration in {c.value for c in Calibration} else Path(calibration)
        solver = SolverConfig(weights=_parse(WeightMode, solver_weights or "auto", "--solver-weights"))
        if solver_iterations is not None:
            solver = dataclasses.replace(solver, iterations=solver_iterations)
        quant = QuantOptions.from_cli(tensor_type=tuple(tensor_type), output_tensor_type=output_tensor_type,
                                      token_embedding_type=token_embedding_type, pure=pure,
                                      leave_output_tensor=leave_output_tensor)
        options = cls(outtype=_parse(OutType, outtype, "--outtype"), recipe=Recipe.parse(chosen) if chosen else None,
                      quant=quant, solver=solver, imatrix=imatrix,
                      importance=_parse(ImportanceSource, importance, "--importance"),
                      device=_parse(Device, device, "--device"), calibration=calib, target_size=target_size,
                      target_bpw=target_bpw, **kwargs)
        if solver_weights is None and (imatrix is not None or options.calibrated):  # AUTO resolved by now
            options = dataclasses.replace(options, solver=dataclasses.replace(solver, weights=WeightMode.IMPORTANCE))
        return options

    @property
    def allocating(self) -> bool:
        """Whether the weight matrices' types are allocated within a budget (hqq2gguf.allocate)."""
        return self.allocate or self.target_size is not None or self.target_bpw is not None

    @property
    def calibrated(self) -> bool:
        """Whether the importance comes from calibration text (quantizing, no imatrix, calibration not NONE)."""
        return self.recipe is not None and self.imatrix is None and self.calibration is not Calibration.NONE

    def weight_type(self, lossless: Sequence[gguf.GGMLQuantizationType]) -> gguf.GGMLQuantizationType:
        """The type a plain conversion gives the weight matrices, given the lossless types of the input's
        matrices: ``outtype``'s, or for ``auto`` the first matrix's (F16 when there is none)."""
        if self.outtype is not OutType.AUTO:
            return self.outtype.tensor_type
        return lossless[0] if lossless else gguf.GGMLQuantizationType.F16

    def file_type(self, weight_type: gguf.GGMLQuantizationType) -> gguf.LlamaFileType:
        """``general.file_type``: the recipe's, or that of a plain conversion to ``weight_type``."""
        return self.recipe.file_type if self.recipe is not None else FILE_TYPES[weight_type]

    @property
    def label(self) -> str:
        """The encoding part of the output file name: the recipe (``Q4_K_M``) or the outtype (``F16``)."""
        if self.recipe is not None:
            return self.recipe.value
        return self.outtype.label if self.outtype is not OutType.AUTO else "auto"
