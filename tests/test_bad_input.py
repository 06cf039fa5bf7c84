"""Bad input never produces a traceback or a partial file: one line naming the file/tensor and the reason."""

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
from click.testing import CliRunner
from safetensors.torch import save_file

from hqq2gguf.cli import main


@pytest.fixture
def model(tiny_model_dir, tmp_path: Path) -> Path:
    """A private, writable copy of the tiny Llama model."""
    dst = tmp_path / "model"
    shutil.copytree(tiny_model_dir("llama2"), dst)
    return dst


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def assert_clean_failure(code: int, output: str, out_dir: Path, *needles: str) -> None:
    assert code == 1, output
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    leftovers = [p.name for p in out_dir.iterdir()] if out_dir.exists() else []
    assert leftovers == [], f"output directory not empty: {leftovers}"


def convert(model: Path, out: Path, *extra: str) -> tuple[int, str]:
    out.mkdir(exist_ok=True)
    return run_cli("convert", str(model), "-o", str(out / "m.gguf"), "--outtype", "f16", *extra)


def test_missing_config(model: Path, tmp_path: Path) -> None:
    (model / "config.json").unlink()
    code, output = convert(model, tmp_path / "out")
    assert_clean_failure(code, output, tmp_path / "out", "config.json is missing")


def test_invalid_config_json(model: Path, tmp_path: Path) -> None:
    (model / "config.json").write_text("{ not json", encoding="utf-8")
    code, output = convert(model, tmp_path / "out")
    assert_clean_failure(code, output, tmp_path / "out", "config.json", "invalid JSON")


def test_config_without_architectures(model: Path, tmp_path: Path) -> None:
    config = json.loads((model / "config.json").read_text())
    del config["architectures"]
    (model / "config.json").write_text(json.dumps(config))
    code, output = convert(model, tmp_path / "out")
    assert_clean_failure(code, output, tmp_path / "out", "architectures")


def test_unsupported_architecture_names_gguf_route(model: Path, tmp_path: Path) -> None:
    config = json.loads((model / "config.json").read_text())
    config["architectures"] = ["FalconForCausalLM"]
    (model / "config.json").write_text(json.dumps(config))
    code, output = convert(model, tmp_path / "out")
    assert_clean_failure(code, output, tmp_path / "out", "FalconForCausalLM", "GGUF")


def test_truncated_safetensors(model: Path, tmp_path: Path) -> None:
    st = model / "model.safetensors"
    with open(st, "r+b") as f:
        f.truncate(st.stat().st_size - 1000)
    code, output = convert(model, tmp_path / "out")
    assert_clean_failure(code, output, tmp_path / "out", "model.safetensors", "truncated")


def test_header_length_beyond_file(model: Path, tmp_path: Path) -> None:
    st = model / "model.safetensors"
    data = bytearray(st.read_bytes())
    data[:8] = struct.pack("<Q", len(data) + 10)
    st.write_bytes(bytes(data))
    code, output = convert(model, tmp_path / "out")
    assert_clean_failure(code, output, tmp_path / "out", "model.safetensors", "header length")


def _rewrite_header(st: Path, edit) -> None:
    data = st.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    edit(header)
    raw = json.dumps(header).encode()
    raw += b" " * (n - len(raw)) if len(raw) <= n else b""
    st.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


def test_overlapping_offsets(model: Path, tmp_path: Path) -> None:
    def edit(header: dict) -> None:
        names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
        a, b = header[names[0]], header[names[1]]
        size_b = b["data_offsets"][1] - b["data_offsets"][0]
        b["data_offsets"] = [a["data_offsets"][0], a["data_offsets"][0] + size_b]

    _rewrite_header(model / "model.safetensors", edit)
    code, output = convert(model, tmp_path / "out")
    assert_clean_failure(code, output, tmp_path / "out", "overlaps")


def test_absurd_header_sizes(model: Path, tmp_path: Path) -> None:
    """A header claiming a huge tensor is refused before any allocation."""
    def edit(header: dict) -> None:
        name = next(k for k in header if k != "__metadata__")
        header[name]["shape"] = [2**40, 2**20]
        header[name]["data_offsets"] = [0, 2**62]

    _rewrite_header(model / "model.safetensors", edit)
    code, output = convert(model, tmp_path / "out")
    assert_clean_failure(code, output, tmp_path / "out", "model.safetensors")


def test_unsupported_dtype(model: Path, tmp_path: Path) -> None:
    def edit(header: dict) -> None:
        name = next(k for k in header if k != "__metadata__" and header[k]["dtype"] == "F32")
        header[name]["dtype"] = "F8_E4M3"

    _rewrite_header(model / "model.safetensors", edit)
    code, output = convert(model, tmp_path / "out")
    assert_clean_failure(code, output, tmp_path / "out", "F8_E4M3")


def test_missing_shard(tiny_model_dir, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir("llama2"), model)
    tensors = {}
    from safetensors.torch import load_file
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
    code, output = convert(model, tmp_path / "out")
    assert_clean_failure(code, output, tmp_path / "out", "missing shard", "model-00002-of-00002.safetensors")


def test_nan_weight_names_tensor(model: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file
    tensors = load_file(model / "model.safetensors")
    name = "model.layers.1.mlp.down_proj.weight"
    tensors[name][3, 5] = float("nan")
    tensors[name][0, 0] = float("inf")
    save_file(tensors, model / "model.safetensors")
    code, output = convert(model, tmp_path / "out")
    assert_clean_failure(code, output, tmp_path / "out", name, "1 NaN and 1 Inf")


def test_pickle_refused_by_default(model: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file
    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    code, output = convert(model, tmp_path / "out")
    assert_clean_failure(code, output, tmp_path / "out", "pytorch_model.bin", "pickle", "--allow-pickle")


def test_pickle_allowed_with_flag_matches_safetensors(model: Path, tmp_path: Path) -> None:
    ref_out = tmp_path / "ref"
    assert convert(model, ref_out)[0] == 0
    from safetensors.torch import load_file
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
    env = dict(os.environ, HQQ2GGUF_TEST_SLOW_WRITE_S="0.5")
    proc = subprocess.Popen([sys.executable, "-m", "hqq2gguf", "convert", str(model), "-o", str(out / "m.gguf")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
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
    code, output = convert(model, tmp_path / "out")
    assert_clean_failure(code, output, tmp_path / "out", "m.gguf", "no space left on device")
    assert calls["n"] == 2
