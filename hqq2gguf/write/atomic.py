"""Write a file (or every part of a split set) under temporary names in the target directory; rename them
into place only when all are complete.

A crash, Ctrl-C, SIGTERM or a full disk leaves neither a partial output nor a temporary file.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
from collections.abc import Iterator, Sequence
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
    """Yield a temporary path next to ``path``; on success rename it to ``path``, else delete it."""
    with atomic_outputs([path], force=force) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_outputs(paths: Sequence[Path], *, force: bool) -> Iterator[list[Path]]:
    """Yield one temporary path next to each of ``paths`` (the parts of a split GGUF, or one file); on success
    rename them all into place, else delete them all: a set is complete or absent, never partial.

    SIGTERM is turned into KeyboardInterrupt for the duration, so both Ctrl-C and a polite kill
    clean up the temporary files.
    """
    for path in paths:
        check_output_path(path, force=force)
    tmps = [path.with_name(f".{path.name}.{os.getpid()}.partial") for path in paths]
    previous = signal.getsignal(signal.SIGTERM)
    in_main_thread = _install_sigterm()
    try:
        yield tmps
        _rename_all(tmps, paths)
    except OSError as e:
        _remove(*tmps)
        if e.errno == errno.ENOSPC:
            raise OutputError("no space left on device while writing; nothing was written", file=paths[0]) from e
        raise OutputError(f"cannot write: {e.strerror or e}", file=paths[0]) from e
    except BaseException:
        _remove(*tmps)
        raise
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _rename_all(tmps: Sequence[Path], paths: Sequence[Path]) -> None:
    """Rename every temporary file into place; if one rename fails, take back the parts already renamed."""
    done: list[Path] = []
    try:
        for tmp, path in zip(tmps, paths):
            os.replace(tmp, path)
            done.append(path)
    except BaseException:
        _remove(*done)
        raise


def _install_sigterm() -> bool:
    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt("terminated")

    try:
        signal.signal(signal.SIGTERM, on_sigterm)
        return True
    except ValueError:  # not the main thread: leave signal handling to the host application
        return False


def _remove(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
