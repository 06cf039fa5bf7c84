"""``hqq2gguf validate``: is an exported GGUF sound, and how far is it from its unquantized reference?

Two stages. Structural checks (:mod:`.structure`) need no model run. The numerical stage runs the file
and the reference side by side on a text, exactly as ``llama-perplexity --kl-divergence`` does
(:mod:`.evaluate`): mean / 99th-percentile / max KL-divergence, top-1 agreement, both perplexities,
each judged against the limits of the file's quantization level (:mod:`.thresholds`).

The reference is an F32/F16/BF16 GGUF, or a Hugging Face directory converted on the fly with hqq2gguf's
own converter into a temporary F16 GGUF that is deleted afterwards. ``compare_devices`` runs the whole
numerical stage on the CPU and on CUDA, then the file on CUDA against the same file on the CPU; without
a build that can offload it refuses (DeviceError) instead of comparing the CPU with itself.
"""

from __future__ import annotations

import importlib.resources
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hqq2gguf.runtime.evaluate import evaluate
from hqq2gguf.runtime.llama import check_gguf, effective_gpu_layers, require_gpu
from hqq2gguf.runtime.metrics import EvalResult
from hqq2gguf.runtime.structure import (
    UNQUANTIZED,
    Check,
    GgufFile,
    open_gguf_checked,
    structural_checks,
)
from hqq2gguf.runtime.thresholds import (
    DEVICE_AGREEMENT,
    Thresholds,
    default_thresholds,
    level,
)

from hqq2gguf.errors import InputError, OptionError

logger = logging.getLogger(__name__)

ALL_GPU_LAYERS = -1
# A failure of one of these means llama.cpp would not load the file (or would run another model).
LOAD_BLOCKING = ("file readable", "metadata", "shapes", "same tensors as reference")


def builtin_corpus() -> str:
    """The default text: a few KB of public-domain English prose shipped with the package (5 chunks of
    512 tokens with a 49k-token BPE vocabulary)."""
    return importlib.resources.files("hqq2gguf.runtime").joinpath("data/corpus.txt").read_text(encoding="utf-8")


@dataclass(frozen=True)
class ValidateOptions:
    """Everything ``hqq2gguf validate`` can be told; the CLI maps onto it one to one."""

    reference: Path
    """F32/F16/BF16 GGUF, or a Hugging Face directory (converted to a temporary F16 GGUF)."""
    text: Path | None = None
    """The text to score; None: the built-in corpus."""
    n_ctx: int = 512
    n_chunks: int | None = None
    """At most this many chunks of ``n_ctx`` tokens (None: every whole chunk of the text)."""
    n_threads: int | None = None
    n_gpu_layers: int = 0
    compare_devices: bool = False
    check_values: bool = True
    """Decode every block and check it is finite (seconds per GB)."""
    max_kld: float | None = None
    """Overrides of the file type's default limits (:class:`Thresholds`); None keeps the default."""
    max_kld_p99: float | None = None
    min_top1: float | None = None
    max_ppl_ratio: float | None = None

    def __post_init__(self) -> None:
        if self.n_ctx < 8 or self.n_ctx % 2:
            raise OptionError(f"the context must be an even number of at least 8 tokens, got {self.n_ctx}")
        if self.n_chunks is not None and self.n_chunks < 1:
            raise OptionError(f"chunks must be at least 1, got {self.n_chunks}")
        self.limits()  # Thresholds validates the values

    def limits(self, base: Thresholds | None = None) -> Thresholds:
        """``base`` (default: no limits) with the limits given here put in."""
        base = base if base is not None else Thresholds(None, None, None, None)
        return base.override(max_kld=self.max_kld, max_kld_p99=self.max_kld_p99, min_top1=self.min_top1,
                             max_ppl_ratio=self.max_ppl_ratio)


@dataclass(frozen=True)
class Verdict:
    """One numerical limit applied to one measurement."""

    metric: str
    value: float
    op: str
    limit: float
    passed: bool

    def to_dict(self) -> dict:
        return {"metric": self.metric, "value": self.value, "op": self.op, "limit": self.limit,
                "passed": self.passed}


@dataclass(frozen=True)
class Measurement:
    """The numerical comparison on one device (or between two devices) and its verdicts."""

    label: str
    result: EvalResult
    verdicts: tuple[Verdict, ...]

    @property
    def passed(self) -> bool:
        return all(v.passed for v in self.verdicts)

    def to_dict(self) -> dict:
        return {"label": self.label, "passed": self.passed, "result": self.result.to_dict(),
                "verdicts": [v.to_dict() for v in self.verdicts]}


@dataclass(frozen=True)
class ValidationReport:
    model: Path
    reference: str
    """What the reference was, in words (path and kind)."""
    file_type: str
    level: str
    thresholds: Thresholds
    text: str
    checks: tuple[Check, ...]
    measurements: tuple[Measurement, ...]

    @property
    def passed(self) -> bool:
        return not any(c.failed for c in self.checks) and all(m.passed for m in self.measurements)

    def failures(self) -> list[str]:
        out = [f"{c.name}: {c.detail}" for c in self.checks if c.failed]
        out += [f"{m.label}: {v.metric} {v.value:.4g} (limit {v.op} {v.limit:g})"
                for m in self.measurements for v in m.verdicts if not v.passed]
        return out

    def to_dict(self) -> dict:
        return {"model": str(self.model), "reference": self.reference, "file_type": self.file_type,
                "level": self.level, "thresholds": vars(self.thresholds), "text": self.text,
                "passed": self.passed, "failures": self.failures(), "checks": [c.to_dict() for c in self.checks],
                "measurements": [m.to_dict() for m in self.measurements]}


