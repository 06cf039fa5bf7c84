"""``hqq2gguf imatrix``: options map one to one onto :func:`hqq2gguf.imatrix.make_imatrix`."""

from __future__ import annotations

from pathlib import Path

import click

from hqq2gguf.cli.errors import clean_errors


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The imatrix file to write (llama.cpp's GGUF imatrix format, *.gguf).")
@click.option("--text", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A UTF-8 text file to read (default: text the model writes itself).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the self-written text.")
@click.option("--chunk", type=click.IntRange(16), default=512, show_default=True,
              help="Tokens per chunk, as llama-imatrix -c.")
@click.option("--save-calibration", "save_text", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Keep the text that was read in this file.")
@click.option("--process-output", is_flag=True, help="Also collect output.weight's input (as llama-imatrix).")
@click.option("--allow-pickle", is_flag=True, help="Load .bin/.pt pickle checkpoints (see convert).")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@clean_errors
def imatrix(model: Path, **options: object) -> None:
    """Write llama.cpp's importance matrix of MODEL (a Hugging Face directory or a GGUF llama.cpp can run),
    computed as llama-imatrix computes it, over the model's own text or --text."""
    from hqq2gguf.imatrix import make_imatrix

    result = make_imatrix(model, **options)
    click.echo(f"wrote {result.path} ({result.n_entries} matrices, {result.n_tokens} tokens, "
               f"text sha256 {result.text_sha256[:16]}...)")
