"""``hqq2gguf run | chat | validate | ollama``: the commands that use an exported GGUF.

Thin, like the rest of the CLI: options map onto ``hqq2gguf.runtime`` (Sampling, ValidateOptions, the
Modelfile builder) and library errors become one-line messages through :func:`~hqq2gguf.cli.errors.clean_errors`.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from hqq2gguf.cli.errors import clean_errors

logger = logging.getLogger(__name__)

EXIT_FAILED = 1
EXIT_COMMANDS = ("/exit", "/quit", "/bye")


def _sampling_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The options that map onto runtime.generate.Sampling and the model's placement."""
    options = [
        click.option("--max-tokens", type=click.IntRange(1), default=256, show_default=True,
                     help="Most tokens generated per reply."),
        click.option("--temperature", type=click.FloatRange(0), default=0.8, show_default=True,
                     help="0: always the most likely token (deterministic, the seed does not matter)."),
        click.option("--top-k", type=click.IntRange(0), default=40, show_default=True),
        click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=0.95, show_default=True),
        click.option("--seed", type=int, default=None, help="Sampler seed: the same seed gives the same text."),
        click.option("-ngl", "--n-gpu-layers", type=int, default=0, show_default=True,
                     help="Layers to offload to the GPU (-1: all); a CPU-only build says so and runs on the CPU."),
        click.option("-c", "--ctx-size", type=click.IntRange(16), default=2048, show_default=True,
                     help="Context length in tokens (prompt + history + reply)."),
        click.option("-t", "--threads", type=click.IntRange(1), default=None, help="CPU threads (default: all)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _load(model: Path, n_gpu_layers: int, ctx_size: int, threads: int | None, seed: int | None):
    from hqq2gguf.runtime.generate import open_chat_model
    from hqq2gguf.runtime.llama import device_info

    if n_gpu_layers == 0:
        logger.info("device: CPU (%s)", device_info().describe())
    return open_chat_model(model, n_ctx=ctx_size, n_gpu_layers=n_gpu_layers, n_threads=threads, seed=seed)


def _stream(pieces) -> str:
    """Echo the pieces as they come; return the whole text."""
    text = []
    for piece in pieces:
        click.echo(piece, nl=False)
        sys.stdout.flush()
        text.append(piece)
    click.echo()
    return "".join(text)


@click.command("run")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-p", "--prompt", required=True, help="The prompt (plain text, or a user message with --chat).")
@click.option("--chat", "as_chat", is_flag=True, help="Wrap the prompt in the GGUF's chat template.")
@click.option("--system", default=None, help="System prompt (with --chat).")
@_sampling_options
@clean_errors
def run(model: Path, prompt: str, as_chat: bool, system: str | None, max_tokens: int, temperature: float,
        top_k: int, top_p: float, seed: int | None, n_gpu_layers: int, ctx_size: int, threads: int | None) -> None:
    """Generate from PROMPT with MODEL (a GGUF), streaming the text to stdout."""
    from hqq2gguf.errors import OptionError
    from hqq2gguf.runtime.generate import (
        Sampling,
        stream_chat,
        stream_completion,
        warn_without_template,
    )

    if system is not None and not as_chat:
        raise OptionError("--system needs --chat")
    sampling = Sampling(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    llm = _load(model, n_gpu_layers, ctx_size, threads, seed)
    if as_chat:
        warn_without_template(llm, model)
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        _stream(stream_chat(llm, messages, sampling))
    else:
        _stream(stream_completion(llm, prompt, sampling))


@click.command("chat")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--system", default=None, help="System prompt for the whole conversation.")
@_sampling_options
@clean_errors
def chat(model: Path, system: str | None, max_tokens: int, temperature: float, top_k: int, top_p: float,
         seed: int | None, n_gpu_layers: int, ctx_size: int, threads: int | None) -> None:
    """Talk with MODEL (a GGUF) through its chat template; the history is kept. /exit or EOF (Ctrl-D) ends."""
    from hqq2gguf.runtime.generate import ChatSession, Sampling, warn_without_template

    sampling = Sampling(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    llm = _load(model, n_gpu_layers, ctx_size, threads, seed)
    warn_without_template(llm, model)
    session = ChatSession(llm, sampling, system=system)
    click.echo(f"chatting with {model.name}: /exit or Ctrl-D ends", err=True)
    while True:
        click.echo(">>> ", nl=False)
        sys.stdout.flush()
        line = sys.stdin.readline()
        if not line:  # EOF
            click.echo()
            break
        text = line.strip()
        if not text:
            continue
        if text in EXIT_COMMANDS:
            break
        _stream(session.send(text))


@click.command("validate")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-r", "--reference", required=True, type=click.Path(path_type=Path),
              help="F32/F16/BF16 GGUF of the same model, or its Hugging Face directory (converted to a temporary "
                   "F16 GGUF and deleted afterwards).")
@click.option("--text", "text_file", type=click.Path(path_type=Path), default=None,
              help="Text file to score, read as llama-perplexity -f reads it (default: the built-in corpus, a "
                   "few KB of English prose).")
@click.option("--chunks", type=click.IntRange(1), default=None, help="At most this many chunks (default: all).")
@click.option("-c", "--ctx-size", type=click.IntRange(8), default=512, show_default=True,
              help="Chunk length in tokens; the second half of each chunk is scored (as llama-perplexity).")
@click.option("-t", "--threads", type=click.IntRange(1), default=None, help="CPU threads (default: all).")
@click.option("-ngl", "--n-gpu-layers", type=int, default=0, show_default=True,
              help="Run both models with this many layers on the GPU (-1: all).")
@click.option("--compare-devices", is_flag=True,
              help="Run the checks on the CPU and on CUDA, and compare the file's logits across the two. "
                   "Fails when the llama-cpp-python build has no usable CUDA.")
@click.option("--max-kld", type=click.FloatRange(0), default=None, help="Limit on the mean KLD.")
@click.option("--max-kld-p99", type=click.FloatRange(0), default=None, help="Limit on the 99th-percentile KLD.")
@click.option("--min-top1", type=click.FloatRange(0, 1), default=None,
              help="Least top-1 agreement, a fraction (0.9 = 90%).")
@click.option("--max-ppl-ratio", type=click.FloatRange(0), default=None, help="Limit on PPL / PPL(reference).")
@click.option("--no-check-values", is_flag=True, help="Skip decoding every block to check it is finite.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a table.")
@clean_errors
def validate(model: Path, reference: Path, text_file: Path | None, chunks: int | None, ctx_size: int,
             threads: int | None, n_gpu_layers: int, compare_devices: bool, max_kld: float | None,
             max_kld_p99: float | None, min_top1: float | None, max_ppl_ratio: float | None,
             no_check_values: bool, as_json: bool) -> None:
    """Check MODEL (a GGUF) against its unquantized REFERENCE: structure, then KL-divergence, top-1
    agreement and perplexity computed as llama-perplexity does. Exit 0 when every check passes, 1 otherwise.

    Default limits depend on the file type (looser for Q2_K than for Q8_0); see the README."""
    from hqq2gguf.runtime.report import format_report
    from hqq2gguf.runtime.validate import ValidateOptions
    from hqq2gguf.runtime.validate import validate as run_validate

    options = ValidateOptions(reference=reference, text=text_file, n_ctx=ctx_size, n_chunks=chunks,
                              n_threads=threads, n_gpu_layers=n_gpu_layers, compare_devices=compare_devices,
                              check_values=not no_check_values, max_kld=max_kld, max_kld_p99=max_kld_p99,
                              min_top1=min_top1, max_ppl_ratio=max_ppl_ratio)
    report = run_validate(model, options)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=1))
    else:
        for line in format_report(report):
            click.echo(line)
    sys.exit(0 if report.passed else EXIT_FAILED)


