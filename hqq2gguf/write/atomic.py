"""Write a file under a temporary name in the target directory; rename it into place only when complete.

A crash, Ctrl-C, SIGTERM or a full disk leaves neither a partial output nor the temporary file.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

from hqq2gguf.errors import OutputError

logger = logging.getLogger(__name__)


def check_output_path(path: Path, *, force: bool) -> None:
    """Fail early, before any work, if the output cannot be written."""
    if path.exists() and not force:
        raise OutputError("output file exists (pass --force to overwrite)", file=path)
    if path.is_dir():
        raise OutputError("output path is a directory", file=path)
    parent = path.parent
    if not parent.exists():
        raise OutputError("output directory does not exist", file=parent)
    if not parent.is_dir():
        raise OutputError("output directory is a file, not a directory", file=parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError("output directory is not writable", file=parent)


@contextlib.contextmanager
def atomic_output(path: Path, *, force: bool) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it to ``path``, else delete it.

    SIGTERM is turned into KeyboardInterrupt for the duration, so both Ctrl-C and a polite kill
    clean up the temporary file.
    """
    check_output_path(path, force=force)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    previous = signal.getsignal(signal.SIGTERM)
    in_main_thread = _install_sigterm()
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        if e.errno == errno.ENOSPC:
            raise OutputError("no space left on device while writing; nothing was written", file=path) from e
        raise OutputError(f"cannot write: {e.strerror or e}", file=path) from e
    except BaseException:
        _remove(tmp)
        raise
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _install_sigterm() -> bool:
    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt("terminated")

    try:
        signal.signal(signal.SIGTERM, on_sigterm)
        return True
    except ValueError:  # not the main thread: leave signal handling to the host application
        return False


def _remove(tmp: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
