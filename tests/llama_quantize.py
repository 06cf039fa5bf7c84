"""llama.cpp's own quantizer (llama-quantize) through llama-cpp-python: the oracle for per-tensor types.

:func:`run_quantize` runs ``llama_model_quantize`` on batches of jobs in worker subprocesses (it logs
a lot and a GGML_ASSERT aborts the whole process). A job quantizes for real into a temporary file and
reads the types back with gguf's reader, or, with ``dry_run``, parses them from llama.cpp's log
(``--dry-run`` writes no file; the log line of every tensor names its new type).

Run as a script, it is the worker: ``python llama_quantize.py JOBS.json RESULTS.json``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import gguf

Q = gguf.GGMLQuantizationType
TIMEOUT_S = 600.0

# "[  12/ 272]   blk.0.attn_v.weight - [  576,   192,     1,     1], type =    f16, size = ... (q6_K)"
_LOG_LINE = re.compile(r"^\[\s*\d+/\s*\d+\]\s+(\S+)\s+- \[[^\]]*\], type =\s*(\w+), size =[^()\n]*(?:\((\w+)\))?\s*$")


@dataclass(frozen=True)
class QuantJob:
    """One llama-quantize run. Types are ggml type names ("q8_0"), as on llama-quantize's command line."""

    src: str
    ftype: int
    """llama_ftype (= gguf.LlamaFileType value)."""
    output_tensor_type: str | None = None
    token_embedding_type: str | None = None
    tensor_types: tuple[tuple[str, str], ...] = ()
    pure: bool = False
    leave_output_tensor: bool = False
    dry_run: bool = False
    keep_as: str | None = None
    """Write the quantized file here and keep it (by default it is read back and deleted)."""
    imatrix: str | None = None
    """An imatrix file (GGUF or legacy .dat), read with hqq2gguf.calibrate and passed as llama-quantize does."""


@dataclass
class QuantResult:
    ok: bool
    types: dict[str, Q] = field(default_factory=dict)
    """Every tensor's output type, in the output file's order."""
    file_size: int | None = None
    """Size of the quantized file (None for dry runs)."""
    log_tail: str = ""


def run_quantize(jobs: Sequence[QuantJob], *, workers: int | None = None) -> list[QuantResult]:
    """Run the jobs in up to ``workers`` subprocesses (in order of the jobs: one batch per worker)."""
    if not jobs:
        return []
    n = max(1, min(workers or min(8, os.cpu_count() or 1), len(jobs)))
    batches = [list(range(i, len(jobs), n)) for i in range(n)]
    results: list[QuantResult | None] = [None] * len(jobs)
    with ThreadPoolExecutor(n) as pool:
        for batch, out in zip(batches, pool.map(lambda b: _run_batch([jobs[i] for i in b]), batches)):
            for i, r in zip(batch, out):
                results[i] = r
    return [r for r in results if r is not None]


def _run_batch(jobs: list[QuantJob]) -> list[QuantResult]:
    with tempfile.TemporaryDirectory(prefix="llama_quantize_") as tmp:
        jobs_path, results_path = Path(tmp) / "jobs.json", Path(tmp) / "results.json"
        jobs_path.write_text(json.dumps([asdict(j) for j in jobs]))
        proc = subprocess.run([sys.executable, __file__, str(jobs_path), str(results_path)],
                              capture_output=True, text=True, timeout=TIMEOUT_S)
        if proc.returncode != 0 or not results_path.exists():
            raise RuntimeError(f"llama_quantize worker failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
        raw = json.loads(results_path.read_text())
    return [QuantResult(r["ok"], {k: Q(v) for k, v in r["types"].items()}, r["file_size"], r["log_tail"])
            for r in raw]


# ---------------------------------------------------------------- worker side (runs in the subprocess)

def _ggml_type(name: str) -> Q:
    return Q[name.upper()]


def _worker(jobs_path: str, results_path: str) -> None:
    import ctypes

    import llama_cpp

    log: list[str] = []

    @llama_cpp.llama_log_callback
    def on_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        log.append(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(on_log, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()
    results = []
    with tempfile.TemporaryDirectory(prefix="llama_quantize_out_") as tmp:
        for i, job in enumerate(json.loads(Path(jobs_path).read_text())):
            log.clear()
            job = QuantJob(**job)
            dst = Path(job.keep_as) if job.keep_as else Path(tmp) / f"out{i}.gguf"
            results.append(_quantize_one(llama_cpp, job, dst, log))
    Path(results_path).write_text(json.dumps(results))


def _quantize_one(llama_cpp, job: QuantJob, dst: Path, log: list[str]) -> dict:
    from hqq2gguf.baseline import llama_quantize
    from hqq2gguf.errors import Hqq2GgufError
    from hqq2gguf.calibrate import read_imatrix

    del llama_cpp  # loaded and logging into ``log`` by the worker
    try:
        llama_quantize(job.src, dst, job.ftype, pure=job.pure, dry_run=job.dry_run,
                       leave_output_tensor=job.leave_output_tensor,
                       output_tensor_type=_ggml_type(job.output_tensor_type) if job.output_tensor_type else None,
                       token_embedding_type=_ggml_type(job.token_embedding_type) if job.token_embedding_type else None,
                       tensor_types=[(p, _ggml_type(t)) for p, t in job.tensor_types],
                       imatrix=read_imatrix(Path(job.imatrix)).entries if job.imatrix else None)
        rc = 0
    except Hqq2GgufError:
        rc = 1
    text = "".join(log)
    result = {"ok": rc == 0, "types": {}, "file_size": None, "log_tail": text[-3000:]}
    if rc != 0:
        return result
    if job.dry_run:
        result["types"] = _types_from_log(text)
    else:
        reader = gguf.GGUFReader(dst)
        result["types"] = {t.name: int(t.tensor_type) for t in reader.tensors}
        result["file_size"] = dst.stat().st_size
        del reader
        if not job.keep_as:
            dst.unlink()
    return result


def _types_from_log(text: str) -> dict[str, int]:
    types = {}
    for line in text.splitlines():
        m = _LOG_LINE.match(line.strip())
        if m:
            name, cur, new = m.groups()
            types[name] = _ggml_type(new or cur).value
    return types


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
