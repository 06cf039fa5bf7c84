"""Hostile input: nothing in a model is executed at conversion time, and no header can make hqq2gguf
allocate what the header claims before the claim is checked against the file."""

from __future__ import annotations

import json
import shutil
import struct
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path

import gguf
import pytest
from bad_input_helpers import convert, rewrite_safetensors_header
from gguf_bytes import VALID, V, kv, tensor_info

from hqq2gguf.errors import InputError
from hqq2gguf.read.gguf_in import open_gguf
from hqq2gguf.read.safetensors import read_safetensors_header

# Would raise, then loop for ever, if anything rendered it.
HOSTILE_TEMPLATE = ("{{ raise_exception('the chat template was executed') }}"
                    "{% for i in range(10**12) %}{{ i }}{% endfor %}{{ ''.__class__.__mro__ }}")


@pytest.mark.parametrize("name", ["llama2", "qwen2"], ids=["spm", "bpe-autotokenizer"])
def test_chat_template_is_stored_not_executed(tiny_model_dir, tmp_path: Path, name: str) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir(name), model)
    config_file = model / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    config["chat_template"] = HOSTILE_TEMPLATE
    config_file.write_text(json.dumps(config))
    start = time.perf_counter()
    code, output = convert(model, tmp_path / "out")
    assert code == 0, output
    assert time.perf_counter() - start < 60
    reader = gguf.GGUFReader(tmp_path / "out" / "m.gguf")
    assert reader.get_field(gguf.Keys.Tokenizer.CHAT_TEMPLATE).contents() == HOSTILE_TEMPLATE


# --- claimed sizes are checked before anything is allocated ---------------------------------------------

MAX_TRACED_BYTES = 4 << 20  # Python and numpy allocations while reading one hostile header


def _peak_traced_bytes(read) -> int:
    tracemalloc.start()
    try:
        with pytest.raises(InputError):
            read()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_safetensors_huge_claims_allocate_nothing(tiny_model_dir, tmp_path: Path) -> None:
    """A header claiming a 4 TiB tensor (sizes consistent with each other) is refused for the file size."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir("llama2"), model)
    st = model / "model.safetensors"

    def edit(header: dict) -> None:
        header["lm_head.weight"] = {"dtype": "F32", "shape": [1 << 20, 1 << 20], "data_offsets": [0, 1 << 42]}

    rewrite_safetensors_header(st, edit)
    assert _peak_traced_bytes(lambda: read_safetensors_header(st)) < MAX_TRACED_BYTES


@pytest.mark.parametrize("hostile", [
    replace(VALID, n_tensors=1 << 62),
    replace(VALID, n_kv=1 << 62),
    replace(VALID, kvs=(VALID.kvs[0], kv("tokenizer.ggml.tokens", V.ARRAY, struct.pack("<IQ", V.STRING, 1 << 50)))),
    replace(VALID, kvs=(VALID.kvs[0], kv("general.name", V.STRING, struct.pack("<Q", 1 << 62)))),
    replace(VALID, infos=(VALID.infos[0], tensor_info("b.weight", (1 << 24, 1 << 24), gguf.GGMLQuantizationType.F32,
                                                      128))),
], ids=["tensor-count", "kv-count", "token-array", "string-length", "tensor-size"])
def test_gguf_huge_claims_allocate_nothing(tmp_path: Path, hostile) -> None:
    path = hostile.write(tmp_path / "hostile.gguf")
    assert _peak_traced_bytes(lambda: open_gguf(path, allow_requantize=False)) < MAX_TRACED_BYTES
