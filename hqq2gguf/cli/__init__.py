"""The ``hqq2gguf`` command: a thin layer over the library that turns its errors into one-line messages.

    convert                        cli/convert_cmd.py  -> hqq2gguf.convert (the pipeline)
    imatrix                        cli/imatrix_cmd.py  -> hqq2gguf.imatrix (llama.cpp's importance matrix)
    inspect, diff                  cli/files_cmd.py    -> hqq2gguf.describe, hqq2gguf.gguf_diff
    run, chat, validate, ollama    cli/runtime_cmd.py  -> hqq2gguf.runtime (llama-cpp-python)
    serve                          cli/serve_cmd.py    -> hqq2gguf.runtime.serve (llama-cpp-python's server)

Every command is wrapped by :func:`~hqq2gguf.cli.errors.clean_errors`; each imports its library module when
it runs, so ``hqq2gguf --help`` starts fast.
"""

from __future__ import annotations

import click

from hqq2gguf import __version__
from hqq2gguf.cli.convert_cmd import convert
from hqq2gguf.cli.errors import EXIT_ERROR, EXIT_INTERRUPTED, clean_errors, setup_logging
from hqq2gguf.cli.files_cmd import diff, inspect
from hqq2gguf.cli.imatrix_cmd import imatrix
from hqq2gguf.cli.runtime_cmd import chat, ollama, run, validate
from hqq2gguf.cli.serve_cmd import serve

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "clean_errors", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hqq2gguf")
@click.option("-v", "--verbose", count=True, help="More log output (-vv: per-tensor lines and library logs).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
def main(verbose: int, quiet: bool, debug: bool) -> None:
    """Convert Hugging Face models and GGUF files into standard GGUF files."""
    setup_logging(verbose, quiet)


for _command in (convert, imatrix, inspect, diff, run, chat, validate, ollama, serve):
    main.add_command(_command)
