"""llama.cpp's own ``llama-perplexity`` binary, run on the same files: the witness for :mod:`.evaluate`.

``validate`` claims its KL-divergence is llama-perplexity's; this module runs the real tool (two passes:
``--kl-divergence-base`` on the reference writes the reference log-probs, ``--kl-divergence`` on the file
reads them) and parses its summary, for tests/test_validate.py and
benchmarks/validate_vs_llama_perplexity.py. The binary is not shipped with llama-cpp-python; build it from
llama.cpp's source (``cmake --build build --target llama-perplexity``) and name it in
``HQQ2GGUF_LLAMA_PERPLEXITY``, or put it on PATH.

The llama-perplexity built from llama-cpp-python 0.3.36's llama.cpp sometimes exits with status 0 before
its asynchronous logger has written the last lines (the last chunk, the summary and the timings are
missing): ``common_log_main()`` is a heap singleton that is never destroyed, so entries its worker thread has
not printed when ``main`` returns are lost. It happens when the compute threads leave that worker no core
(about 1 run in 8 with ``-t 2`` on a busy 2-core machine; every run when other jobs load it too). Both passes
are deterministic, so a pass whose output (or reference file) is incomplete is simply run again, up to
``ATTEMPTS`` times; give ``n_threads`` below the core count to leave the logger a core.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

from hqq2gguf.runtime.evaluate import ReferenceFile

logger = logging.getLogger(__name__)
T = TypeVar("T")

BINARY_ENV = "HQQ2GGUF_LLAMA_PERPLEXITY"
TIMEOUT_S = 3600.0
ATTEMPTS = 8

_NUMBER = r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
_PATTERNS = {  # summary lines of tools/perplexity/perplexity.cpp (kl_divergence)
    "ppl": rf"^Mean PPL\(Q\)\s*:\s*{_NUMBER}",
    "ppl_ref": rf"^Mean PPL\(base\)\s*:\s*{_NUMBER}",
    "kld_mean": rf"^Mean\s+KLD:\s*{_NUMBER}",
    "kld_max": rf"^Maximum KLD:\s*{_NUMBER}",
    "kld_p99": rf"^99\.0%\s+KLD:\s*{_NUMBER}",
    "kld_median": rf"^Median\s+KLD:\s*{_NUMBER}",
    "same_top_percent": rf"^Same top p:\s*{_NUMBER}",
}


def find_binary() -> Path | None:
    """``$HQQ2GGUF_LLAMA_PERPLEXITY`` when set (it must exist), else ``llama-perplexity`` on PATH, else None."""
    named = os.environ.get(BINARY_ENV)
    if named:
        return Path(named) if Path(named).is_file() else None
    found = shutil.which("llama-perplexity")
    return Path(found) if found else None


def missing_reason() -> str | None:
    """Why no binary is available, in words; None when one is."""
    if find_binary() is not None:
        return None
    named = os.environ.get(BINARY_ENV)
    if named:
        return f"{BINARY_ENV}={named} does not exist"
    return (f"no llama-perplexity binary: build it from llama.cpp's source (cmake -B build -DLLAMA_CURL=OFF && "
            f"cmake --build build --target llama-perplexity) and set {BINARY_ENV} or put it on PATH")


@dataclass(frozen=True)
class LlamaPerplexityKld:
    """llama-perplexity's ``--kl-divergence`` summary (same names as EvalResult where they mean the same)."""

    kld_mean: float
    kld_median: float
    kld_p99: float
    kld_max: float
    same_top: float
    ppl: float
    ppl_ref: float
    commands: tuple[str, ...]

    def to_dict(self) -> dict:
        return asdict(self)


def parse_summary(log: str) -> dict[str, float]:
    """The summary values found in a ``--kl-divergence`` log (ValueError naming any that is missing)."""
    values = {}
    for key, pattern in _PATTERNS.items():
        match = re.search(pattern, log, flags=re.MULTILINE)
        if match is None:
            raise ValueError(f"llama-perplexity's output has no {key} line:\n{log[-2000:]}")
        values[key] = float(match.group(1))
    return values


def kl_divergence(binary: Path, test_gguf: Path, ref_gguf: Path, text_file: Path, *, n_ctx: int = 512,
                  n_chunks: int | None = None, n_threads: int | None = None) -> LlamaPerplexityKld:
    """Run both passes of llama-perplexity and return its summary. Batch = context, so each chunk is one
    batch, as :class:`~hqq2gguf.runtime.evaluate.ChunkModel` evaluates it."""
    common = ["-c", str(n_ctx), "-b", str(n_ctx), "-ub", str(n_ctx)]
    if n_chunks is not None:
        common += ["--chunks", str(n_chunks)]
    if n_threads is not None:
        common += ["-t", str(n_threads)]
    with tempfile.TemporaryDirectory(prefix="llama-perplexity-") as tmp:
        base = Path(tmp) / "base.logits"
        first = [str(binary), "-m", str(ref_gguf), "-f", str(text_file), *common, "--kl-divergence-base", str(base)]
        second = [str(binary), "-m", str(test_gguf), *common, "--kl-divergence-base", str(base), "--kl-divergence"]

        def reference_pass() -> ReferenceFile:  # a cut-short run leaves a file of the wrong size: ValueError
            _run(first)
            return ReferenceFile(base)

        _retry(reference_pass, first)
        values = _retry(lambda: parse_summary(_run(second)), second)
    return LlamaPerplexityKld(
        kld_mean=values["kld_mean"], kld_median=values["kld_median"], kld_p99=values["kld_p99"],
        kld_max=values["kld_max"], same_top=values["same_top_percent"] / 100, ppl=values["ppl"],
        ppl_ref=values["ppl_ref"], commands=(" ".join(first), " ".join(second)))


def _retry(attempt: Callable[[], T], command: list[str]) -> T:
    """``attempt()``, run again while it finds llama-perplexity's output incomplete (ValueError)."""
    for i in range(ATTEMPTS):
        try:
            return attempt()
        except ValueError as exc:
            if i == ATTEMPTS - 1:
                raise ValueError(f"{' '.join(command)}: output still incomplete after {ATTEMPTS} runs: {exc}") from exc
            logger.warning("llama-perplexity's output was incomplete (run %d of %d), running it again", i + 1, ATTEMPTS)
    raise AssertionError("unreachable")


def _run(command: list[str]) -> str:
    proc = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {proc.returncode}:\n{log[-2000:]}")
    return log
