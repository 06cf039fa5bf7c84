"""Structural checks of a GGUF file: what must hold before its numbers are worth measuring.

Each check is one line of ``hqq2gguf validate``'s table: the header and tensor table parse with bounded
reads and every tensor's bytes lie inside the file (``read.gguf_header``); types and sizes are consistent
(row lengths whole blocks, 1-D tensors F32, the file type's main type present, and, given a reference,
the same tensors with the same shapes); every block decodes to finite values (gguf-py's decoder, one
tensor at a time, rows in slices so memory stays bounded); the metadata llama.cpp needs to load and
tokenize is there; and the chat template, which chat front ends (llama-cpp-python, Ollama) render.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import gguf
import numpy as np
from gguf.quants import dequantize

from hqq2gguf.errors import Hqq2GgufError
from hqq2gguf.gguf_diff import Field, Tensor, read_gguf
from hqq2gguf.read.gguf_header import validate_gguf_header

Q = gguf.GGMLQuantizationType
DECODE_ELEMENTS = 1 << 22  # elements decoded at once: bounds the float32 temporaries to ~16 MiB
UNQUANTIZED = frozenset({Q.F32, Q.F16, Q.BF16})
CHAT_TEMPLATE_KEY = "tokenizer.chat_template"
_BLOCK = re.compile(r"^blk\.(\d+)\.")


class Severity(str, Enum):
    """Whether a failed check fails validation."""

    ERROR = "error"
    """The file is broken or not what it claims: validation fails."""
    WARNING = "warning"
    """Worth knowing, but the file loads and runs (e.g. a base model without a chat template)."""


@dataclass(frozen=True)
class Check:
    """One structural check and its outcome, in words."""

    name: str
    ok: bool
    detail: str
    severity: Severity = Severity.ERROR

    @property
    def failed(self) -> bool:
        """Fails validation: an error-severity check that did not pass."""
        return not self.ok and self.severity is Severity.ERROR

    def to_dict(self) -> dict:
        return {"name": self.name, "ok": self.ok, "severity": self.severity.value, "detail": self.detail}


@dataclass(frozen=True)
class GgufFile:
    """A parsed GGUF: metadata fields and tensors (views of the mapped file)."""

    path: Path
    fields: dict[str, Field]
    tensors: list[Tensor]

    def value(self, key: str, default: object = None) -> object:
        field = self.fields.get(key)
        return default if field is None else field.value()

    @property
    def arch(self) -> str | None:
        return self.value("general.architecture")  # type: ignore[return-value]

    @property
    def file_type(self) -> gguf.LlamaFileType | None:
        raw = self.value("general.file_type")
        return gguf.LlamaFileType(raw) if raw in gguf.LlamaFileType._value2member_map_ else None

    def weight_types(self) -> collections.Counter:
        """How many tensors of 2 or more dimensions have each type."""
        return collections.Counter(t.qtype for t in self.tensors if len(t.shape) > 1)


def open_gguf_checked(path: Path | str) -> GgufFile:
    """The file parsed after ``validate_gguf_header`` proved every read is in bounds (InputError if not)."""
    path = Path(path)
    validate_gguf_header(path)
    fields, tensors = read_gguf(path)
    return GgufFile(path, fields, tensors)


def main_type(file_type: gguf.LlamaFileType) -> Q | None:
    """The tensor type a file type is named after (MOSTLY_Q4_K_M -> Q4_K), None when it names a mixture."""
    name = file_type.name.removeprefix("MOSTLY_").removeprefix("ALL_")
    for candidate in (name, re.sub(r"_(XS|S|M|L)$", "", name)):
        if candidate in Q.__members__:
            return Q[candidate]
    return None


def structural_checks(path: Path | str, *, reference: GgufFile | None = None,
                      check_values: bool = True) -> list[Check]:
    """Every structural check of ``path`` (compared with ``reference`` where one is given). A file whose
    header does not parse yields that single failed check."""
    try:
        f = open_gguf_checked(path)
    except Hqq2GgufError as exc:
        return [Check("file readable", False, exc.message)]
    checks = [Check("file readable", True, f"GGUF, {len(f.fields)} metadata keys, {len(f.tensors)} tensors, "
                                           "all tensor data inside the file")]
    checks += [_metadata(f), _shapes(f), _types(f)]
    if reference is not None:
        checks.append(_same_tensors(f, reference))
    if check_values:
        checks.append(_finite(f))
    checks.append(_chat_template(f, reference))
    return checks


def _metadata(f: GgufFile) -> Check:
    arch = f.arch
    required = ["general.architecture", "tokenizer.ggml.model", "tokenizer.ggml.tokens"]
    if arch:
        required += [f"{arch}.block_count", f"{arch}.embedding_length", f"{arch}.context_length"]
    missing = [k for k in required if k not in f.fields]
    if missing:
        return Check("metadata", False, f"missing {', '.join(missing)}")
    if f.file_type is None:
        return Check("metadata", False, "general.file_type is missing or unknown", Severity.WARNING)
    return Check("metadata", True, f"{arch}, file type {f.file_type.name}, {len(f.fields['tokenizer.ggml.tokens'].items)}"
                                   f"-token {f.value('tokenizer.ggml.model')} vocabulary")


def _shapes(f: GgufFile) -> Check:
    arch = f.arch
    by_name = {t.name: t for t in f.tensors}
    problems = []
    n_vocab = len(f.fields["tokenizer.ggml.tokens"].items) if "tokenizer.ggml.tokens" in f.fields else None
    n_embd = f.value(f"{arch}.embedding_length")
    for name in ("token_embd.weight", "output.weight"):
        t = by_name.get(name)
        if t is not None and n_vocab is not None and n_embd is not None and t.shape[:2] != (n_embd, n_vocab):
            problems.append(f"{name} is {list(t.shape)}, expected [{n_embd}, {n_vocab}] (embedding x vocabulary)")
    if "token_embd.weight" not in by_name:
        problems.append("no token_embd.weight")
    n_blocks = f.value(f"{arch}.block_count")
    seen = {int(m.group(1)) for t in f.tensors if (m := _BLOCK.match(t.name))}
    if n_blocks is not None and seen != set(range(n_blocks)):
        problems.append(f"block_count is {n_blocks} but tensors exist for blocks {_ranges(seen)}")
    if problems:
        return Check("shapes", False, "; ".join(problems))
    return Check("shapes", True, f"{n_blocks} blocks, embedding {n_embd}, vocabulary {n_vocab}")


def _types(f: GgufFile) -> Check:
    """The file type must describe the weights: a quantized label on unquantized matrices (or the reverse)
    means the file is not what its name says. The named type itself may be absent: rows that are not a
    multiple of its block fall back to other types (SmolLM2's 576-wide rows hold no K-quant)."""
    counts = collections.Counter(t.qtype.name for t in f.tensors)
    summary = ", ".join(f"{n} {k}" for k, n in counts.most_common())
    weights = f.weight_types()
    quantized = any(q not in UNQUANTIZED for q in weights)
    ft = f.file_type
    main = main_type(ft) if ft is not None else None
    if main is not None and (main not in UNQUANTIZED) != quantized:
        state = "quantized" if quantized else "unquantized"
        return Check("tensor types", False, f"file type {ft.name} but the weight matrices are {state} ({summary})")
    not_f32 = [t.name for t in f.tensors if len(t.shape) == 1 and t.qtype is not Q.F32]
    if not_f32:
        return Check("tensor types", False, f"{len(not_f32)} 1-D tensors are not F32 (llama.cpp keeps norms and "
                                            f"biases F32), e.g. {not_f32[0]} ({summary})", Severity.WARNING)
    if main is not None and main not in weights:
        summary += f"; no {main.name} matrix (rows not a multiple of its block fall back to other types)"
    return Check("tensor types", True, summary)


def _same_tensors(f: GgufFile, ref: GgufFile) -> Check:
    ours = {t.name: t.shape for t in f.tensors}
    theirs = {t.name: t.shape for t in ref.tensors}
    missing, extra = sorted(theirs.keys() - ours.keys()), sorted(ours.keys() - theirs.keys())
    reshaped = [n for n in ours.keys() & theirs.keys() if ours[n] != theirs[n]]
    if not (missing or extra or reshaped):
        return Check("same tensors as reference", True, f"{len(ours)} tensors, same names and shapes")
    parts = [f"{what}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
             for what, names in (("missing", missing), ("not in the reference", extra), ("other shape", reshaped))
             if names]
    return Check("same tensors as reference", False, "; ".join(parts))


def _finite(f: GgufFile) -> Check:
    bad = []
    n_values = 0
    for t in f.tensors:
        try:
            n_bad = sum(int(np.count_nonzero(~np.isfinite(x))) for x in _decoded_slices(t))
        except NotImplementedError:
            return Check("finite values", False, f"gguf-py cannot decode {t.qtype.name} ({t.name}): not checked",
                         Severity.WARNING)
        n_values += int(np.prod(t.shape, dtype=np.int64))
        if n_bad:
            bad.append(f"{t.name} ({n_bad} of {int(np.prod(t.shape, dtype=np.int64))})")
    if bad:
        return Check("finite values", False, f"NaN/Inf in {len(bad)} tensors: {', '.join(bad[:3])}"
                                             f"{' ...' if len(bad) > 3 else ''}")
    return Check("finite values", True, f"all {n_values:,} values of {len(f.tensors)} tensors decode finite")


def _decoded_slices(t: Tensor) -> Iterator[np.ndarray]:
    """The tensor decoded a slice of rows at a time."""
    rows_per_slice = max(1, DECODE_ELEMENTS // max(t.shape[0], 1))
    for r0 in range(0, t.data.shape[0], rows_per_slice):
        yield dequantize(t.data[r0:r0 + rows_per_slice], t.qtype)


def _chat_template(f: GgufFile, ref: GgufFile | None) -> Check:
    template = f.value(CHAT_TEMPLATE_KEY)
    if template:
        return Check("chat template", True, f"{len(template)} characters")  # type: ignore[arg-type]
    if ref is not None and ref.value(CHAT_TEMPLATE_KEY):
        return Check("chat template", False, "missing, but the reference has one: chat front ends will use a "
                                             "generic format")
    return Check("chat template", False, f"no {CHAT_TEMPLATE_KEY} (fine for a base model; chat front ends will "
                                         "use a generic format)", Severity.WARNING)


def _ranges(values: set[int]) -> str:
    if not values:
        return "none"
    ordered = sorted(values)
    return f"{ordered[0]}..{ordered[-1]}" if ordered == list(range(ordered[0], ordered[-1] + 1)) else str(ordered)
