"""Import a GGUF into Ollama: the Modelfile hqq2gguf writes for it, and ``ollama create`` when Ollama is
installed (otherwise the exact command to run where it is).

    python examples/ollama_import.py                           # the quickstart's Q4_K_M file
    python examples/ollama_import.py model.gguf --name my-model --ask "Hello!"

The same as ``hqq2gguf ollama MODEL --name NAME``, step by step: recognise the chat template's family,
translate it to Ollama's Go template, write the Modelfile next to the GGUF, create the model, ask it.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import click
from hqq2gguf.runtime.ollama import (
    build_modelfile,
    create_command,
    ollama_binary,
    run_create,
    write_modelfile,
)

DEFAULT_GGUF = Path("quickstart-work") / "SmolLM2-135M-Instruct-Q4_K_M.gguf"


@click.command()
@click.argument("gguf_path", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_GGUF)
@click.option("--name", default="smollm2-hqq:q4_k_m", show_default=True, help="Ollama model name.")
@click.option("--ask", default="What is the capital of France?", show_default=True,
              help="A question for the imported model (only when Ollama is installed).")
def main(gguf_path: Path, name: str, ask: str) -> None:
    if not gguf_path.is_file():
        raise click.UsageError(f"{gguf_path} not found: run python examples/quickstart.py first, or name a GGUF")
    modelfile = build_modelfile(gguf_path, name=name)
    for warning in modelfile.warnings:
        click.echo(f"warning: {warning}")
    path = write_modelfile(modelfile)
    click.echo(f"== {path} (chat template: {modelfile.family.label if modelfile.family else 'not translated'})")
    click.echo(modelfile.text)
    if ollama_binary() is None:
        click.echo("Ollama is not installed here (no `ollama` on PATH). Where it is, import and ask with:")
        click.echo(f"  {shlex.join(create_command(name, path))}")
        click.echo(f"  {shlex.join(['ollama', 'run', name, ask])}")
        return
    if run_create(name, path) != 0:
        raise SystemExit("ollama create failed")
    click.echo(f"== ollama run {name}")
    subprocess.run(["ollama", "run", name, ask], check=True)


if __name__ == "__main__":
    main()
