"""Calibration text read through llama.cpp: the statistics equal llama-imatrix's, llama-quantize reads our
imatrix file, self-calibration is deterministic per seed and recorded, and bad text is one clear error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest
from click.testing import CliRunner

from hqq2gguf.calibrate import SelfText, collect_activations
from hqq2gguf.cli import main
from hqq2gguf.convert import convert
from hqq2gguf.imatrix import make_imatrix
from hqq2gguf.errors import InputError, OptionError, OutputError
from hqq2gguf.options import Calibration, ConvertOptions, OutType
from hqq2gguf.recipes import Recipe
from hqq2gguf.runtime.validate import builtin_corpus

CHUNK = 128  # the tiny models are trained for 256 positions
REPO = Path(__file__).resolve().parents[1]


def llama_tool(name: str) -> Path | None:
    """``$HQQ2GGUF_<NAME>`` (CI builds the tools with scripts/build_llama_tools.sh), PATH, or the build folder."""
    env = os.environ.get("HQQ2GGUF_" + name.upper().replace("-", "_"))
    for candidate in (env, shutil.which(name), REPO / ".cache" / "llama-tools" / "build" / "bin" / name):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="module")
def tiny_f16(tiny_model_dir: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("calib") / "llama2-f16.gguf"
    return convert(tiny_model_dir("llama2"), ConvertOptions(outtype=OutType.F16, output=out)).path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text(builtin_corpus() * 2, encoding="utf-8")
    return path


def read_imatrix_file(path: Path) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    reader = gguf.GGUFReader(path)
    tensors = {t.name: np.array(t.data, dtype=np.float64) for t in reader.tensors}
    kv = {f.name: f.contents() for f in reader.fields.values() if not f.name.startswith("GGUF.")}
    return tensors, kv


def test_statistics_equal_llama_imatrix(tiny_f16: Path, corpus: Path, tmp_path: Path) -> None:
    binary = llama_tool("llama-imatrix")
    if binary is None:
        pytest.skip("NOT CROSS-CHECKED with llama-imatrix: build it (bash scripts/build_llama_tools.sh llama-imatrix) "
                    "and set HQQ2GGUF_LLAMA_IMATRIX")
    theirs_path, ours_path = tmp_path / "theirs.gguf", tmp_path / "ours.gguf"
    proc = subprocess.run([str(binary), "-m", str(tiny_f16), "-f", str(corpus), "-c", str(CHUNK), "-t", "2",
                           "-o", str(theirs_path)], capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = make_imatrix(tiny_f16, ours_path, text=corpus, chunk=CHUNK)
    theirs, theirs_kv = read_imatrix_file(theirs_path)
    ours, ours_kv = read_imatrix_file(ours_path)
    assert sorted(ours) == sorted(theirs) and len(ours) == 2 * result.n_entries > 0
    assert ours_kv["general.type"] == "imatrix" and "general.architecture" not in ours_kv
    for key in ("imatrix.chunk_count", "imatrix.chunk_size"):
        assert ours_kv[key] == theirs_kv[key]
    for name in theirs:
        if name.endswith(".counts"):
            np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
        else:  # float32 sums of the same activations; llama.cpp adds them in float32, we in float64
            np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-3, atol=0, err_msg=name)


def test_llama_quantize_reads_our_imatrix(tiny_f16: Path, corpus: Path, tmp_path: Path) -> None:
    binary = llama_tool("llama-quantize")
    if binary is None:
        pytest.skip("NOT CHECKED with llama-quantize: build it (bash scripts/build_llama_tools.sh llama-quantize) "
                    "and set HQQ2GGUF_LLAMA_QUANTIZE")
    imatrix = make_imatrix(tiny_f16, tmp_path / "m.imatrix.gguf", text=corpus, chunk=CHUNK).path
    out = tmp_path / "q.gguf"
    proc = subprocess.run([str(binary), "--imatrix", str(imatrix), str(tiny_f16), str(out), "Q4_0", "2"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "imatrix" in (proc.stdout + proc.stderr) and out.stat().st_size > 0


def provenance(path: Path) -> dict:
    reader = gguf.GGUFReader(path)
    return json.loads(reader.fields["hqq2gguf.options"].contents())


def test_self_calibration_is_deterministic_per_seed_and_recorded(tiny_model_dir: Callable[[str], Path],
                                                                   tmp_path: Path) -> None:
    model = tiny_model_dir("llama2")
    outs = {}
    for tag, seed in (("a", 0), ("b", 0), ("c", 5)):
        outs[tag] = convert(model, ConvertOptions.from_args(recipe="Q4_0", calibration="self", seed=seed,
                                                            output=tmp_path / f"{tag}.gguf",
                                                            save_calibration=tmp_path / f"{tag}.txt")).path
    assert outs["a"].read_bytes() == outs["b"].read_bytes()
    record = provenance(outs["a"])["calibration"]
    assert record["kind"] == "self" and record["seed"] == 0 and 0 < record["tokens"] <= record["chunks"] * record["chunk_size"]
    assert record["text_sha256"] != provenance(outs["c"])["calibration"]["text_sha256"]
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == (tmp_path / "b.txt").read_text(encoding="utf-8")
    plain = convert(model, ConvertOptions.from_args(recipe="Q4_0", output=tmp_path / "plain.gguf")).path
    assert "calibration" not in provenance(plain)
    assert plain.read_bytes() != outs["a"].read_bytes()  # the importance changed blocks


@pytest.mark.parametrize("content, message", [
    (b"", "the calibration text is empty"),
    (b"   \n\n", "the calibration text is empty"),
    (b"text\x00with a NUL", "the calibration text is binary"),
    (b"\xff\xfe not utf-8", "the calibration text is not UTF-8"),
    (b"Too short for a chunk.", "shorter than one chunk of 512"),
], ids=["empty", "blank", "binary", "not-utf8", "short"])
def test_bad_calibration_text_is_one_clear_error(tiny_model_dir: Callable[[str], Path], tmp_path: Path,
                                                 content: bytes, message: str) -> None:
    text = tmp_path / "calib.txt"
    text.write_bytes(content)
    out = tmp_path / "out.gguf"
    result = CliRunner().invoke(main, ["convert", str(tiny_model_dir("llama2")), "-o", str(out), "--type", "Q4_0",
                                       "--calibration", str(text)])
    assert result.exit_code == 1, result.output
    assert message in result.output and str(text) in result.output
    assert not out.exists() and not list(tmp_path.glob(".*partial"))


def test_imatrix_command_refuses_a_non_gguf_name(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["imatrix", str(tmp_path), "-o", str(tmp_path / "x.dat")])
    assert result.exit_code == 1 and "GGUF format" in result.output


def test_existing_output_is_refused_before_calibration(tiny_model_dir: Callable[[str], Path], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Minutes of calibration must not come before "output file exists"."""
    import hqq2gguf.calibrate as calibrate

    def no_calibration(*args: object, **kwargs: object) -> None:
        raise AssertionError("calibration ran before the output path was checked")

    monkeypatch.setattr(calibrate, "collect_activations", no_calibration)
    out = tmp_path / "m.gguf"
    out.write_bytes(b"precious")
    with pytest.raises(OutputError, match="exists"):
        convert(tiny_model_dir("llama2"), ConvertOptions.from_args(recipe="Q4_0", calibration="self", output=out))
    with pytest.raises(OutputError, match=r"\.gguf"):
        convert(tiny_model_dir("llama2"), ConvertOptions.from_args(recipe="Q4_0", calibration="self",
                                                                   output=tmp_path / "m.bin"))
    assert out.read_bytes() == b"precious"


