"""hqq2gguf.runtime.validate / .structure / .thresholds and ``hqq2gguf validate``.

Tiny converted models make the end-to-end runs take seconds. The claim that validate's KL-divergence is
llama-perplexity's is checked against the real binary when one is available (HQQ2GGUF_LLAMA_PERPLEXITY or
llama-perplexity on PATH); otherwise that test is skipped and says why.
"""

from __future__ import annotations

import itertools
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest
from click.testing import CliRunner
from hqq2gguf.runtime import llama_perplexity
from hqq2gguf.runtime.llama import gpu_offload_supported
from hqq2gguf.runtime.structure import (
    Severity,
    main_type,
    open_gguf_checked,
    structural_checks,
)
from hqq2gguf.runtime.thresholds import Thresholds, default_thresholds, levels
from hqq2gguf.runtime.validate import ValidateOptions, builtin_corpus, validate

from hqq2gguf.cli import main
from hqq2gguf.errors import InputError, OptionError
from hqq2gguf.read.gguf_header import validate_gguf_header

F = gguf.LlamaFileType
N_CTX = 64
N_CHUNKS = 3
FAST = ["-c", str(N_CTX), "--chunks", str(N_CHUNKS), "-t", "2"]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny Llama as an HF directory, an F32 GGUF and a Q8_0 GGUF (both by hqq2gguf)."""
    from hqq2gguf.convert import convert
    from hqq2gguf.options import ConvertOptions, OutType

    out = tmp_path_factory.mktemp("validate")
    hf = tiny_model_dir("llama2")
    return {"hf": hf,
            "f32": convert(hf, ConvertOptions(outtype=OutType.F32, output=out / "tiny-F32.gguf")).path,
            "q8_0": convert(hf, ConvertOptions(outtype=OutType.Q8_0, output=out / "tiny-Q8_0.gguf")).path}


def _options(reference: Path, **kw) -> ValidateOptions:
    return ValidateOptions(reference=reference, n_ctx=N_CTX, n_chunks=N_CHUNKS, n_threads=2, **kw)


# ------------------------------------------------------------------------------ thresholds


def test_limits_loosen_with_fewer_bits() -> None:
    order = [F.MOSTLY_F16, F.MOSTLY_Q8_0, F.MOSTLY_Q6_K, F.MOSTLY_Q5_K_M, F.MOSTLY_Q4_K_M, F.MOSTLY_Q3_K_M,
             F.MOSTLY_Q2_K, F.MOSTLY_IQ1_S]
    limits = [default_thresholds(ft) for ft in order]
    for tighter, looser in itertools.pairwise(limits):
        assert tighter.max_kld < looser.max_kld and tighter.max_kld_p99 < looser.max_kld_p99
        assert tighter.min_top1 > looser.min_top1 and tighter.max_ppl_ratio < looser.max_ppl_ratio
    assert default_thresholds(None) == levels()["2-bit"]


def test_limits_cover_what_good_files_measure() -> None:
    """benchmarks/results/quality_smollm2.md: llama.cpp's own files on SmolLM2-135M pass their defaults."""
    measured = {F.MOSTLY_Q8_0: (0.00535, 0.0280, 0.951), F.MOSTLY_Q6_K: (0.01205, 0.0760, 0.932),
                F.MOSTLY_Q5_K_M: (0.05299, 0.3443, 0.856), F.MOSTLY_Q4_K_M: (0.07298, 0.4312, 0.832),
                F.MOSTLY_Q4_0: (0.43113, 2.3004, 0.635), F.MOSTLY_Q3_K_M: (0.25055, 1.5717, 0.719),
                F.MOSTLY_Q2_K: (0.55130, 2.6389, 0.595)}
    for ft, (kld, p99, top1) in measured.items():
        t = default_thresholds(ft)
        assert kld <= t.max_kld and p99 <= t.max_kld_p99 and top1 >= t.min_top1, ft.name


