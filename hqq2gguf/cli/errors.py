"""What every command shares: logging set-up and the one wrapper that turns library errors into one line."""

from __future__ import annotations

import functools
import logging
import sys
from typing import Any, Callable

import click

from hqq2gguf.errors import Hqq2GgufError

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


def setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    # Third-party chatter (transformers, gguf) only when asked for.
    for name in ("transformers", "urllib3"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose > 1 else logging.WARNING)
    # gguf-py warns when a key is written twice, which llama.cpp's own vocab code does on purpose.
    logging.getLogger("gguf").setLevel(logging.DEBUG if verbose > 1 else logging.ERROR)


def clean_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Library errors -> 'error: <file>: <reason>' and exit 1; Ctrl-C -> exit 130. --debug shows tracebacks."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = click.get_current_context().find_root().params.get("debug", False)
        try:
            return func(*args, **kwargs)
        except Hqq2GgufError as e:
            if debug:
                raise
            click.echo(f"error: {e.message}", err=True)
            sys.exit(EXIT_ERROR)
        except KeyboardInterrupt:
            click.echo("interrupted: no output was written", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except MemoryError:
            if debug:
                raise
            click.echo("error: out of memory", err=True)
            sys.exit(EXIT_ERROR)

    return wrapper
