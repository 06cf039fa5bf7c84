"""The conversion stage of scripts/gpu_check.sh: ``--device cuda`` against the torch path, on inputs made here.

    PYTHONPATH=.:tests python scripts/gpu_check_convert.py --results benchmarks/results/gpu_check
    PYTHONPATH=.:tests python scripts/gpu_check_convert.py --emulate ...   # no GPU: the kernels emulated on the CPU

1. tensors: per CUDA type, a (--rows x 4096) matrix of realistic weights through ``hqq2gguf.cuda.encode_cuda``
   and ``hqq2gguf.optimize.encode``: share of identical blocks, objective ratio, seconds of each.
2. models: the tests' K-quant-shaped tiny model (tests/tiny_models.py, built on the spot, no download) converted
   per recipe with ``device=cuda`` and ``device=cpu``: identical files, or the documented bound (>= 99% of the
   blocks identical, every block finite).

Writes gpu_convert.json and gpu_convert.md under --results; exit status 1 when a check fails.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import click
import gguf
import numpy as np
import torch

Q = gguf.GGMLQuantizationType
RECIPES = ("Q4_K_M", "Q3_K_M", "Q2_K", "IQ4_NL", "Q4_0", "Q5_1")
BOUND = 0.99  # share of identical blocks cuda/README.md documents where bytes may differ
logger = logging.getLogger("gpu_check_convert")


def use_emulation() -> None:
    """No GPU: --device cuda resolves to CUDA and the kernels run compiled for the CPU (as tests/test_cuda_convert)."""
    import hqq2gguf.cuda
    from hqq2gguf.cuda.emulate import HostLauncher
    from hqq2gguf.options import Device

    launcher = HostLauncher()
    importlib.import_module("hqq2gguf.cuda.solve_cuda").default_launcher = lambda x: launcher
    hqq2gguf.cuda.resolve_device = lambda requested, device_index=0: Device.CUDA


def check_tensors(rows: int) -> list[dict[str, object]]:
    from cuda_throughput import realistic
    from hqq2gguf.cuda import CUDA_TYPES, encode_cuda
    from hqq2gguf.optimize import encode

    gen = torch.Generator().manual_seed(11)
    x = realistic((rows, 4096), gen).float()
    # column importance shaped like an imatrix's (a few columns far above the rest): the weighted kernels
    weights = torch.exp(2 * torch.randn(4096, generator=gen)).to(torch.float32)
    out = []
    for qtype, importance in [(q, None) for q in CUDA_TYPES] + [(q, weights) for q in CUDA_TYPES]:
        t0 = time.perf_counter()
        ours = encode_cuda(x, qtype, importance=importance)
        t1 = time.perf_counter()
        ref = encode(x, qtype, importance=importance)
        t2 = time.perf_counter()
        size = gguf.GGML_QUANT_SIZES[qtype][1]
        same = float((ours.packed.reshape(-1, size) == ref.packed.reshape(-1, size)).all(axis=1).mean())
        finite = bool(np.isfinite(gguf.quants.dequantize(ours.packed, qtype)).all())
        ratio = ours.objective / max(ref.objective, 1e-300)
        ok = same == 1.0 or (same >= BOUND and finite and ratio <= 1.01 and ours.objective <= ours.baseline_objective)
        out.append({"type": qtype.name, "importance": importance is not None, "identical_blocks": same,
                    "objective_vs_torch": ratio, "finite": finite, "cuda_s": t1 - t0, "torch_s": t2 - t1, "ok": ok})
        logger.info("%-7s %-10s identical %.5f objective x%.5f cuda %.2f s torch %.2f s %s", qtype.name,
                    "importance" if importance is not None else "plain", same, ratio, t1 - t0, t2 - t1,
                    "ok" if ok else "FAILED")
    return out


def _blocks(path: Path) -> list[tuple[Q, np.ndarray]]:
    out = []
    for t in gguf.GGUFReader(path).tensors:
        qtype = Q(t.tensor_type)
        out.append((qtype, np.asarray(t.data).view(np.uint8).reshape(-1, gguf.GGML_QUANT_SIZES[qtype][1])))
    return out


def check_models(workdir: Path) -> list[dict[str, object]]:
    import tiny_models
    from test_quantize import SPEC  # the K-quant-shaped tiny model the tests convert
    from hqq2gguf.convert import convert
    from hqq2gguf.options import Calibration, ConvertOptions, Device, ImportanceSource
    from hqq2gguf.recipes import Recipe

    # self-calibration runs llama.cpp (llama-cpp-python), which a bare GPU machine lacks; the data-free
    # --importance proxy still sends column importance through the weighted kernels
    try:
        import llama_cpp  # noqa: F401
        calibrated = True
    except ImportError:
        calibrated = False
    extra = {} if calibrated else {"calibration": Calibration.NONE, "importance": ImportanceSource.DERIVED}

    model = tiny_models.build_tiny_model(SPEC, workdir / SPEC.name)
    out = []
    for recipe in RECIPES:
        paths, seconds = {}, {}
        for device in (Device.CPU, Device.CUDA):
            t0 = time.perf_counter()
            paths[device] = convert(model, ConvertOptions(recipe=Recipe(recipe), device=device, force=True,
                                                          output=workdir / f"{recipe}-{device.value}.gguf",
                                                          **extra)).path
            seconds[device.value] = time.perf_counter() - t0
        identical = paths[Device.CPU].read_bytes() == paths[Device.CUDA].read_bytes()
        pairs = list(zip(_blocks(paths[Device.CUDA]), _blocks(paths[Device.CPU])))
        n = sum(len(a) for (_, a), _ in pairs)
        same = sum(int((a == b).all(axis=1).sum()) for (_, a), (_, b) in pairs if a.shape == b.shape)
        finite = all(np.isfinite(gguf.quants.dequantize(a, q)).all() for (q, a), _ in pairs
                     if q not in (Q.F32, Q.F16))
        ok = identical or (same / n >= BOUND and finite)
        out.append({"recipe": recipe, "importance": "self-calibration" if calibrated else "--importance proxy",
                    "identical_file": identical, "identical_blocks": same / n, "finite": finite,
                    "seconds": seconds, "ok": ok})
        logger.info("%-7s identical file %s, blocks %.5f %s", recipe, identical, same / n, "ok" if ok else "FAILED")
    return out


def markdown(doc: dict) -> str:
    lines = ["# --device cuda against the torch path", "", f"{doc['mode']}, {doc['date']}.", "",
             f"## Tensors ({doc['rows']} x 4096 realistic weights)", "",
             "| type | importance | identical blocks | objective vs torch | cuda s | torch s | ok |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['type']} | {'yes' if r['importance'] else 'no'} | {r['identical_blocks']:.5f} | "
              f"{r['objective_vs_torch']:.5f} | {r['cuda_s']:.2f} | {r['torch_s']:.2f} | {'yes' if r['ok'] else 'NO'} |"
              for r in doc["tensors"]]
    lines += ["", "## Tiny model conversions (tests/tiny_models.py, built here)", "",
              "| recipe | importance | identical file | identical blocks | cpu s | cuda s | ok |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['recipe']} | {r['importance']} | {r['identical_file']} | {r['identical_blocks']:.5f} | "
              f"{r['seconds']['cpu']:.1f} | {r['seconds']['cuda']:.1f} | {'yes' if r['ok'] else 'NO'} |"
              for r in doc["models"]]
    if doc.get("errors"):
        lines += ["", "## Errors", ""] + [f"- {e}" for e in doc["errors"]]
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--results", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--rows", type=click.IntRange(1), default=1024, show_default=True)
@click.option("--emulate", is_flag=True, help="No GPU: run the kernels compiled for the CPU.")
def main(results: Path, rows: int, emulate: bool) -> None:
    """--device cuda against the torch path: tensors, then whole tiny models."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if emulate:
        use_emulation()
    doc: dict[str, object] = {"mode": "emulated kernels (CPU)" if emulate else "CUDA", "rows": rows,
                              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "tensors": [], "models": [], "errors": []}
    try:
        doc["tensors"] = check_tensors(rows)
    except Exception as exc:  # report and go on: the model stage is independent
        doc["errors"].append(f"tensors: {type(exc).__name__}: {exc}")
    with tempfile.TemporaryDirectory(prefix="hqq2gguf-gpu-check-") as tmp:
        try:
            doc["models"] = check_models(Path(tmp))
        except Exception as exc:
            doc["errors"].append(f"models: {type(exc).__name__}: {exc}")
    results.mkdir(parents=True, exist_ok=True)
    (results / "gpu_convert.json").write_text(json.dumps(doc, indent=2) + "\n")
    (results / "gpu_convert.md").write_text(markdown(doc))
    failed = doc["errors"] or not all(r["ok"] for r in doc["tensors"] + doc["models"])
    click.echo(f"wrote {results / 'gpu_convert.md'}: {'FAILED' if failed else 'ok'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
