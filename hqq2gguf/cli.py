"""The ``hqq2gguf`` command: a thin layer over the library that turns its errors into one-line messages."""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import click

from hqq2gguf import __version__
from hqq2gguf.errors import Hqq2GgufError

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
# --bits N: the recipe the seed documents map each bit width to.
BITS_RECIPES = {"8": "Q8_0", "6": "Q6_K", "5": "Q5_K_M", "4": "Q4_K_M", "3": "Q3_K_M", "2": "Q2_K", "1": "TQ1_0"}


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    # Third-party chatter (transformers, gguf) only when asked for.
    for name in ("transformers", "urllib3"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose > 1 else logging.WARNING)
    # gguf-py warns when a key is written twice, which llama.cpp's own vocab code does on purpose.
    logging.getLogger("gguf").setLevel(logging.DEBUG if verbose > 1 else logging.ERROR)


def _clean_errors(func: Callable[..., Any]) -> Callable[..., Any]:
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hqq2gguf")
@click.option("-v", "--verbose", count=True, help="More log output (-vv: per-tensor lines and library logs).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
def main(verbose: int, quiet: bool, debug: bool) -> None:
    """Convert Hugging Face models and GGUF files into standard GGUF files."""
    _setup_logging(verbose, quiet)


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Output .gguf file, or an existing directory (file named by the GGUF naming convention). "
                   "Default: the current directory.")
@click.option("--outtype", type=click.Choice(["f32", "f16", "bf16", "q8_0", "auto"]), default="f16",
              show_default=True, help="Type of the weight matrices; 1-D tensors and norms stay F32. "
                                      "auto: the checkpoint's own precision (lossless).")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("--allow-requantize", is_flag=True, help="Accept an already-quantized GGUF (dequantized first).")
@click.option("--allow-pickle", is_flag=True,
              help="Load .bin/.pt pickle checkpoints with torch.load(weights_only=True). Refused by default: "
                   "pickle files can run code.")
@click.option("--model-name", default=None, help="Override general.name (and so the output file name).")
@click.option("--no-check-finite", is_flag=True, help="Do not refuse weights holding NaN/Inf.")
@click.option("--type", "recipe", default=None, metavar="RECIPE",
              help="Quantize with llama.cpp's per-tensor types for RECIPE (Q8_0, Q6_K, Q5_K_M, Q5_K_S, Q4_K_M, "
                   "Q4_K_S, Q3_K_L, Q3_K_M, Q3_K_S, Q2_K, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, IQ4_XS, TQ1_0, TQ2_0), "
                   "every block chosen by the HQQ solver.")
@click.option("--bits", type=click.Choice(sorted(BITS_RECIPES)), default=None,
              help="Shorthand for --type: 8=Q8_0 6=Q6_K 5=Q5_K_M 4=Q4_K_M 3=Q3_K_M 2=Q2_K 1=TQ1_0.")
@click.option("--output-tensor-type", default=None, metavar="TYPE", help="output.weight's type (as llama-quantize).")
@click.option("--keep-lm-head-fp16", is_flag=True, help="Same as --output-tensor-type F16.")
@click.option("--token-embedding-type", default=None, metavar="TYPE", help="token_embd.weight's type.")
@click.option("--tensor-type", multiple=True, metavar="REGEX=TYPE",
              help="Type for tensors whose name matches REGEX (repeatable; the first match wins).")
@click.option("--pure", is_flag=True, help="The recipe's default type everywhere, no mixture rules.")
@click.option("--leave-output-tensor", is_flag=True, help="Keep output.weight unquantized.")
@click.option("--imatrix", type=click.Path(path_type=Path), default=None,
              help="llama.cpp importance matrix (GGUF or legacy .dat): per-column weights of the objective.")
@click.option("--importance", type=click.Choice(["none", "norms", "derived"]), default="none",
              show_default=True,
              help="Data-free column importance when no --imatrix is given (norms: squared weights of the norm "
                   "feeding each matrix; derived: also estimates for attn_output and ffn_down from the weights).")
@click.option("--group-size", type=int, default=None,
              help="HQQ group size: the GGUF block type fixes it (e.g. 32 for Q4_K_M); other values are refused.")
@click.option("--seed", type=int, default=None,
              help="Accepted for HQQ compatibility: the solver draws no random numbers, the output is the same "
                   "for every seed.")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True,
              help="Where the solver runs: the torch path, the fused CUDA kernels (compiled at run time; needs "
                   "pip install 'hqq2gguf[cuda]'), or auto (CUDA when usable). cpu stays the default until the "
                   "kernels have been verified on a GPU (cuda/README.md).")
@click.option("--solver-weights", type=click.Choice(["auto", "none", "abs", "square", "llama", "importance"]),
              default=None, help="Element weights of the solver's objective (default: auto, llama.cpp's per type "
                                 "except |x| for Q3_K, chosen by KLD; with --imatrix: llama.cpp's imatrix weighting).")
