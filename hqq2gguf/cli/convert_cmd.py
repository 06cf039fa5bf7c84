"""``hqq2gguf convert``: options map one to one onto :meth:`ConvertOptions.from_args`, which holds every rule."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING

import click

from hqq2gguf.cli.errors import clean_errors
from hqq2gguf.options import BITS_RECIPES

if TYPE_CHECKING:
    from hqq2gguf.allocate import Allocation
    from hqq2gguf.options import ConvertOptions


@click.command()
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
                   "every block chosen by the HQQ solver (Q8_0 blocks without importance: llama.cpp's own).")
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
@click.option("--calibration", default="auto", show_default=True, metavar="auto|self|none|FILE",
              help="Column importance from text when no --imatrix is given: self (the model writes its own text and "
                   "llama.cpp's statistics are collected as it writes; nothing from you), none, or a UTF-8 text file "
                   "of your own. auto: self for every recipe but Q8_0 when neither --imatrix nor --importance is "
                   "given, none otherwise.")
@click.option("--save-calibration", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Keep the calibration text that was read in this file.")
@click.option("--feedback/--no-feedback", default=True, show_default=True,
              help="Error feedback (GPTQ's, a block at a time): each block's error is handed to the row's blocks "
                   "not yet solved, weighted by the calibration text's input covariances. Needs calibration text "
                   "(self or FILE). 0.78-0.92x the KLD on three of four models measured; --no-feedback converts "
                   "about 2x faster on a CPU.")
@click.option("--group-size", type=int, default=None,
              help="HQQ group size: the GGUF block type fixes it (e.g. 32 for Q4_K_M); other values are refused.")
@click.option("--seed", type=int, default=None,
              help="Seed of the self-calibration text (--calibration self; default 0): the same seed gives the "
                   "same bytes. Without self-calibration the solver draws no random numbers and it changes nothing.")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto", "torch"]), default="cpu", show_default=True,
              help="Where the solver runs: cpu (the kernel sources compiled by the host C++ compiler, the torch "
                   "solver's bytes; torch where no compiler works), the fused CUDA kernels (compiled at run time; "
                   "needs pip install 'hqq2gguf[cuda]'), auto (CUDA when usable, else cpu), or torch (the pure-torch "
                   "reference solver). cpu stays the default until the kernels have been verified on a GPU "
                   "(cuda/README.md).")
@click.option("--solver-weights", type=click.Choice(["auto", "none", "abs", "square", "llama", "importance"]),
              default=None, help="Element weights of the solver's objective (default: auto, llama.cpp's per type "
                                 "except |x| for Q3_K, chosen by KLD; with --imatrix: llama.cpp's imatrix weighting).")
@click.option("--solver-iterations", type=click.IntRange(0, 1000), default=None,
              help="Half-quadratic iterations per block (default: the solver's).")
@click.option("--revision", default=None, metavar="REV",
              help="With a Hugging Face Hub id as MODEL: the branch, tag or commit to convert (default: main).")
@click.option("--split-max-size", default="0", metavar="N[K|M|G]",
              help="Split the output into parts of at most N bytes (K, M, G: powers of 1000), named "
                   "<name>-00001-of-0000N.gguf, as llama.cpp's converter does; give llama.cpp the first part.")
@click.option("--split-max-tensors", type=int, default=0, metavar="N",
              help="Split the output into parts of at most N tensors (as llama.cpp's converter).")
@click.option("--target-size", default=None, metavar="SIZE",
              help="Choose every weight matrix's type by its predicted KLD (the solver's measured error x the "
                   "matrix's sensitivity, measured by noise injection on the model's own text) so that the tensor "
                   "data takes at most SIZE in the file: bytes, or e.g. 4.2GB (powers of 1000) or 3.9GiB (of "
                   "1024). Without --type the rest follows Q4_K_M. Prints the allocation and llama-quantize's "
                   "equivalent.")
@click.option("--target-bpw", type=float, default=None, metavar="X",
              help="As --target-size, the budget in bits per weight over all tensors.")
@click.option("--allocate", is_flag=True,
              help="With --type RECIPE: re-allocate the recipe's own bytes by predicted KLD (the file is no "
                   "larger than the recipe's).")
@clean_errors
def convert(model: Path, no_check_finite: bool, **options: object) -> None:
    """Convert MODEL (a Hugging Face directory or Hub id such as Qwen/Qwen2.5-0.5B-Instruct, or an F32/F16/BF16
    GGUF, the first part of a split one included) into one GGUF file, or a split set."""
    from hqq2gguf.convert import convert as run_convert
    from hqq2gguf.options import ConvertOptions

    convert_options = ConvertOptions.from_args(check_finite=not no_check_finite, **options)
    result = run_convert(model, convert_options)
    if result.allocation is not None:
        _echo_allocation(result.allocation, convert_options)
    parts = f", {len(result.parts)} parts" if result.parts else ""
    click.echo(f"wrote {result.path} ({result.nbytes / 2**20:.1f} MiB, {result.n_tensors} tensors{parts}, "
               f"{result.seconds:.1f} s)")


def _echo_allocation(allocation: Allocation, options: ConvertOptions) -> None:
    """The allocation's table, and the llama-quantize command that makes the same mix from an F16 GGUF."""
    from hqq2gguf.allocate import format_table, llama_quantize_args

    for line in format_table(allocation):
        click.echo(line)
    args = " ".join(shlex.quote(a) for a in llama_quantize_args(allocation, options.quant))
    click.echo(f"llama.cpp equivalent: llama-quantize {args} MODEL-F16.gguf OUT.gguf {options.recipe.value}")
