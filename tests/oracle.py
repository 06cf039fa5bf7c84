"""llama.cpp's own HF -> GGUF converter, the reference our F32/F16/BF16/Q8_0 output must equal byte for byte.

``convert_hf_to_gguf.py`` ships in no installable package; it is in the llama.cpp tree vendored in the
llama-cpp-python source distribution. Get it with::

    pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d .cache/sdist
    tar -xzf .cache/sdist/llama_cpp_python-0.3.36.tar.gz -C .cache/sdist

or point ``HQQ2GGUF_LLAMA_CPP_SRC`` at any llama.cpp checkout. It runs with its own vendored gguf-py
(the PyPI ``gguf`` of the same version number is older).

One run costs ~3 s of CPU, mostly imports. Its outputs are cached under ``.cache/oracle_gguf`` (or
``$HQQ2GGUF_ORACLE_CACHE``; ``off`` disables), keyed by a hash of the converter's sources and of every
input file and the model directory's name (it becomes ``general.name``): a stale hit is impossible.
"""

from __future__ import annotations

import hashlib
from importlib import metadata
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
LLAMA_CPP_VERSION = "0.3.36"
SRC_ENV = "HQQ2GGUF_LLAMA_CPP_SRC"
REQUIRE_ENV = "HQQ2GGUF_REQUIRE_ORACLE"
CACHE_ENV = "HQQ2GGUF_ORACLE_CACHE"
DEFAULT_SRC = REPO_ROOT / ".cache" / "sdist" / f"llama_cpp_python-{LLAMA_CPP_VERSION}" / "vendor" / "llama.cpp"
SCRIPT = "convert_hf_to_gguf.py"
TIMEOUT_S = 300.0
OUTTYPES = ("f32", "f16", "bf16", "q8_0")
"""The outtypes whose output must equal the converter's byte for byte."""


class OracleError(RuntimeError):
    """The reference converter failed; the message carries its output."""


def oracle_src() -> Path:
    """The llama.cpp source directory: ``$HQQ2GGUF_LLAMA_CPP_SRC`` or the unpacked sdist in .cache."""
    env = os.environ.get(SRC_ENV)
    return Path(env).expanduser().resolve() if env else DEFAULT_SRC


def oracle_missing_reason() -> str | None:
    """Why the oracle cannot run, or None when it can."""
    src = oracle_src()
    if not (src / SCRIPT).is_file():
        return (
            f"llama.cpp reference converter not found: {src / SCRIPT} does not exist. "
            f"Set {SRC_ENV}=/path/to/llama.cpp or run: pip download --no-deps --no-binary :all: "
            f"llama-cpp-python=={LLAMA_CPP_VERSION} -d .cache/sdist && tar -xzf "
            f".cache/sdist/llama_cpp_python-{LLAMA_CPP_VERSION}.tar.gz -C .cache/sdist"
        )
    if not (src / "gguf-py" / "gguf").is_dir():
        return f"llama.cpp source at {src} has no vendored gguf-py/gguf"
    return None


def oracle_required() -> bool:
    """True when a missing oracle must fail the run instead of skipping (CI sets the variable)."""
    return os.environ.get(REQUIRE_ENV, "").strip().lower() in ("1", "true", "yes")


def run_oracle(model_dir: Path, outtype: str, outfile: Path, *, timeout: float = TIMEOUT_S,
               extra_args: tuple[str, ...] = ()) -> Path:
    """Convert ``model_dir`` with llama.cpp's converter into ``outfile`` (or copy a cached result);
    return ``outfile``. ``extra_args`` (e.g. ``--split-max-tensors 8``) are passed on, and the run is not cached
    (a split writes several files).

    Raises :class:`OracleError` with the converter's captured output when it fails or times out.
    """
    reason = oracle_missing_reason()
    if reason is not None:
        raise OracleError(reason)
    cached = _cache_path(model_dir, outtype) if not extra_args else None
    if cached is not None and cached.is_file():
        shutil.copyfile(cached, outfile)
        return outfile
    _convert(model_dir, outtype, outfile, timeout, extra_args)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")
        shutil.copyfile(outfile, tmp)
        os.replace(tmp, cached)
    return outfile


def run_oracle_many(jobs: list[tuple[Path, str, Path]], *, workers: int | None = None) -> list[Path]:
    """:func:`run_oracle` for each ``(model_dir, outtype, outfile)``, several at a time."""
    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda job: run_oracle(*job), jobs))


def _cache_dir() -> Path | None:
    env = os.environ.get(CACHE_ENV, "").strip()
    if env.lower() in ("off", "0", "no", "false"):
        return None
    return Path(env).expanduser() if env else REPO_ROOT / ".cache" / "oracle_gguf"


@lru_cache(maxsize=1)
def _source_digest() -> str:
    """Hash of everything in the converter that can change its output."""
    src = oracle_src()
    files = [src / SCRIPT, *sorted((src / "conversion").rglob("*.py")), *sorted((src / "gguf-py").rglob("*.py"))]
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(src)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _cache_path(model_dir: Path, outtype: str) -> Path | None:
    root = _cache_dir()
    if root is None:
        return None
    digest = hashlib.sha256(_source_digest().encode())
    # The converter reads tokenizers and configs with transformers: another major can give other bytes.
    digest.update(f"{outtype}\0{model_dir.name}\0{metadata.version('transformers')}\0".encode())
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(model_dir)).encode() + b"\0" + path.read_bytes() + b"\0")
    return root / f"{digest.hexdigest()[:32]}-{outtype}.gguf"


def _convert(model_dir: Path, outtype: str, outfile: Path, timeout: float, extra_args: tuple[str, ...] = ()) -> None:
    src = oracle_src()
    cmd = [
        sys.executable, str(src / SCRIPT), str(model_dir),
        "--outtype", outtype, "--outfile", str(outfile), *extra_args,
    ]
    env = dict(os.environ)
    env.pop("NO_LOCAL_GGUF", None)  # it must use its own vendored gguf-py
    env.setdefault("OMP_NUM_THREADS", "1")
    try:
        proc = subprocess.run(
            cmd, cwd=src, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise OracleError(
            f"reference converter timed out after {timeout:.0f} s: {' '.join(cmd)}\n"
            f"--- stdout ---\n{_text(exc.stdout)}\n--- stderr ---\n{_text(exc.stderr)}"
        ) from exc
    if proc.returncode != 0 or not (outfile.is_file() or extra_args):
        raise OracleError(
            f"reference converter failed (exit {proc.returncode}): {' '.join(cmd)}\n"
            f"--- stdout ---\n{proc.stdout[-8000:]}\n--- stderr ---\n{proc.stderr[-8000:]}"
        )


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data
