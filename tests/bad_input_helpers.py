"""Helpers of the bad-input suite: run the CLI, check that a failure is clean, fingerprint the input.

A clean failure: exit code 1, exactly one ``error:`` line holding the expected words, no traceback, an
empty output directory (neither the output nor a ``.partial`` temporary file) and the input unchanged.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner

from hqq2gguf.cli import main


def run_cli(*args: str) -> tuple[int, str]:
    """Run ``hqq2gguf ARGS`` in-process; (exit code, stdout and stderr together)."""
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def tree_digest(path: Path) -> str:
    """SHA-256 over every file under ``path`` (or of the file itself): names, modes and bytes."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        digest.update(oct(file.stat().st_mode).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def assert_clean_failure(code: int, output: str, out_dir: Path, *needles: str) -> str:
    """The one ``error:`` line (returned) holds every needle; nothing is left in ``out_dir``."""
    assert code == 1, output
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    leftovers = [p.name for p in out_dir.iterdir()] if out_dir.exists() else []
    assert leftovers == [], f"output directory not empty: {leftovers}"
    return lines[0]


def convert(model: Path, out: Path, *extra: str) -> tuple[int, str]:
    """``hqq2gguf convert MODEL -o OUT/m.gguf --outtype f16 EXTRA...`` (OUT is created)."""
    out.mkdir(exist_ok=True)
    return run_cli("convert", str(model), "-o", str(out / "m.gguf"), "--outtype", "f16", *extra)


def convert_fails(model: Path, out: Path, *needles: str, extra: tuple[str, ...] = ()) -> str:
    """Convert, expecting a clean failure whose message holds ``needles``; the input must stay as it was."""
    before = tree_digest(model)
    code, output = convert(model, out, *extra)
    line = assert_clean_failure(code, output, out, *needles)
    assert tree_digest(model) == before, "the input was modified"
    return line


def rewrite_safetensors_header(st: Path, edit: Callable[[dict], object]) -> None:
    """Apply ``edit`` to the parsed header of ``st`` (in place) and write the file back, data unchanged.

    ``edit`` may return a replacement for the whole header (any JSON value)."""
    data = st.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    replaced = edit(header)
    raw = json.dumps(header if replaced is None else replaced).encode()
    raw += b" " * (n - len(raw)) if len(raw) <= n else b""
    st.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])