@contextmanager
def reference_gguf(reference: Path) -> Iterator[tuple[Path, str]]:
    """(GGUF path, description) of the reference; a Hugging Face directory is converted to a temporary F16
    GGUF with hqq2gguf's converter, deleted when the block exits."""
    if not reference.is_dir():
        yield check_gguf(reference), f"{reference} (GGUF)"
        return
    from hqq2gguf.convert import convert  # torch is needed here only
    from hqq2gguf.options import ConvertOptions, OutType

    with tempfile.TemporaryDirectory(prefix="hqq2gguf-validate-") as tmp:
        logger.info("converting %s to a temporary F16 reference", reference)
        out = convert(reference, ConvertOptions(outtype=OutType.F16, output=Path(tmp) / "reference-F16.gguf"))
        yield out.path, f"{reference} (Hugging Face directory, converted to F16 by hqq2gguf)"


def validate(model: Path | str, options: ValidateOptions) -> ValidationReport:
    """Structural and numerical validation of ``model`` against ``options.reference``."""
    model = check_gguf(model)
    if options.compare_devices:
        require_gpu("--compare-devices")  # before any work: a CPU-only build must not pretend
    text, text_label = _text(options.text)
    with reference_gguf(Path(options.reference)) as (ref_path, ref_label):
        ref = open_gguf_checked(ref_path)
        _require_unquantized(ref)
        checks = tuple(structural_checks(model, reference=ref, check_values=options.check_values))
        file_type = open_gguf_checked(model).file_type if checks[0].ok else None
        thresholds = options.limits(default_thresholds(file_type))
        blocking = [c.name for c in checks if c.failed and c.name in LOAD_BLOCKING]
        measurements: tuple[Measurement, ...] = ()
        if not blocking:
            measurements = _measure(model, ref_path, text, options, thresholds)
    if measurements:
        r = measurements[0].result
        text_label += f", {r.n_chunks} chunks x {r.n_ctx} tokens, {r.n_tokens_scored} tokens scored"
    else:
        text_label += f" (numerical checks skipped: {', '.join(blocking)} failed)"
    return ValidationReport(
        model=model, reference=ref_label, file_type=file_type.name if file_type is not None else "unknown",
        level=level(file_type), thresholds=thresholds, text=text_label, checks=checks, measurements=measurements)


def _text(path: Path | None) -> tuple[str | bytes, str]:
    """The text and its label. A file is passed on as bytes, exactly as llama-perplexity reads it: decoding
    it in Python would turn CR LF into LF (wiki.test.raw has thousands) and change the tokens."""
    if path is None:
        return builtin_corpus(), "built-in corpus"
    try:
        return path.read_bytes(), str(path)
    except OSError as exc:
        raise InputError(f"cannot read the text: {exc.strerror or exc}", file=path) from exc


def _require_unquantized(ref: GgufFile) -> None:
    quantized = sorted({q.name for q in ref.weight_types() if q not in UNQUANTIZED})
    if quantized:
        raise InputError(f"the reference must be an F32/F16/BF16 GGUF (or a Hugging Face directory); it holds "
                         f"{', '.join(quantized)} tensors", file=ref.path)


def _measure(model: Path, ref_path: Path, text: str | bytes, options: ValidateOptions,
             thresholds: Thresholds) -> tuple[Measurement, ...]:
    if options.compare_devices:
        runs = [("CPU", 0), ("CUDA", ALL_GPU_LAYERS)]
    else:
        layers = effective_gpu_layers(options.n_gpu_layers)
        runs = [("CPU" if layers == 0 else f"GPU ({'all' if layers < 0 else layers} layers)", layers)]
    out = [_judged(label, thresholds, _run(model, ref_path, text, options, layers, layers))
           for label, layers in runs]
    if options.compare_devices:
        across = _run(model, model, text, options, ALL_GPU_LAYERS, 0)
        out.append(_judged("CUDA vs CPU (same file)", DEVICE_AGREEMENT, across))
    return tuple(out)


def _run(test: Path, ref: Path, text: str | bytes, options: ValidateOptions, layers: int, ref_layers: int) -> EvalResult:
    try:
        return evaluate(test, ref, text, n_ctx=options.n_ctx, n_chunks=options.n_chunks, n_threads=options.n_threads,
                        n_gpu_layers=layers, ref_n_gpu_layers=ref_layers)
    except ValueError as exc:  # vocabulary mismatch, text too short, a vocabulary that adds EOS
        raise InputError(str(exc), file=test) from exc


def _judged(label: str, thresholds: Thresholds, result: EvalResult) -> Measurement:
    return Measurement(label, result, tuple(Verdict(*row) for row in thresholds.judge(result)))