def test_threshold_override_and_validation() -> None:
    t = default_thresholds(F.MOSTLY_Q4_K_M).override(max_kld=0.01, min_top1=None)
    assert t.max_kld == 0.01 and t.min_top1 == default_thresholds(F.MOSTLY_Q4_K_M).min_top1
    with pytest.raises(OptionError):
        Thresholds(max_kld=-1, max_kld_p99=None, min_top1=None, max_ppl_ratio=None)
    with pytest.raises(OptionError):
        Thresholds(max_kld=None, max_kld_p99=None, min_top1=1.5, max_ppl_ratio=None)
    with pytest.raises(OptionError, match="min_top1"):
        ValidateOptions(reference=Path("x"), min_top1=2.0)
    assert ValidateOptions(reference=Path("x"), max_kld=0.1).limits(t).max_kld == 0.1


@pytest.mark.parametrize(("ft", "expected"), [(F.MOSTLY_Q4_K_M, "Q4_K"), (F.MOSTLY_Q8_0, "Q8_0"),
                                              (F.ALL_F32, "F32"), (F.MOSTLY_IQ2_XXS, "IQ2_XXS"),
                                              (F.MOSTLY_Q3_K_L, "Q3_K"), (F.MOSTLY_IQ3_M, None)])
def test_main_type(ft: gguf.LlamaFileType, expected: str | None) -> None:
    got = main_type(ft)
    assert (got.name if got is not None else None) == expected


def test_builtin_corpus_is_package_data() -> None:
    text = builtin_corpus()
    assert len(text) > 8000 and text.count("\n\n") > 10


# ------------------------------------------------------------------------------ structure


def test_structural_checks_pass(tiny: dict[str, Path]) -> None:
    ref = open_gguf_checked(tiny["f32"])
    checks = structural_checks(tiny["q8_0"], reference=ref)
    assert [c.name for c in checks] == ["file readable", "metadata", "shapes", "tensor types",
                                        "same tensors as reference", "finite values", "chat template"]
    assert all(c.ok for c in checks), checks


