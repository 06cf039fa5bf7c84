"""Throughput of the fused CUDA solver against the torch solver, and end to end on a synthetic 8B Llama.

    python benchmarks/cuda_throughput.py                          # every CUDA type, the 32-layer model
    python benchmarks/cuda_throughput.py --types Q4_K,Q6_K --layers 4

Per type, on a (--rows x 4096) matrix of realistic weights: weights/s of ``solve_cuda`` split into its host
preparation (llama.cpp's baseline by ggml, element weights), the kernel, and the host float64 re-check (NVRTC's
first compile is reported apart); the torch solver (``hqq2gguf.optimize.solve``, which runs on the CPU only:
it moves its rows there) on the first --torch-rows rows, and how many of those blocks the two wrote alike.
End to end: a Llama-3-8B-shaped checkpoint (bf16 safetensors shards of random weights with per-row and
per-column scales and outlier columns, built once in --workdir) streamed tensor by tensor into a GGUF: plain
(every tensor to F16: the read + write cost) and quantized (every 2-D weight through ``encode_cuda`` as
--model-type). Tensor names stay HF's: the file measures time, it is not meant to be loaded.

Writes benchmarks/results/cuda_throughput.json and .md with the device, driver and peak GPU memory. Needs a
usable CUDA device and CuPy (pip install hqq2gguf[cuda]); without them it stops with the reason.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import click
import gguf
import numpy as np
import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
Q = gguf.GGMLQuantizationType
LLAMA_8B = {"hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
            "num_key_value_heads": 8, "vocab_size": 128256}
SHARD_BYTES = 4 << 30
logger = logging.getLogger("cuda_throughput")


# ---------------------------------------------------------------- synthetic weights

def realistic(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Random weights at a trained model's scale (std 0.02), per-row and per-column scales, a few outlier
    columns; norms around 1. Made on the GPU, returned as bf16 on the CPU."""
    dev = gen.device
    if len(shape) == 1:
        return (1.0 + 0.1 * torch.randn(shape, generator=gen, device=dev)).to(torch.bfloat16).cpu()
    rows, cols = shape
    x = torch.randn(shape, generator=gen, device=dev) * 0.02
    col = torch.exp(0.3 * torch.randn(cols, generator=gen, device=dev))
    col[torch.randint(0, cols, (max(1, cols // 500),), generator=gen, device=dev)] *= 8.0
    x *= col * torch.exp(0.2 * torch.randn(rows, 1, generator=gen, device=dev))
    return x.to(torch.bfloat16).cpu()


def llama_tensors(layers: int) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(HF name, shape) of every tensor of a Llama-3-8B-shaped model with ``layers`` layers."""
    h, f, v = LLAMA_8B["hidden_size"], LLAMA_8B["intermediate_size"], LLAMA_8B["vocab_size"]
    kv = LLAMA_8B["num_key_value_heads"] * (h // LLAMA_8B["num_attention_heads"])
    yield "model.embed_tokens.weight", (v, h)
    for i in range(layers):
        p = f"model.layers.{i}."
        yield from ((p + "self_attn.q_proj.weight", (h, h)), (p + "self_attn.k_proj.weight", (kv, h)),
                    (p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.o_proj.weight", (h, h)),
                    (p + "mlp.gate_proj.weight", (f, h)), (p + "mlp.up_proj.weight", (f, h)),
                    (p + "mlp.down_proj.weight", (h, f)), (p + "input_layernorm.weight", (h,)),
                    (p + "post_attention_layernorm.weight", (h,)))
    yield "model.norm.weight", (h,)
    yield "lm_head.weight", (v, h)


def build_model(directory: Path, layers: int) -> float:
    """The synthetic checkpoint in ``directory`` (kept between runs); seconds spent building it."""
    from safetensors.torch import save_file

    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": layers,
              "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "torch_dtype": "bfloat16", **LLAMA_8B}
    if (directory / "config.json").is_file() and json.loads((directory / "config.json").read_text()) == config:
        return 0.0
    start = time.perf_counter()
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    gen = torch.Generator(device="cuda").manual_seed(1234)
    shard, size, index = {}, 0, 0
    for name, shape in llama_tensors(layers):
        shard[name] = realistic(shape, gen)
        size += shard[name].nbytes
        if size >= SHARD_BYTES:
            save_file(shard, str(directory / f"model-{index:05d}.safetensors"))
            shard, size, index = {}, 0, index + 1
    if shard:
        save_file(shard, str(directory / f"model-{index:05d}.safetensors"))
    (directory / "config.json").write_text(json.dumps(config))
    return time.perf_counter() - start


# ---------------------------------------------------------------- measurements

def bench_type(qtype: Q, rows: int, torch_rows: int) -> dict[str, object]:
    from hqq2gguf.cuda import CudaLauncher, loader
    from hqq2gguf.cuda.host import finish, prepare
    from hqq2gguf.optimize import SolverConfig, solve
    from hqq2gguf.optimize.solver import solver_spec

    cfg = SolverConfig().for_type(qtype.name)
    x = realistic((rows, 4096), torch.Generator(device="cuda").manual_seed(7)).float()
    t0 = time.perf_counter()
    loader.kernel(qtype)  # NVRTC compile of the family (once per process), not part of the rates below
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    prep = prepare(solver_spec(qtype), x.numpy(), None, cfg)  # one part: the whole matrix (host + kernel apart)
    prep_s = time.perf_counter() - t0
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out, _ = CudaLauncher().run(prep.inputs)
    kernel_s = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated()
    t0 = time.perf_counter()
    packed, solution = finish(prep, out)
    finish_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = solve(x[:torch_rows], qtype, config=cfg)
    torch_s = time.perf_counter() - t0
    ref_blocks = ref.packed().reshape(-1, gguf.GGML_QUANT_SIZES[qtype][1])
    ours = packed[:torch_rows].reshape(ref_blocks.shape)
    n = x.numel()
    row = {"type": qtype.name, "weights": n, "compile_s": compile_s, "prepare_s": prep_s, "kernel_s": kernel_s,
           "finish_s": finish_s, "kernel_weights_per_s": n / kernel_s,
           "solve_cuda_weights_per_s": n / (prep_s + kernel_s + finish_s), "peak_gpu_bytes": peak,
           "torch_weights": torch_rows * 4096, "torch_s": torch_s, "torch_weights_per_s": torch_rows * 4096 / torch_s,
           "identical_blocks": float((ours == ref_blocks).all(axis=1).mean()),
           "objective_vs_llama": float(solution.objective.sum() / max(solution.baseline_objective.sum(), 1e-300))}
    logger.info("%-7s kernel %.3g w/s, solve_cuda %.3g w/s, torch %.3g w/s, identical %.4f", qtype.name,
                row["kernel_weights_per_s"], row["solve_cuda_weights_per_s"], row["torch_weights_per_s"],
                row["identical_blocks"])
    return row


class PlainF16:
    """Every matrix to F16, norms to F32: what reading and writing cost without any solver."""

    label = "plain F16 (read + write)"

    def qtype_of(self, shape: tuple[int, ...]) -> Q:
        return Q.F32 if len(shape) == 1 else Q.F16

    def encode(self, tensor: torch.Tensor) -> np.ndarray:
        return tensor.float().numpy() if tensor.dim() == 1 else tensor.to(torch.float16).numpy()


class CudaQuant:
    """Every matrix through encode_cuda (the pipeline's CUDA entry point, row part by row part) as ``qtype``,
    norms to F32."""

    def __init__(self, qtype: Q) -> None:
        self.qtype, self.label = qtype, f"encode_cuda {qtype.name}"

    def qtype_of(self, shape: tuple[int, ...]) -> Q:
        return Q.F32 if len(shape) == 1 else self.qtype

    def encode(self, tensor: torch.Tensor) -> np.ndarray:
        from hqq2gguf.cuda import encode_cuda

        return tensor.float().numpy() if tensor.dim() == 1 else encode_cuda(tensor.float(), self.qtype).packed


def stream(model_dir: Path, out: Path, encoder: PlainF16 | CudaQuant) -> float:
    """Seconds to read every tensor of the shards, encode it and write a GGUF (tensor infos first, from the
    safetensors headers; then the data, one tensor in memory at a time)."""
    from safetensors import safe_open

    start = time.perf_counter()
    plan: list[tuple[Path, str, tuple[int, ...]]] = []
    for shard in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            plan += [(shard, name, tuple(f.get_slice(name).get_shape())) for name in f.keys()]
    writer = gguf.GGUFWriter(path=None, arch="llama")
    for _, name, shape in plan:
        qtype = encoder.qtype_of(shape)
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        writer.add_tensor_info(name, shape, np.dtype(np.float32), int(np.prod(shape)) // block * size, raw_dtype=qtype)
    writer.write_header_to_file(path=out)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for shard in dict.fromkeys(s for s, _, _ in plan):
        with safe_open(str(shard), framework="pt") as f:
            for name in (n for s, n, _ in plan if s == shard):
                writer.write_tensor_data(encoder.encode(f.get_tensor(name)))
    writer.close()
    return time.perf_counter() - start


def bench_model(layers: int, qtype: Q, workdir: Path, keep: bool) -> dict[str, object]:
    model_dir = workdir / f"llama-8b-shaped-{layers}L"
    build_s = build_model(model_dir, layers)
    n = sum(int(np.prod(shape)) for _, shape in llama_tensors(layers))
    result: dict[str, object] = {"layers": layers, "parameters": n, "build_s": build_s, "runs": []}
    for encoder in (PlainF16(), CudaQuant(qtype)):
        out = workdir / f"out-{type(encoder).__name__}.gguf"
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        seconds = stream(model_dir, out, encoder)
        result["runs"].append({"pipeline": encoder.label, "seconds": seconds, "weights_per_s": n / seconds,
                               "output_bytes": out.stat().st_size, "peak_gpu_bytes": torch.cuda.max_memory_allocated()})
        logger.info("%s: %.1f s", encoder.label, seconds)
        if not keep:
            out.unlink()
    if not keep:
        shutil.rmtree(model_dir)
    return result


def environment() -> dict[str, object]:
    from hqq2gguf.cuda import loader
    from hqq2gguf.cuda.sum_order import torch_sum_lanes

    props = torch.cuda.get_device_properties(0)
    cupy = loader.import_cupy()
    driver = None
    if shutil.which("nvidia-smi"):
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "-i", "0"],
                              capture_output=True, text=True)
        driver = done.stdout.strip() or None
    v = int(cupy.cuda.runtime.driverGetVersion())
    return {"device": props.name, "compute_capability": f"{props.major}.{props.minor}",
            "gpu_memory_bytes": props.total_memory, "driver": driver,
            "driver_cuda_version": f"{v // 1000}.{v % 1000 // 10}",
            "cupy": cupy.__version__, "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "torch_sum_lanes": torch_sum_lanes(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def markdown(doc: dict) -> str:
    env = doc["environment"]
    gib = 1 << 30
    lines = ["# Fused CUDA solver throughput", "",
             f"{env['device']} (sm {env['compute_capability']}, {env['gpu_memory_bytes'] / gib:.0f} GiB), driver "
             f"{env['driver']} (CUDA {env['driver_cuda_version']}), CuPy {env['cupy']}, torch {env['torch']}, "
             f"{env['cpu_count']} CPUs, {env['date']}. Weights/s; the torch solver runs on the CPU.", "",
             "| type | kernel w/s | solve_cuda w/s | prepare s | kernel s | re-check s | torch w/s | speed-up "
             "| identical blocks | objective vs llama.cpp | peak GPU GiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["types"]:
        lines.append(f"| {r['type']} | {r['kernel_weights_per_s']:.3g} | {r['solve_cuda_weights_per_s']:.3g} | "
                     f"{r['prepare_s']:.2f} | {r['kernel_s']:.2f} | {r['finish_s']:.2f} | "
                     f"{r['torch_weights_per_s']:.3g} | "
                     f"{r['solve_cuda_weights_per_s'] / r['torch_weights_per_s']:.0f}x | "
                     f"{r['identical_blocks']:.4f} | {r['objective_vs_llama']:.4f} | {r['peak_gpu_bytes'] / gib:.2f} |")
    model = doc.get("model")
    if model:
        lines += ["", f"## End to end: Llama-3-8B-shaped, {model['layers']} layers, "
                      f"{model['parameters'] / 1e9:.2f} B parameters", "",
                  "| pipeline | seconds | weights/s | output GiB | peak GPU GiB |", "|---|---|---|---|---|"]
        for r in model["runs"]:
            lines.append(f"| {r['pipeline']} | {r['seconds']:.1f} | {r['weights_per_s']:.3g} | "
                         f"{r['output_bytes'] / gib:.2f} | {r['peak_gpu_bytes'] / gib:.2f} |")
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--types", default=None, help="Comma-separated types (default: every type with a kernel).")
@click.option("--rows", type=click.IntRange(1), default=4096, show_default=True,
              help="Rows of the (rows x 4096) matrix timed per type.")
@click.option("--torch-rows", type=click.IntRange(1), default=64, show_default=True,
              help="Rows the torch CPU solver is timed on (and compared on).")
@click.option("--model-type", default="Q4_K", show_default=True, help="Type of every matrix end to end.")
@click.option("--layers", type=click.IntRange(0), default=32, show_default=True,
              help="Layers of the synthetic 8B-shaped model (0: skip the end-to-end run).")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("/tmp/hqq2gguf-cuda-bench"), show_default=True)
@click.option("--results", type=click.Path(file_okay=False, path_type=Path), default=RESULTS_DIR, show_default=True)
@click.option("--keep", is_flag=True, help="Keep the synthetic checkpoint and the GGUFs.")
def main(types: str | None, rows: int, torch_rows: int, model_type: str, layers: int, workdir: Path,
         results: Path, keep: bool) -> None:
    """Weights/s of the fused CUDA solver vs the torch solver; end-to-end time on a synthetic 8B Llama."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from hqq2gguf.cuda import CUDA_TYPES, cuda_unusable_reason

    reason = cuda_unusable_reason()
    if reason is not None:
        raise click.ClickException(f"this benchmark needs a usable CUDA device and CuPy: {reason}")
    try:
        chosen = [Q[t.strip().upper()] for t in types.split(",")] if types else list(CUDA_TYPES)
        qtype = Q[model_type.upper()]
    except KeyError as exc:
        raise click.BadParameter(f"unknown type {exc}") from None
    unsupported = [t.name for t in (*chosen, qtype) if t not in CUDA_TYPES]
    if unsupported:
        raise click.BadParameter(f"no CUDA kernel for {', '.join(unsupported)}")
    workdir.mkdir(parents=True, exist_ok=True)
    doc: dict[str, object] = {"environment": environment(), "rows": rows, "torch_rows": min(torch_rows, rows),
                              "types": [bench_type(t, rows, min(torch_rows, rows)) for t in chosen]}
    if layers:
        doc["model"] = bench_model(layers, qtype, workdir, keep)
    results.mkdir(parents=True, exist_ok=True)
    (results / "cuda_throughput.json").write_text(json.dumps(doc, indent=2) + "\n")
    (results / "cuda_throughput.md").write_text(markdown(doc))
    click.echo(f"wrote {results / 'cuda_throughput.md'}")


if __name__ == "__main__":
    main()
