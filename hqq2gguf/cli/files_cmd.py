"""``hqq2gguf inspect | diff``: look at GGUF files and model directories."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hqq2gguf.cli.errors import clean_errors


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--tensors/--no-tensors", default=True, show_default=True, help="List every tensor.")
@clean_errors
def inspect(path: Path, tensors: bool) -> None:
    """Describe a GGUF file or a Hugging Face model directory."""
    from hqq2gguf.describe import describe

    for line in describe(path, tensors=tensors):
        click.echo(line)


@click.command()
@click.argument("actual", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("expected", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--all-keys", is_flag=True, help="Also compare hqq2gguf's own provenance keys.")
@clean_errors
def diff(actual: Path, expected: Path, all_keys: bool) -> None:
    """Compare two GGUF files: tensors (names, order, shapes, types, bytes) and metadata (keys, types,
    values, order). Exit 0 when they are equivalent, 1 otherwise."""
    from hqq2gguf.gguf_diff import IGNORED_PREFIXES, compare_gguf

    diffs = compare_gguf(actual, expected, ignored_prefixes=() if all_keys else IGNORED_PREFIXES)
    for line in diffs:
        click.echo(line)
    click.echo(f"{len(diffs)} difference(s)" if diffs else "equivalent")
    sys.exit(1 if diffs else 0)
