"""Bad input never produces a traceback or a partial file: one line naming the file/tensor and the reason.

Each test builds its bad input on the fly from a tiny model and checks, through the CLI, exit code 1, one
``error:`` line, an empty output directory and an untouched input (see bad_input_helpers).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from bad_input_helpers import (
    convert,
    convert_fails,
    rewrite_safetensors_header,
    tree_digest,
)
from safetensors.torch import load_file, save_file


@pytest.fixture
def model(tiny_model_dir, tmp_path: Path) -> Path:
    """A private, writable copy of the tiny Llama model."""
    dst = tmp_path / "model"
    shutil.copytree(tiny_model_dir("llama2"), dst)
    return dst


def test_missing_config(model: Path, tmp_path: Path) -> None:
    (model / "config.json").unlink()
    convert_fails(model, tmp_path / "out", "config.json is missing")


def test_invalid_config_json(model: Path, tmp_path: Path) -> None:
    (model / "config.json").write_text("{ not json", encoding="utf-8")
    convert_fails(model, tmp_path / "out", "config.json", "invalid JSON")


def test_config_without_architectures(model: Path, tmp_path: Path) -> None:
    config = json.loads((model / "config.json").read_text())
    del config["architectures"]
    (model / "config.json").write_text(json.dumps(config))
    convert_fails(model, tmp_path / "out", "architectures")


def test_unsupported_architecture_names_gguf_route(model: Path, tmp_path: Path) -> None:
    config = json.loads((model / "config.json").read_text())
    config["architectures"] = ["FalconForCausalLM"]
    (model / "config.json").write_text(json.dumps(config))
    convert_fails(model, tmp_path / "out", "FalconForCausalLM", "GGUF")


def test_truncated_safetensors(model: Path, tmp_path: Path) -> None:
    st = model / "model.safetensors"
    with open(st, "r+b") as f:
        f.truncate(st.stat().st_size - 1000)
    convert_fails(model, tmp_path / "out", "model.safetensors", "truncated")


def test_header_length_beyond_file(model: Path, tmp_path: Path) -> None:
    st = model / "model.safetensors"
    data = bytearray(st.read_bytes())
    data[:8] = struct.pack("<Q", len(data) + 10)
    st.write_bytes(bytes(data))
    convert_fails(model, tmp_path / "out", "model.safetensors", "header length")


def test_overlapping_offsets(model: Path, tmp_path: Path) -> None:
    def edit(header: dict) -> None:
        names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
        a, b = header[names[0]], header[names[1]]
        size_b = b["data_offsets"][1] - b["data_offsets"][0]
        b["data_offsets"] = [a["data_offsets"][0], a["data_offsets"][0] + size_b]

    rewrite_safetensors_header(model / "model.safetensors", edit)
    convert_fails(model, tmp_path / "out", "overlaps")


def test_absurd_header_sizes(model: Path, tmp_path: Path) -> None:
    """A header claiming a huge tensor is refused before any allocation."""
    def edit(header: dict) -> None:
        name = next(k for k in header if k != "__metadata__")
        header[name]["shape"] = [2**40, 2**20]
        header[name]["data_offsets"] = [0, 2**62]

    rewrite_safetensors_header(model / "model.safetensors", edit)
    convert_fails(model, tmp_path / "out", "model.safetensors")


def test_unsupported_dtype(model: Path, tmp_path: Path) -> None:
    def edit(header: dict) -> None:
        name = next(k for k in header if k != "__metadata__" and header[k]["dtype"] == "F32")
        header[name]["dtype"] = "F8_E4M3"

    rewrite_safetensors_header(model / "model.safetensors", edit)
    convert_fails(model, tmp_path / "out", "F8_E4M3")


def _first_entry(header: dict) -> dict:
    return header[min(k for k in header if k != "__metadata__")]


def test_offsets_beyond_data_section(model: Path, tmp_path: Path) -> None:
    """Consistent sizes, but the span starts past the end of the data: refused, naming the tensor."""
    def edit(header: dict) -> None:
        entry = _first_entry(header)
        end = max(e["data_offsets"][1] for k, e in header.items() if k != "__metadata__")
        size = entry["data_offsets"][1] - entry["data_offsets"][0]
        entry["data_offsets"] = [end + 64, end + 64 + size]

    rewrite_safetensors_header(model / "model.safetensors", edit)
    convert_fails(model, tmp_path / "out", "model.safetensors", "tensor 'lm_head.weight'", "beyond the end")


def _set(field: str, value: object):
    def edit(header: dict) -> None:
        _first_entry(header)[field] = value
    return edit


def _drop(field: str):
    def edit(header: dict) -> None:
        del _first_entry(header)[field]
    return edit


@pytest.mark.parametrize(("edit", "needle"), [
    (lambda header: [1, 2, 3], "header is a JSON list, not an object"),
    (lambda header: "text", "header is a JSON str, not an object"),
    (lambda header: {**header, "lm_head.weight": [1, 2]}, "lacks dtype, shape or data_offsets"),
    (_drop("shape"), "lacks dtype, shape or data_offsets"),
    (_set("dtype", 5), "invalid dtype 5"),
    (_set("dtype", ["F32"]), "invalid dtype ['F32']"),
    (_set("dtype", "Q4_K"), "unknown dtype 'Q4_K'"),
    (_set("shape", "600x64"), "invalid shape '600x64'"),
    (_set("shape", [600, -64]), "invalid shape [600, -64]"),
    (_set("shape", [600, 64.0]), "invalid shape [600, 64.0]"),
    (_set("shape", [600, True]), "invalid shape [600, True]"),
    (_set("data_offsets", "0-153600"), "invalid data_offsets '0-153600'"),
    (_set("data_offsets", [0]), "invalid data_offsets [0]"),
    (_set("data_offsets", [10, 5]), "invalid data_offsets [10, 5]"),
    (_set("data_offsets", [0, 10]), "data_offsets span 10 bytes but shape [600, 64] of F32 needs 153600"),
], ids=["list", "string", "entry-not-object", "no-shape", "dtype-int", "dtype-list", "dtype-unknown",
        "shape-string", "shape-negative", "shape-float", "shape-bool", "offsets-string", "offsets-one",
        "offsets-reversed", "offsets-size"])
def test_header_with_wrong_types(model: Path, tmp_path: Path, edit, needle: str) -> None:
    rewrite_safetensors_header(model / "model.safetensors", edit)
    convert_fails(model, tmp_path / "out", "model.safetensors", needle)


@pytest.mark.parametrize(("raw", "needle"), [
    (b"{ not json", "header is not valid JSON"),
    (b"\xff\xfe{}", "header is not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "header is not valid JSON"),
], ids=["syntax", "not-utf8", "nested-100k-deep"])
def test_header_not_json(model: Path, tmp_path: Path, raw: bytes, needle: str) -> None:
    st = model / "model.safetensors"
    data = st.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    st.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])
    convert_fails(model, tmp_path / "out", "model.safetensors", needle)


def test_header_lists_a_tensor_twice(model: Path, tmp_path: Path) -> None:
    """json.loads would keep the second entry silently."""
    st = model / "model.safetensors"
    data = st.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    entry = json.dumps(header["lm_head.weight"])
    raw = b"{" + f'"lm_head.weight": {entry}, '.encode() + json.dumps(header).encode()[1:]
    st.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])
    convert_fails(model, tmp_path / "out", "model.safetensors", "header lists 'lm_head.weight' twice")


def test_missing_shard(tiny_model_dir, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir("llama2"), model)
    tensors = load_file(model / "model.safetensors")
    (model / "model.safetensors").unlink()
    names = sorted(tensors)
    half = len(names) // 2
    parts = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for part, keys in parts.items():
        save_file({k: tensors[k] for k in keys}, model / part)
    index = {"metadata": {}, "weight_map": {k: p for p, keys in parts.items() for k in keys}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    (model / "model-00002-of-00002.safetensors").unlink()
    convert_fails(model, tmp_path / "out", "missing shard", "model-00002-of-00002.safetensors")


def test_nan_weight_names_tensor(model: Path, tmp_path: Path) -> None:
    tensors = load_file(model / "model.safetensors")
    name = "model.layers.1.mlp.down_proj.weight"
    tensors[name][3, 5] = float("nan")
    tensors[name][0, 0] = float("inf")
    save_file(tensors, model / "model.safetensors")
    convert_fails(model, tmp_path / "out", name, "1 NaN and 1 Inf")


def test_pickle_refused_by_default(model: Path, tmp_path: Path) -> None:
    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    convert_fails(model, tmp_path / "out", "pytorch_model.bin", "pickle", "--allow-pickle")


def test_pickle_allowed_with_flag_matches_safetensors(model: Path, tmp_path: Path) -> None:
    ref_out = tmp_path / "ref"
    assert convert(model, ref_out)[0] == 0
    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    code, output = convert(model, tmp_path / "out", "--allow-pickle")
    assert code == 0, output
    assert (tmp_path / "out" / "m.gguf").read_bytes() == (ref_out / "m.gguf").read_bytes()


def test_existing_output_refused_without_force(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "m.gguf").write_bytes(b"precious")
    code, output = convert(model, out)
    assert code == 1 and "exists" in output and "--force" in output
    assert (out / "m.gguf").read_bytes() == b"precious"
    code, output = convert(model, out, "--force")
    assert code == 0, output
    assert (out / "m.gguf").read_bytes()[:4] == b"GGUF"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_mid_write_leaves_nothing(model: Path, tmp_path: Path, sig: signal.Signals) -> None:
    """Ctrl-C or kill while tensors are being written: exit 130, no output, no temporary file."""
    out = tmp_path / "out"
    out.mkdir()
    before = tree_digest(model)
    env = dict(os.environ, HQQ2GGUF_TEST_SLOW_WRITE_S="0.5")
    # a shell's background job (`pytest ... &`) runs with SIGINT ignored, which the child would inherit and keep:
    # the child starts with the default disposition, as a command typed at a terminal does
    proc = subprocess.Popen([sys.executable, "-m", "hqq2gguf", "convert", str(model), "-o", str(out / "m.gguf")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not any(p.name.endswith(".partial") for p in out.iterdir()):
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.monotonic() < deadline, "conversion never started writing"
        time.sleep(0.05)
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "Traceback" not in output
    assert list(out.iterdir()) == []
    assert tree_digest(model) == before, "the input was modified"


def test_disk_full_mid_write_leaves_nothing(model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC after the first tensor: a one-line error and neither the output nor the temporary file."""
    import errno

    import gguf

    real_write = gguf.GGUFWriter.write_tensor_data
    calls = {"n": 0}

    def write_then_fail(self, tensor, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, tensor, *args, **kwargs)

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", write_then_fail)
    convert_fails(model, tmp_path / "out", "m.gguf", "no space left on device")
    assert calls["n"] == 2


def test_out_of_memory_names_the_tensor(model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MemoryError while encoding (a memory cap, a full machine): one line naming the tensor and what to do."""
    import gguf

    def no_memory(data, qtype):
        raise MemoryError(f"Unable to allocate {data.nbytes} bytes")

    monkeypatch.setattr(gguf.quants, "quantize", no_memory)
    convert_fails(model, tmp_path / "out", "tensor 'output.weight'", "out of memory encoding [600, 64] (0.1 MiB) as F16",
                  "raise the limit")
