"""Split GGUF files: written as llama.cpp's converter writes them (--split-max-size / --split-max-tensors),
loaded by llama.cpp with the logits of the unsplit file, read back as input from the first part; a set is
written whole or not at all, and a broken set is refused with one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import pytest

import oracle
from bad_input_helpers import assert_clean_failure, convert_fails, run_cli
from hqq2gguf.convert import ConvertResult, convert
from hqq2gguf.errors import OptionError
from hqq2gguf.gguf_diff import compare_gguf, format_diffs
from hqq2gguf.options import ConvertOptions, OutType, parse_split_size

MAX_TENSORS = 8  # the tiny llama2 has 21 tensors: 3 parts of 8, 8 and 5
Split = gguf.Keys.Split


@pytest.fixture(scope="module")
def model(tiny_model_dir) -> Path:
    return tiny_model_dir("llama2")


@pytest.fixture(scope="module")
def whole(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert(model, ConvertOptions(output=tmp_path_factory.mktemp("whole") / "m.gguf")).path


@pytest.fixture(scope="module")
def split_set(model: Path, tmp_path_factory: pytest.TempPathFactory) -> ConvertResult:
    out = tmp_path_factory.mktemp("split") / "m.gguf"
    return convert(model, ConvertOptions(output=out, split_max_tensors=MAX_TENSORS))


def _fields(path: Path) -> dict[str, object]:
    return {f.name: f.contents() for f in gguf.GGUFReader(path).fields.values() if not f.name.startswith("GGUF.")}


def test_parts_are_named_and_keyed_as_llama_cpp_does(split_set: ConvertResult, whole: Path) -> None:
    n_tensors = len(gguf.GGUFReader(whole).tensors)
    count = -(-n_tensors // MAX_TENSORS)
    assert [p.name for p in split_set.parts] == [f"m-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]
    assert split_set.path == split_set.parts[0]
    assert sorted(p.name for p in split_set.path.parent.iterdir()) == [p.name for p in split_set.parts]
    readers = [gguf.GGUFReader(p) for p in split_set.parts]
    assert [len(r.tensors) for r in readers] == [MAX_TENSORS] * (count - 1) + [n_tensors - MAX_TENSORS * (count - 1)]
    for i, path in enumerate(split_set.parts):
        fields = _fields(path)
        assert (fields[Split.LLM_KV_SPLIT_NO], fields[Split.LLM_KV_SPLIT_COUNT],
                fields[Split.LLM_KV_SPLIT_TENSORS_COUNT]) == (i, count, n_tensors)
        assert ("general.architecture" in fields) == (i == 0), "the metadata belongs to the first part only"
    assert set(_fields(whole)) | set(Split.__dict__.values()) >= set(_fields(split_set.path))


def test_parts_equal_llama_cpp_converter_parts(model: Path, split_set: ConvertResult, oracle_src: Path,
                                               tmp_path: Path) -> None:
    theirs = tmp_path / "m.gguf"
    oracle.run_oracle(model, "f16", theirs, extra_args=("--split-max-tensors", str(MAX_TENSORS)))
    their_parts = sorted(tmp_path.glob("m-*-of-*.gguf"))
    assert [p.name for p in their_parts] == [p.name for p in split_set.parts]
    for ours, expected in zip(split_set.parts, their_parts):
        diffs = compare_gguf(ours, expected)
        assert not diffs, format_diffs(diffs, ours, expected)


def test_size_limit_splits_by_bytes(model: Path, whole: Path, tmp_path: Path) -> None:
    limit = 40_000  # "40K": llama.cpp's K is 1000
    code, output = run_cli("convert", str(model), "-o", str(tmp_path / "m.gguf"), "--split-max-size", "40K")
    assert code == 0 and "parts" in output, output
    parts = sorted(tmp_path.glob("m-*-of-*.gguf"))
    sizes = [[int(t.n_bytes) for t in gguf.GGUFReader(p).tensors] for p in parts]
    assert len(parts) >= 2 and all(sum(s) <= limit or len(s) == 1 for s in sizes), sizes
    assert sum(len(s) for s in sizes) == len(gguf.GGUFReader(whole).tensors)


def _logits(path: Path, tokens: list[int]) -> np.ndarray:
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=2,
                          n_gpu_layers=0)
    try:
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)], dtype=np.float32)
    finally:
        llm.close()


def test_llama_cpp_loads_the_split_with_the_unsplit_logits(split_set: ConvertResult, whole: Path) -> None:
    tokens = [(7 + 31 * i) % 250 for i in range(16)]
    split_logits, whole_logits = _logits(split_set.path, tokens), _logits(whole, tokens)
    assert np.abs(whole_logits).max() > 0.1, "degenerate logits prove nothing"
    np.testing.assert_array_equal(split_logits, whole_logits)


def test_split_input_converts_like_the_unsplit_file(split_set: ConvertResult, whole: Path, tmp_path: Path) -> None:
    from_split = convert(split_set.path, ConvertOptions(outtype=OutType.F32, output=tmp_path / "a.gguf")).path
    from_whole = convert(whole, ConvertOptions(outtype=OutType.F32, output=tmp_path / "b.gguf")).path
    diffs = compare_gguf(from_split, from_whole)
    assert not diffs, format_diffs(diffs, from_split, from_whole)
    assert not any(key.startswith("split.") for key in _fields(from_split))


def _copy_set(split_set: ConvertResult, dest: Path) -> list[Path]:
    dest.mkdir()
    return [Path(shutil.copyfile(p, dest / p.name)) for p in split_set.parts]


def test_missing_part_is_one_error(split_set: ConvertResult, tmp_path: Path) -> None:
    parts = _copy_set(split_set, tmp_path / "in")
    parts[1].unlink()
    convert_fails(parts[0], tmp_path / "out", f"part {parts[1].name!r} is missing")


def test_foreign_part_is_one_error(model: Path, split_set: ConvertResult, tmp_path: Path) -> None:
    parts = _copy_set(split_set, tmp_path / "in")
    (tmp_path / "other").mkdir()
    other = convert(model, ConvertOptions(output=tmp_path / "other" / "x.gguf", split_max_tensors=MAX_TENSORS - 3))
    shutil.copyfile(other.parts[1], parts[1])  # part 2 of a set of another size, under this set's name
    convert_fails(parts[0], tmp_path / "out", "belongs to another split set")


def test_later_part_or_renamed_first_part_is_one_error(split_set: ConvertResult, tmp_path: Path) -> None:
    parts = _copy_set(split_set, tmp_path / "in")
    convert_fails(parts[1], tmp_path / "out1", "give its first part", parts[0].name)
    renamed = parts[0].rename(parts[0].with_name("model.gguf"))
    convert_fails(renamed, tmp_path / "out2", "does not follow llama.cpp's split naming")


def test_an_existing_part_stops_the_set_before_any_work(model: Path, split_set: ConvertResult,
                                                        tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    existing = out / split_set.parts[-1].name
    existing.write_bytes(b"keep me")
    code, output = run_cli("convert", str(model), "-o", str(out / "m.gguf"), "--split-max-tensors", str(MAX_TENSORS))
    assert code == 1 and "output file exists" in output and existing.name in output, output
    assert [p.name for p in out.iterdir()] == [existing.name] and existing.read_bytes() == b"keep me"


def test_an_interrupted_set_leaves_no_part(model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hqq2gguf.convert as pipeline

    real, seen = pipeline.encode_tensor, []

    def encode_then_fail(*args, **kwargs):
        seen.append(1)
        if len(seen) > MAX_TENSORS + 2:  # the first part is complete by now
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "encode_tensor", encode_then_fail)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(KeyboardInterrupt):
        convert(model, ConvertOptions(output=out / "m.gguf", split_max_tensors=MAX_TENSORS))
    assert len(seen) == MAX_TENSORS + 3
    assert_clean_failure(1, "error: interrupted", out)


@pytest.mark.parametrize(("text", "expected"), [("0", 0), ("1000", 1000), ("250K", 250_000), ("500M", 500 * 10**6),
                                                ("50G", 50 * 10**9)])
def test_split_size_is_read_as_llama_cpp_reads_it(text: str, expected: int) -> None:
    assert parse_split_size(text) == expected
    assert ConvertOptions(split_max_size=text).split_max_size == expected


@pytest.mark.parametrize("text", ["", "G", "1.5G", "-1", "5T", "50GB", "1e9"])
def test_bad_split_size_is_refused(text: str) -> None:
    with pytest.raises(OptionError, match="--split-max-size"):
        ConvertOptions(split_max_size=text)


def test_split_limits_are_exclusive_and_not_negative() -> None:
    with pytest.raises(OptionError, match="exclusive"):
        ConvertOptions(split_max_size="1G", split_max_tensors=10)
    with pytest.raises(OptionError, match="--split-max-tensors"):
        ConvertOptions(split_max_tensors=-1)