@click.command("ollama")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-n", "--name", required=True, help="Ollama model name (name, namespace/name, optional :tag).")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Modelfile path or directory (default: MODEL with the suffix .Modelfile).")
@click.option("--system", default=None, help="System prompt (default: the chat template's own, if any).")
@click.option("--force", is_flag=True, help="Overwrite an existing Modelfile not written by hqq2gguf.")
@click.option("--no-create", is_flag=True, help="Only write the Modelfile, even when ollama is installed.")
@clean_errors
def ollama(model: Path, name: str, output: Path | None, system: str | None, force: bool, no_create: bool) -> None:
    """Write an Ollama Modelfile for MODEL (a GGUF) and import it with `ollama create` when Ollama is on PATH."""
    import shlex

    from hqq2gguf.runtime.ollama import (
        build_modelfile,
        check_name,
        create_command,
        ollama_binary,
        run_create,
        write_modelfile,
    )

    check_name(name)
    modelfile = build_modelfile(model, name=name, system=system)
    for warning in modelfile.warnings:
        click.echo(f"warning: {warning}", err=True)
    path = write_modelfile(modelfile, output, force=force)
    family = modelfile.family.label if modelfile.family else "none"
    click.echo(f"wrote {path} (chat template: {family})")
    command = shlex.join(create_command(name, path))
    if no_create:
        click.echo(f"import with: {command}")
    elif ollama_binary() is None:
        click.echo(f"ollama is not on PATH; to import the model run: {command}")
    else:
        sys.exit(run_create(name, path))

