"""Pass/fail limits of ``hqq2gguf validate``, one row per quantization level.

The defaults are there to catch broken files (a wrong packer, a scrambled tensor, a mislabelled type),
not to rank good ones, so they sit well above what a correct file of that type measures even on a
small, fragile model. For calibration, SmolLM2-135M against its F16 (40 x 512 tokens of wiki.test.raw,
benchmarks/results/quality_smollm2.md) measures mean KLD 0.005 at Q8_0, 0.012 at Q6_K, 0.05 at Q5_K_M,
0.07 at Q4_K_M, 0.25 at Q3_K_M / IQ4_NL, 0.43 at Q4_0 and 0.55 at Q2_K; larger models measure far less.
Every limit can be overridden (``--max-kld`` ...), e.g. tightened for a release check of a large model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import gguf
from hqq2gguf.runtime.metrics import EvalResult

from hqq2gguf.errors import OptionError


@dataclass(frozen=True)
class Thresholds:
    """Limits on the numerical comparison with the reference; None: not checked."""

    max_kld: float | None
    """Mean KL-divergence (nats per token)."""
    max_kld_p99: float | None
    """99th percentile of the per-token KL-divergence."""
    min_top1: float | None
    """Fraction of tokens whose most likely next token agrees with the reference's."""
    max_ppl_ratio: float | None
    """Perplexity of the file / perplexity of the reference."""

    def __post_init__(self) -> None:
        for name in ("max_kld", "max_kld_p99", "max_ppl_ratio"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise OptionError(f"{name} must be >= 0, got {value}")
        if self.min_top1 is not None and not 0 <= self.min_top1 <= 1:
            raise OptionError(f"min_top1 must be in [0, 1], got {self.min_top1}")

    def override(self, **limits: float | None) -> Thresholds:
        """These limits with the given ones replaced (None leaves a limit as it is)."""
        return dataclasses.replace(self, **{k: v for k, v in limits.items() if v is not None})

    def judge(self, result: EvalResult) -> list[tuple[str, float, str, float, bool]]:
        """(metric, measured value, comparison, limit, passed) for every limit that is set."""
        rows = []
        for metric, value, op, limit in (
            ("mean KLD", result.kld_mean, "<=", self.max_kld),
            ("KLD p99", result.kld_p99, "<=", self.max_kld_p99),
            ("top-1 agreement", result.same_top, ">=", self.min_top1),
            ("PPL ratio", result.ppl / result.ppl_ref, "<=", self.max_ppl_ratio),
        ):
            if limit is not None:
                rows.append((metric, value, op, limit, value <= limit if op == "<=" else value >= limit))
        return rows


# (mean KLD, KLD p99, top-1, PPL ratio) by quantization level, loosest last.
_LEVELS = {
    "lossless": Thresholds(0.005, 0.05, 0.97, 1.01),
    "8-bit": Thresholds(0.02, 0.2, 0.90, 1.05),
    "6-bit": Thresholds(0.05, 0.4, 0.85, 1.08),
    "5-bit": Thresholds(0.15, 1.0, 0.78, 1.2),
    "4-bit": Thresholds(0.6, 3.0, 0.55, 1.8),
    "3-bit": Thresholds(0.8, 3.5, 0.5, 2.0),
    "2-bit": Thresholds(1.2, 5.0, 0.4, 2.5),
    "sub-2-bit": Thresholds(2.5, 8.0, 0.25, 5.0),
}
# By file-type name (gguf.LlamaFileType member), so that names newer than the installed gguf-py are harmless.
_FILE_TYPE_LEVEL = {
    "ALL_F32": "lossless", "MOSTLY_F16": "lossless", "MOSTLY_BF16": "lossless",
    "MOSTLY_Q8_0": "8-bit",
    "MOSTLY_Q6_K": "6-bit",
    "MOSTLY_Q5_K_M": "5-bit", "MOSTLY_Q5_K_S": "5-bit", "MOSTLY_Q5_0": "5-bit", "MOSTLY_Q5_1": "5-bit",
    "MOSTLY_Q4_K_M": "4-bit", "MOSTLY_Q4_K_S": "4-bit", "MOSTLY_Q4_0": "4-bit", "MOSTLY_Q4_1": "4-bit",
    "MOSTLY_IQ4_NL": "4-bit", "MOSTLY_IQ4_XS": "4-bit", "MOSTLY_MXFP4_MOE": "4-bit", "MOSTLY_NVFP4": "4-bit",
    "MOSTLY_Q3_K_L": "3-bit", "MOSTLY_Q3_K_M": "3-bit", "MOSTLY_Q3_K_S": "3-bit",
    "MOSTLY_IQ3_M": "3-bit", "MOSTLY_IQ3_S": "3-bit", "MOSTLY_IQ3_XS": "3-bit", "MOSTLY_IQ3_XXS": "3-bit",
    "MOSTLY_Q2_K": "2-bit", "MOSTLY_Q2_K_S": "2-bit", "MOSTLY_IQ2_M": "2-bit", "MOSTLY_IQ2_S": "2-bit",
    "MOSTLY_IQ2_XS": "2-bit", "MOSTLY_IQ2_XXS": "2-bit", "MOSTLY_TQ2_0": "2-bit",
    "MOSTLY_IQ1_S": "sub-2-bit", "MOSTLY_IQ1_M": "sub-2-bit", "MOSTLY_TQ1_0": "sub-2-bit", "MOSTLY_Q1_0": "sub-2-bit",
}
DEFAULT_LEVEL = "2-bit"
"""Unknown or missing file type: loose limits, so only a broken file fails."""

DEVICE_AGREEMENT = Thresholds(max_kld=0.01, max_kld_p99=0.1, min_top1=0.95, max_ppl_ratio=1.02)
"""The same file on CPU and on CUDA: only the kernels' rounding differs."""


def level(file_type: gguf.LlamaFileType | None) -> str:
    """The quantization level whose limits apply to ``file_type``."""
    return _FILE_TYPE_LEVEL.get(file_type.name, DEFAULT_LEVEL) if file_type is not None else DEFAULT_LEVEL


def default_thresholds(file_type: gguf.LlamaFileType | None) -> Thresholds:
    return _LEVELS[level(file_type)]


def levels() -> dict[str, Thresholds]:
    """Every level's default limits (for the README table and ``validate --help``)."""
    return dict(_LEVELS)
