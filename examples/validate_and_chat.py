"""Convert -> validate -> chat, in Python: the library calls behind ``hqq2gguf convert``, ``validate``
and ``chat``, then the quantized file used directly through llama-cpp-python.

    python examples/validate_and_chat.py                       # SmolLM2-135M-Instruct, Q4_K_M
    python examples/validate_and_chat.py --hf-dir ./MyModel --type Q5_K_M --workdir out/

Without ``--hf-dir`` the default model is obtained as in examples/quickstart.py. The validation table is
printed; the exit status is 1 when the quantized file fails it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import click
from hqq2gguf.runtime import ValidateOptions
from hqq2gguf.runtime.report import format_report
from hqq2gguf.runtime.validate import validate

from hqq2gguf.convert import convert
from hqq2gguf.options import ConvertOptions, OutType
from hqq2gguf.recipes import Recipe


def chat_with_llama_cpp(gguf_path: Path, question: str) -> None:
    """Plain llama-cpp-python: the GGUF's embedded chat template is picked up by Llama() itself."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf_path), n_ctx=1024, verbose=False)
    messages = [{"role": "user", "content": question}]
    click.echo(f"user: {question}\nassistant: ", nl=False)
    for chunk in llm.create_chat_completion(messages=messages, temperature=0.0, max_tokens=64, stream=True):
        click.echo(chunk["choices"][0]["delta"].get("content", ""), nl=False)
    click.echo()


@click.command()
@click.option("--hf-dir", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="A Hugging Face model directory (default: SmolLM2-135M-Instruct, obtained as the quickstart does).")
@click.option("--type", "recipe", default="Q4_K_M", show_default=True, help="Quantization recipe.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("quickstart-work"),
              show_default=True)
@click.option("--question", default="Name three colours of the rainbow.", show_default=True)
def main(hf_dir: Path | None, recipe: str, workdir: Path, question: str) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("gguf").setLevel(logging.ERROR)
    workdir.mkdir(parents=True, exist_ok=True)
    if hf_dir is None:
        from quickstart import (
            obtain_model,  # examples/ is on sys.path when this file runs as a script
        )

        hf_dir = obtain_model(workdir)
    stem = hf_dir.name.removesuffix("-hf")
    click.echo(f"== convert {hf_dir} to F16 (the reference) and to {recipe}")
    reference = convert(hf_dir, ConvertOptions(outtype=OutType.F16, output=workdir / f"{stem}-F16.gguf", force=True))
    quantized = convert(hf_dir, ConvertOptions(recipe=Recipe.parse(recipe), output=workdir / f"{stem}-{recipe}.gguf",
                                               force=True))
    click.echo(f"{reference.path} {reference.nbytes / 2**20:.1f} MiB, {quantized.path} {quantized.nbytes / 2**20:.1f} MiB")

    click.echo("== validate")
    report = validate(quantized.path, ValidateOptions(reference=reference.path))
    for line in format_report(report):
        click.echo(line)

    click.echo("== chat (llama-cpp-python)")
    chat_with_llama_cpp(quantized.path, question)
    raise SystemExit(0 if report.passed else 1)


if __name__ == "__main__":
    main()