@click.option("--solver-iterations", type=click.IntRange(0, 1000), default=None,
              help="Half-quadratic iterations per block (default: the solver's).")
@_clean_errors
def convert(model: Path, output: Path | None, outtype: str, force: bool, allow_requantize: bool,
            allow_pickle: bool, model_name: str | None, no_check_finite: bool, recipe: str | None,
            bits: str | None, output_tensor_type: str | None, keep_lm_head_fp16: bool,
            token_embedding_type: str | None, tensor_type: tuple[str, ...], pure: bool, leave_output_tensor: bool,
            imatrix: Path | None, importance: str, group_size: int | None, seed: int | None, device: str,
            solver_weights: str | None, solver_iterations: int | None) -> None:
    """Convert MODEL (a Hugging Face directory or an F32/F16/BF16 GGUF) into one GGUF file."""
    from hqq2gguf.convert import convert as run_convert
    from hqq2gguf.cuda import Device
    from hqq2gguf.errors import OptionError
    from hqq2gguf.importance import ImportanceSource
    from hqq2gguf.optimize import SolverConfig, WeightMode
    from hqq2gguf.options import ConvertOptions, OutType
    from hqq2gguf.recipes import QuantOptions, Recipe

    if recipe is not None and bits is not None:
        raise OptionError("--type and --bits are exclusive")
    if keep_lm_head_fp16:
        if output_tensor_type is not None:
            raise OptionError("--keep-lm-head-fp16 and --output-tensor-type are exclusive")
        output_tensor_type = "F16"
    chosen = recipe or (BITS_RECIPES[bits] if bits else None)
    if chosen is None and (group_size is not None or seed is not None):
        raise OptionError("--group-size and --seed need --type (or --bits)")
    if group_size is not None:
        Recipe.parse(chosen).check_group_size(group_size)
    del seed  # HQQ's option; the solver is deterministic and draws no random numbers (tested)
    if solver_weights is None:
        solver_weights = "importance" if imatrix is not None else "auto"
    solver = SolverConfig(weights=WeightMode(solver_weights))
    if solver_iterations is not None:
        solver = dataclasses.replace(solver, iterations=solver_iterations)
    options = ConvertOptions(outtype=OutType(outtype), output=output, force=force,
                             allow_requantize=allow_requantize, allow_pickle=allow_pickle,
                             model_name=model_name, check_finite=not no_check_finite,
                             recipe=Recipe.parse(chosen) if chosen else None,
                             quant=QuantOptions.from_cli(tensor_type=tensor_type, output_tensor_type=output_tensor_type,
                                                         token_embedding_type=token_embedding_type, pure=pure,
                                                         leave_output_tensor=leave_output_tensor),
                             solver=solver, imatrix=imatrix, importance=ImportanceSource(importance),
                             device=Device(device))
    if options.recipe is None and (options.quant != QuantOptions()):
        raise OptionError("per-tensor type options need --type (or --bits)")
    result = run_convert(model, options)
    click.echo(f"wrote {result.path} ({result.nbytes / 2**20:.1f} MiB, {result.n_tensors} tensors, "
               f"{result.seconds:.1f} s)")


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--tensors/--no-tensors", default=True, show_default=True, help="List every tensor.")
@_clean_errors
def inspect(path: Path, tensors: bool) -> None:
    """Describe a GGUF file or a Hugging Face model directory."""
    from hqq2gguf.inspect import describe

    for line in describe(path, tensors=tensors):
        click.echo(line)


@main.command()
@click.argument("actual", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("expected", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--all-keys", is_flag=True, help="Also compare hqq2gguf's own provenance keys.")
@_clean_errors
def diff(actual: Path, expected: Path, all_keys: bool) -> None:
    """Compare two GGUF files: tensors (names, order, shapes, types, bytes) and metadata (keys, types,
    values, order). Exit 0 when they are equivalent, 1 otherwise."""
    from hqq2gguf.gguf_diff import IGNORED_PREFIXES, compare_gguf

    diffs = compare_gguf(actual, expected, ignored_prefixes=() if all_keys else IGNORED_PREFIXES)
    for line in diffs:
        click.echo(line)
    click.echo(f"{len(diffs)} difference(s)" if diffs else "equivalent")
    sys.exit(1 if diffs else 0)


# run / chat / validate / ollama: the commands that use an exported GGUF (hqq2gguf/cli_runtime.py).
from hqq2gguf.cli_runtime import COMMANDS as _RUNTIME_COMMANDS  # noqa: E402 (it imports this module)

for _command in _RUNTIME_COMMANDS:
    main.add_command(_command)


if __name__ == "__main__":
    main()
