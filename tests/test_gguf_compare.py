"""The comparison helper must see every kind of difference, or the equivalence tests prove nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import gguf
import numpy as np
import pytest

from hqq2gguf.gguf_diff import compare_gguf, read_gguf


def _write(path: Path, edit: Callable[[dict[str, Any]], None] = lambda spec: None) -> Path:
    """A small GGUF file: a few KV pairs and an F32, an F16 and a Q8_0 tensor; ``edit`` changes the spec."""
    rng = np.random.default_rng(0)
    spec: dict[str, Any] = {
        "kv": [("general.name", "string", "tiny"), ("llama.block_count", "uint32", 2),
               ("llama.rope.freq_base", "float32", 10000.0), ("tokenizer.ggml.tokens", "array", ["a", "b", "c"]),
               ("hqq2gguf.version", "string", "0.1.0")],
        "tensors": [("token_embd.weight", rng.standard_normal((4, 32)).astype(np.float32), None),
                    ("output_norm.weight", rng.standard_normal(32).astype(np.float16), None),
                    ("blk.0.attn_q.weight", rng.standard_normal((2, 64)).astype(np.float32),
                     gguf.GGMLQuantizationType.Q8_0)],
    }
    edit(spec)
    writer = gguf.GGUFWriter(path, "llama")
    for key, kind, value in spec["kv"]:
        getattr(writer, f"add_{kind}")(key, value)
    for name, data, qtype in spec["tensors"]:
        if qtype is None:
            writer.add_tensor(name, data)
        else:
            writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _set_kv(key: str, kind: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(spec: dict[str, Any]) -> None:
        spec["kv"] = [(k, kind, value) if k == key else (k, t, v) for k, t, v in spec["kv"]]
    return edit


def _flip_first(name: str) -> Callable[[dict[str, Any]], None]:
    def edit(spec: dict[str, Any]) -> None:
        for _, data, _ in (t for t in spec["tensors"] if t[0] == name):
            data.flat[0] = -data.flat[0] + 1
    return edit


def _drop_tensor(spec: dict[str, Any]) -> None:
    spec["tensors"] = spec["tensors"][:-1]


def _swap_tensors(spec: dict[str, Any]) -> None:
    spec["tensors"] = spec["tensors"][::-1]


def _swap_kv(spec: dict[str, Any]) -> None:
    spec["kv"] = [spec["kv"][1], spec["kv"][0], *spec["kv"][2:]]


def _reshape(spec: dict[str, Any]) -> None:
    name, data, qtype = spec["tensors"][0]
    spec["tensors"][0] = (name, data.reshape(8, 16), qtype)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (_set_kv("general.name", "string", "other"), "'general.name': 'other' (STRING) != expected 'tiny'"),
        (_set_kv("llama.block_count", "uint64", 2), "type 2 (UINT64) != expected 2 (UINT32)"),
        (_set_kv("llama.rope.freq_base", "float32", 10000.5), "'llama.rope.freq_base'"),
        (_set_kv("tokenizer.ggml.tokens", "array", ["a", "x", "c"]), "1 of 3 elements differ: [1] 'x' != 'b'"),
        (_set_kv("tokenizer.ggml.tokens", "array", ["a", "b"]), "array length 2 != expected 3"),
        (_flip_first("token_embd.weight"), "tensor 'token_embd.weight' (F32 [32, 4]): data differs: 1 of 128"),
        (_flip_first("output_norm.weight"), "tensor 'output_norm.weight' (F16 [32]): data differs"),
        (_flip_first("blk.0.attn_q.weight"), "tensor 'blk.0.attn_q.weight' (Q8_0 [64, 2]): data differs"),
        (_drop_tensor, "tensor 'blk.0.attn_q.weight': missing"),
        (_swap_tensors, "tensor order differs"),
        (_swap_kv, "metadata key order differs"),
        (_reshape, "shape [16, 8] != expected [32, 4]"),
    ],
    ids=["kv-value", "kv-type", "kv-float", "kv-array-element", "kv-array-length", "f32-byte", "f16-byte",
         "q8_0-byte", "missing-tensor", "tensor-order", "kv-order", "tensor-shape"],
)
def test_reports_difference(edit: Callable[[dict[str, Any]], None], expected: str, tmp_path: Path) -> None:
    reference = _write(tmp_path / "reference.gguf")
    changed = _write(tmp_path / "changed.gguf", edit)
    diffs = compare_gguf(changed, reference)
    assert any(expected in d for d in diffs), diffs


def test_identical_files_and_provenance_keys_compare_equal(tmp_path: Path) -> None:
    reference = _write(tmp_path / "reference.gguf")
    ours = _write(tmp_path / "ours.gguf", _set_kv("hqq2gguf.version", "string", "9.9.9"))
    assert compare_gguf(ours, reference) == []
    assert compare_gguf(reference, reference) == []


def test_parser_agrees_with_gguf_reader(tmp_path: Path) -> None:
    path = _write(tmp_path / "reference.gguf")
    fields, tensors = read_gguf(path)
    reader = gguf.GGUFReader(path)
    assert list(fields) == [k for k in reader.fields if not k.startswith("GGUF.")]
    for key, field in fields.items():
        expected = reader.fields[key].contents()
        got = [field.value(i) for i in range(len(field.items))] if len(field.types) == 2 else field.value()
        assert got == pytest.approx(expected) if isinstance(expected, float) else got == expected, key
    assert [(t.name, list(t.shape), t.qtype) for t in tensors] == [
        (t.name, [int(n) for n in t.shape], t.tensor_type) for t in reader.tensors]
    for ours, theirs in zip(tensors, reader.tensors):
        assert ours.data.tobytes() == np.asarray(theirs.data).tobytes(), ours.name