def test_tokens_read_while_writing_are_counted_per_matrix(tiny_f16: Path) -> None:
    """Statistics collected while the model writes: every token it read counts once in every layer-0 matrix."""
    stats, text = collect_activations(tiny_f16, SelfText(n_sequences=3, n_tokens=20, batch=2, seed=1))
    assert 0 < text.tokens <= 3 * (20 + 1)
    counts = {name: int(c.sum()) for name, c in stats.counts.items() if name.startswith("blk.0.")}
    assert counts and set(counts.values()) == {text.tokens}, counts


@pytest.mark.default_calibration
@pytest.mark.parametrize(("args", "kind"), [
    ((), "self"),                                   # the default: the model's own text
    (("--calibration", "none"), None),
    (("--importance", "norms"), None),              # the data-free proxy asked for: no text
], ids=["default", "none", "importance"])
def test_quantizing_calibrates_on_the_models_own_text_by_default(tiny_model_dir: Callable[[str], Path],
                                                                  tmp_path: Path, args: tuple[str, ...],
                                                                  kind: str | None) -> None:
    out = tmp_path / "m.gguf"
    result = CliRunner().invoke(main, ["convert", str(tiny_model_dir("llama2")), "--type", "Q4_K_M", "-o", str(out),
                                       *args])
    assert result.exit_code == 0, result.output
    record = provenance(out).get("calibration")
    assert (record and record["kind"]) == kind


@pytest.mark.default_calibration
def test_default_calibration_resolution() -> None:
    """AUTO is resolved at construction: the options say what will happen."""
    assert ConvertOptions.from_args(recipe="Q4_K_M").calibration is Calibration.SELF
    assert ConvertOptions(recipe=Recipe.Q2_K).calibration is Calibration.SELF
    assert ConvertOptions.from_args(recipe="Q8_0").calibration is Calibration.NONE  # no measurable gain
    assert ConvertOptions().calibration is Calibration.NONE  # nothing to quantize
    assert ConvertOptions.from_args(recipe="Q4_K_M", imatrix=Path("x.gguf")).calibration is Calibration.NONE
    assert not ConvertOptions.from_args(recipe="Q4_K_M", imatrix=Path("x.gguf")).calibrated
    with pytest.raises(OptionError, match="--save-calibration"):
        ConvertOptions.from_args(recipe="Q8_0", save_calibration=Path("t.txt"))


def test_ctrl_c_during_calibration_leaves_nothing(tiny_model_dir: Callable[[str], Path], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C lands in llama.cpp's eval callback (Python code called from C, which must not unwind through it):
    it is carried out and raised as KeyboardInterrupt (the CLI's exit 130), not reported as an input error, and
    neither the output nor the temporary F16 GGUF of the HF input is left behind."""
    import tempfile

    from hqq2gguf.calibrate.collect import ImatrixCollector

    calls = []

    def interrupted(self: ImatrixCollector, t: object) -> None:
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(ImatrixCollector, "_collect", interrupted)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    out = tmp_path / "m.gguf"
    with pytest.raises(KeyboardInterrupt):
        convert(tiny_model_dir("llama2"), ConvertOptions.from_args(recipe="Q4_0", calibration="self", output=out))
    assert len(calls) == 5  # stopped at the interrupt, not after the batch
    assert not out.exists() and list(scratch.iterdir()) == []


def test_a_vocabulary_with_no_plain_token_is_refused_with_the_way_out(tiny_f16: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from hqq2gguf.calibrate.llama_run import LlamaRunner

    monkeypatch.setattr(LlamaRunner, "plain_tokens", lambda self: np.array([], dtype=np.int32))
    with pytest.raises(InputError, match="--calibration FILE"):
        collect_activations(tiny_f16, SelfText(n_sequences=2, n_tokens=8, batch=2))