def test_truncated_file(tiny: dict[str, Path], tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    data = tiny["q8_0"].read_bytes()
    cut.write_bytes(data[: len(data) - 100])
    checks = structural_checks(cut)
    assert len(checks) == 1 and checks[0].failed and "truncated" in checks[0].detail


def test_nan_in_a_tensor(tiny: dict[str, Path], tmp_path: Path) -> None:
    broken = tmp_path / "nan.gguf"
    data = bytearray(tiny["f32"].read_bytes())
    span = next(s for s in validate_gguf_header(tiny["f32"]).tensors if s.name == "blk.1.ffn_down.weight")
    data[span.begin + 40:span.begin + 48] = np.array([np.nan, np.inf], dtype=np.float32).tobytes()
    broken.write_bytes(bytes(data))
    finite = {c.name: c for c in structural_checks(broken)}["finite values"]
    assert finite.failed and "blk.1.ffn_down.weight (2 of" in finite.detail


def _writer_gguf(path: Path, file_type: gguf.LlamaFileType, *, template: str | None = None) -> Path:
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_file_type(file_type)
    if template is not None:
        w.add_chat_template(template)
    w.add_tensor("blk.0.attn_q.weight", np.ones((32, 32), dtype=np.float32))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(32, dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_mislabelled_file_type_and_missing_metadata(tmp_path: Path) -> None:
    checks = {c.name: c for c in structural_checks(_writer_gguf(tmp_path / "m.gguf", F.MOSTLY_Q4_K_M))}
    assert checks["tensor types"].failed and "weight matrices are unquantized" in checks["tensor types"].detail
    assert checks["metadata"].failed and "tokenizer.ggml.tokens" in checks["metadata"].detail
    assert checks["chat template"].severity is Severity.WARNING and not checks["chat template"].failed
    labelled = {c.name: c for c in structural_checks(_writer_gguf(tmp_path / "f.gguf", F.ALL_F32))}
    assert labelled["tensor types"].severity is Severity.WARNING and "1-D tensors are not F32" in (
        labelled["tensor types"].detail)


def test_missing_chat_template_fails_when_the_reference_has_one(tiny: dict[str, Path], tmp_path: Path) -> None:
    checks = {c.name: c for c in structural_checks(_writer_gguf(tmp_path / "m.gguf", F.ALL_F32),
                                                   reference=open_gguf_checked(tiny["f32"]))}
    assert checks["chat template"].failed and checks["same tensors as reference"].failed


# ------------------------------------------------------------------------------ validate


def test_model_against_itself_passes(tiny: dict[str, Path]) -> None:
    report = validate(tiny["f32"], _options(tiny["f32"]))
    assert report.passed, report.failures()
    (m,) = report.measurements
    assert m.label == "CPU" and abs(m.result.kld_mean) < 1e-5 and m.result.same_top == 1.0
    assert m.result.n_chunks == N_CHUNKS and report.level == "lossless"


def test_hf_directory_reference_is_converted_and_deleted(tiny: dict[str, Path], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    report = validate(tiny["q8_0"], _options(tiny["hf"]))
    assert report.passed, report.failures()
    assert "converted to F16" in report.reference and report.file_type == "MOSTLY_Q8_0"
    assert 0 < report.measurements[0].result.kld_mean < default_thresholds(F.MOSTLY_Q8_0).max_kld
    assert list(scratch.iterdir()) == []


def test_quantized_reference_is_refused(tiny: dict[str, Path]) -> None:
    with pytest.raises(InputError, match="must be an F32/F16/BF16 GGUF"):
        validate(tiny["f32"], _options(tiny["q8_0"]))


def test_text_too_short(tiny: dict[str, Path], tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("Only a few words.\n")
    with pytest.raises(InputError, match="at least 128 are needed"):
        validate(tiny["f32"], ValidateOptions(reference=tiny["f32"], text=short, n_ctx=N_CTX, n_threads=2))


def test_cli_json_and_exit_codes(tiny: dict[str, Path]) -> None:
    runner = CliRunner()
    ok = runner.invoke(main, ["validate", str(tiny["q8_0"]), "-r", str(tiny["f32"]), "--json", *FAST])
    assert ok.exit_code == 0, ok.output
    report = json.loads(ok.stdout)
    assert report["passed"] and report["failures"] == [] and report["level"] == "8-bit"
    (m,) = report["measurements"]
    assert {v["metric"] for v in m["verdicts"]} == {"mean KLD", "KLD p99", "top-1 agreement", "PPL ratio"}
    bad = runner.invoke(main, ["validate", str(tiny["q8_0"]), "-r", str(tiny["f32"]), "--max-kld", "1e-12", *FAST])
    assert bad.exit_code == 1
    assert "mean KLD" in bad.output and "FAIL (1 problem)" in bad.output and "<= 1e-12" in bad.output


def test_cli_table(tiny: dict[str, Path]) -> None:
    result = CliRunner().invoke(main, ["validate", str(tiny["f32"]), "-r", str(tiny["f32"]), *FAST])
    assert result.exit_code == 0, result.output
    for expected in ("structure", "[ ok ] finite values", "numbers: CPU", "top-1 agreement", "PPL (reference)",
                     "built-in corpus", "\nPASS"):
        assert expected in result.output


def test_cli_bad_input_is_one_line(tmp_path: Path) -> None:
    bogus = tmp_path / "x.gguf"
    bogus.write_bytes(b"not a gguf at all")
    result = CliRunner().invoke(main, ["validate", str(bogus), "-r", str(bogus)])
    assert result.exit_code == 1 and result.output.startswith("error: ") and "not a GGUF file" in result.output


# ------------------------------------------------------------------------------ devices


@pytest.mark.skipif(gpu_offload_supported(), reason="this llama-cpp-python build can offload to a GPU")
def test_compare_devices_without_cuda_fails_plainly(tiny: dict[str, Path]) -> None:
    result = CliRunner().invoke(main, ["validate", str(tiny["f32"]), "-r", str(tiny["f32"]), "--compare-devices",
                                       *FAST])
    assert result.exit_code == 1
    assert "error: --compare-devices needs CUDA, but CUDA is unavailable here: GPU offload unavailable" in result.output
    assert "numbers:" not in result.output  # nothing was measured: no CPU-only result posing as a comparison


@pytest.mark.gpu
def test_compare_devices_on_cuda(tiny: dict[str, Path]) -> None:
    if not gpu_offload_supported():
        pytest.skip("NO GPU BUILD: llama-cpp-python cannot offload here, CPU-vs-CUDA NOT checked")
    report = validate(tiny["q8_0"], _options(tiny["f32"], compare_devices=True))
    assert [m.label for m in report.measurements] == ["CPU", "CUDA", "CUDA vs CPU (same file)"]
    assert report.passed, report.failures()


# ------------------------------------------------------------------------------ llama-perplexity


@pytest.fixture(scope="module")
def llama_cpp_q4_0(tiny: dict[str, Path]) -> Path:
    """llama.cpp's own Q4_0 of the tiny model: a KLD well above the log-prob coding noise."""
    from llama_quantize import QuantJob, run_quantize

    out = tiny["f32"].with_name("tiny-llama.cpp-Q4_0.gguf")
    (result,) = run_quantize([QuantJob(src=str(tiny["f32"]), ftype=int(F.MOSTLY_Q4_0), keep_as=str(out))])
    assert result.ok, result.log_tail
    return out


def test_kld_agrees_with_llama_perplexity(tiny: dict[str, Path], llama_cpp_q4_0: Path, tmp_path: Path) -> None:
    reason = llama_perplexity.missing_reason()
    if reason is not None:
        pytest.skip(f"KLD NOT CROSS-CHECKED with llama-perplexity: {reason}")
    text = tmp_path / "corpus.txt"  # with some CR LF line ends: llama-perplexity keeps the CR, so must validate
    text.write_bytes(builtin_corpus().replace("\n\n", "\r\n\r\n", 4).encode("utf-8"))
    n_ctx, n_chunks = 128, 4
    # One compute thread leaves llama-perplexity's logger thread a core (see runtime/llama_perplexity.py).
    theirs = llama_perplexity.kl_divergence(llama_perplexity.find_binary(), llama_cpp_q4_0, tiny["f32"], text,
                                            n_ctx=n_ctx, n_chunks=n_chunks, n_threads=1)
    report = validate(llama_cpp_q4_0, ValidateOptions(reference=tiny["f32"], text=text, n_ctx=n_ctx,
                                                      n_chunks=n_chunks, n_threads=2))
    ours = report.measurements[0].result
    assert ours.kld_mean > 1e-3, "the cross-check needs a KLD well above the coding noise"
    assert len(ours.chunk_kld) == n_chunks  # equal-sized chunks: their means average to the mean
    assert sum(ours.chunk_kld) / n_chunks == pytest.approx(ours.kld_mean, rel=1e-9)
    assert ours.kld_mean == pytest.approx(theirs.kld_mean, rel=0.02)
    assert ours.kld_p99 == pytest.approx(theirs.kld_p99, rel=0.02)
    assert ours.kld_max == pytest.approx(theirs.kld_max, rel=0.02)
    assert ours.same_top == pytest.approx(theirs.same_top, abs=2 / ours.n_tokens_scored)
    assert ours.ppl == pytest.approx(theirs.ppl, rel=1e-3) and ours.ppl_ref == pytest.approx(theirs.ppl_ref, rel=1e-3)
