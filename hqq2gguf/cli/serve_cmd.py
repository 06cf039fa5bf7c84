"""``hqq2gguf serve``: a local OpenAI-compatible endpoint for a GGUF; options map onto
:class:`hqq2gguf.runtime.serve.ServeOptions`, which holds every rule."""

from __future__ import annotations

from pathlib import Path

import click

from hqq2gguf.cli.errors import clean_errors


@click.command("serve")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. The default answers this machine only; 0.0.0.0 exposes the model to "
                   "the network, without authentication.")
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--alias", default=None, help="Model name clients use (default: the file's stem).")
@click.option("-c", "--ctx-size", type=int, default=2048, show_default=True, help="Context length in tokens.")
@click.option("-ngl", "--n-gpu-layers", type=int, default=0, show_default=True,
              help="Layers to offload to the GPU (-1: all); a CPU-only build says so and runs on the CPU.")
@click.option("-t", "--threads", type=click.IntRange(1), default=None, help="CPU threads.")
@clean_errors
def serve(model: Path, host: str, port: int, alias: str | None, ctx_size: int, n_gpu_layers: int,
          threads: int | None) -> None:
    """Serve MODEL (a GGUF, or the first part of a split one) at http://HOST:PORT/v1 (OpenAI's chat completions,
    completions and models endpoints, streaming included), chatting through its own chat template. Needs
    pip install 'hqq2gguf[serve]'. Ctrl-C stops it."""
    from hqq2gguf.runtime.serve import ServeOptions
    from hqq2gguf.runtime.serve import serve as run_server

    options = ServeOptions(model, host=host, port=port, n_ctx=ctx_size, n_gpu_layers=n_gpu_layers, n_threads=threads,
                           alias=alias)
    click.echo(f"serving {model} at http://{host}:{port}/v1 (Ctrl-C to stop)", err=True)
    run_server(options)
