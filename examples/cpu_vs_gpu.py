"""The same GGUF on the CPU and on the GPU: generation speed and logit agreement.

    python examples/cpu_vs_gpu.py                              # the quickstart's Q4_K_M file
    python examples/cpu_vs_gpu.py model.gguf --tokens 128

It says plainly when the installed llama-cpp-python cannot offload (the default pip build is CPU-only)
and then runs the CPU half only. For a CUDA build:
CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir --no-binary llama-cpp-python llama-cpp-python
For the full check with pass/fail limits: ``hqq2gguf validate MODEL -r REFERENCE --compare-devices``.
"""

from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np
from hqq2gguf.runtime import (
    Sampling,
    device_info,
    eval_logits,
    load_model,
    stream_completion,
)

DEFAULT_GGUF = Path("quickstart-work") / "SmolLM2-135M-Instruct-Q4_K_M.gguf"
PROMPT = "The history of the printing press begins"
CHECK_TEXT = ("The river that runs past the old mill begins as a thin thread of water high in the hills, where the "
              "snow lies late into the spring.")


def run_on(gguf_path: Path, n_gpu_layers: int, n_tokens: int) -> tuple[np.ndarray, float, str]:
    """(logits of CHECK_TEXT, generated tokens per second, generated text) with ``n_gpu_layers`` offloaded."""
    llm = load_model(gguf_path, n_ctx=512, n_gpu_layers=n_gpu_layers)
    try:
        logits = eval_logits(llm, llm.tokenize(CHECK_TEXT.encode()))
        t0 = time.perf_counter()
        pieces = list(stream_completion(llm, PROMPT, Sampling(max_tokens=n_tokens, temperature=0)))
        seconds = time.perf_counter() - t0
        n = len(llm.tokenize("".join(pieces).encode(), add_bos=False))
    finally:
        llm.close()
    return logits, n / seconds, "".join(pieces)


@click.command()
@click.argument("gguf_path", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_GGUF)
@click.option("--tokens", type=click.IntRange(1), default=64, show_default=True, help="Tokens to generate.")
def main(gguf_path: Path, tokens: int) -> None:
    if not gguf_path.is_file():
        raise click.UsageError(f"{gguf_path} not found: run python examples/quickstart.py first, or name a GGUF")
    info = device_info()
    click.echo(info.describe(hint=True))
    cpu_logits, cpu_speed, cpu_text = run_on(gguf_path, 0, tokens)
    click.echo(f"CPU: {cpu_speed:.1f} tokens/s (greedy): {PROMPT}{cpu_text}")
    if not info.gpu_offload:
        click.echo("No GPU run: this llama-cpp-python build cannot offload (see above).")
        return
    gpu_logits, gpu_speed, gpu_text = run_on(gguf_path, -1, tokens)
    click.echo(f"GPU: {gpu_speed:.1f} tokens/s (greedy): {PROMPT}{gpu_text}")
    diff = float(np.abs(gpu_logits - cpu_logits).max())
    top1 = float((gpu_logits.argmax(-1) == cpu_logits.argmax(-1)).mean())
    click.echo(f"logits GPU vs CPU: max |Δ| {diff:.4f} ({diff / float(np.abs(cpu_logits).max()):.2e} of the largest), "
               f"top-1 agreement {top1:.1%}; same greedy text: {gpu_text == cpu_text}; speed-up {gpu_speed / cpu_speed:.1f}x")


if __name__ == "__main__":
    main()
