"""Error feedback (hqq2gguf.feedback) and the covariances it reads (hqq2gguf.calibrate.covariance)."""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import hqq2gguf.calibrate.covariance as cov_mod
import hqq2gguf.calibrate as calibrate
from hqq2gguf.calibrate import FEEDBACK_MIN_TOKENS, SelfText
from hqq2gguf.calibrate.covariance import CovarianceSink, windows
from hqq2gguf.encode import solve_rows, solve_with_feedback
from hqq2gguf.cli import main
from hqq2gguf.convert import convert
from hqq2gguf.feedback import DAMP, Feedback, decode
from hqq2gguf.optimize import SolverConfig
from hqq2gguf.options import ConvertOptions, Device
from hqq2gguf.runtime.validate import builtin_corpus

Q = gguf.GGMLQuantizationType
CONFIG = SolverConfig()


def correlated(n: int, d: int, seed: int, sample: int = 0) -> np.ndarray:
    """Activation rows whose columns are correlated (as a model's are): the correlation drawn by ``seed``, the
    rows by ``sample``."""
    mix = np.random.default_rng(seed).standard_normal((d, d)) * 0.3 + np.eye(d)
    return np.random.default_rng([seed, sample]).standard_normal((n, d)) @ mix


def output_error(w: np.ndarray, packed: np.ndarray, qtype: gguf.GGMLQuantizationType, x: np.ndarray) -> float:
    return float(np.linalg.norm((decode(packed, qtype) - w) @ x.T) / np.linalg.norm(w @ x.T))


def plain(w: np.ndarray, qtype: gguf.GGMLQuantizationType, imp: np.ndarray) -> np.ndarray:
    return solve_rows(w, qtype, CONFIG, torch.from_numpy(imp), Device.TORCH).packed


@pytest.mark.parametrize("qtype", [Q.Q5_0, Q.Q4_K], ids=lambda t: t.name)
def test_feedback_lowers_the_output_error_on_held_out_text(qtype: gguf.GGMLQuantizationType) -> None:
    d = 1024
    x, held_out = correlated(4096, d, 0), correlated(4096, d, 0, sample=1)
    w = np.random.default_rng(2).standard_normal((64, d)).astype(np.float32)
    imp = (x ** 2).mean(0).astype(np.float32)
    fb = Feedback.of([x.T @ x / len(x)])
    done = solve_with_feedback(w, qtype, CONFIG, imp[None], Device.TORCH, fb)
    base = plain(w, qtype, imp)
    # at the product's damping (1.0; these ratios measured 0.85 / 0.88, with 0.1 0.77 / 0.83)
    assert output_error(w, done.packed, qtype, held_out) < 0.92 * output_error(w, base, qtype, held_out)
    # its own report: output error and norm on the covariance it was given
    assert done.objective == pytest.approx(fb.output_error(decode(done.packed, qtype) - w), rel=1e-6)
    assert done.baseline_objective == pytest.approx(float(((w @ fb.covariances[0].numpy()) * w).sum()), rel=1e-4)  # float32


@pytest.mark.parametrize("qtype, weighted", [(Q.Q4_K, True), (Q.Q5_1, False)], ids=["Q4_K", "Q5_1"])
def test_uncorrelated_columns_feed_nothing_forward(qtype: gguf.GGMLQuantizationType, weighted: bool) -> None:
    """A diagonal covariance: every block is solved as without feedback, byte for byte. (Weighted 32-blocks are
    not: llama.cpp's weights floor each element by the mean square of the row, here of the block solved.)"""
    d = 256
    w = np.random.default_rng(3).standard_normal((40, d)).astype(np.float32)
    imp = np.linspace(0.5, 2.0, d).astype(np.float32)
    done = solve_with_feedback(w, qtype, CONFIG, imp[None] if weighted else None, Device.TORCH,
                               Feedback.of([np.diag(imp)]))
    expected = solve_rows(w, qtype, CONFIG, torch.from_numpy(imp) if weighted else None, Device.TORCH).packed
    assert np.array_equal(done.packed, expected)


def test_rows_are_independent() -> None:
    """A sampled row gets the very blocks it gets in the file (what the allocation's costs rely on)."""
    d = 256
    x = correlated(2048, d, 4)
    w = np.random.default_rng(5).standard_normal((30, d)).astype(np.float32)
    fb = Feedback.of([x.T @ x / len(x)])
    full = solve_with_feedback(w, Q.Q4_K, CONFIG, None, Device.TORCH, fb).packed
    picked = [3, 17, 29]
    part = solve_with_feedback(w[picked], Q.Q4_K, CONFIG, None, Device.TORCH, fb).packed
    assert np.array_equal(part, full[picked])


def test_windows_keep_the_feedback_within_them() -> None:
    """A block-diagonal covariance given whole and given as its blocks: the same bytes."""
    x1, x2 = correlated(2048, 256, 6), correlated(2048, 256, 7)
    h1, h2 = x1.T @ x1 / 2048, x2.T @ x2 / 2048
    h2 *= np.trace(h1) / np.trace(h2)  # one mean diagonal: the same damping whole and in windows
    whole = np.zeros((512, 512))
    whole[:256, :256], whole[256:, 256:] = h1, h2
    w = np.random.default_rng(8).standard_normal((20, 512)).astype(np.float32)
    a = solve_with_feedback(w, Q.Q5_0, CONFIG, None, Device.TORCH, Feedback.of([whole])).packed
    b = solve_with_feedback(w, Q.Q5_0, CONFIG, None, Device.TORCH, Feedback.of([h1, h2])).packed
    assert np.array_equal(a, b)


def test_columns_the_text_never_reached_do_not_break_it() -> None:
    d = 64
    x = correlated(512, d, 9)
    x[:, 5] = 0.0
    x[:, 40] = 0.0
    w = np.random.default_rng(10).standard_normal((8, d)).astype(np.float32)
    done = solve_with_feedback(w, Q.Q8_0, CONFIG, None, Device.TORCH, Feedback.of([x.T @ x / len(x)]))
    assert np.isfinite(decode(done.packed, Q.Q8_0)).all()
    assert np.abs(decode(done.packed, Q.Q8_0) - w).max() < 0.1


def test_mismatched_covariance_is_refused() -> None:
    fb = Feedback.of([np.eye(64)])
    with pytest.raises(ValueError, match="do not fit"):
        fb.solve(np.zeros((2, 128), np.float32), Q.Q8_0, 32, lambda part, a, b: None)


def test_sink_keeps_each_windows_mean(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows added in uneven batches, flushed in between: each diagonal block is the mean x^T x of its columns."""
    monkeypatch.setattr(cov_mod, "FLUSH_ROWS", 7)
    monkeypatch.setattr(cov_mod, "WINDOW", 64)
    assert windows(160) == [(0, 64), (64, 128), (128, 160)]
    x = correlated(50, 160, 11).astype(np.float32)
    y = correlated(9, 32, 12).astype(np.float32)
    sink = CovarianceSink()
    try:
        for start in range(0, 50, 3):
            sink.add("blk.0.ffn_down.weight", x[start:start + 3])
        sink.add("blk.0.attn_q.weight", y)
        covs = sink.finish()
        blocks = covs.for_tensor("blk.0.ffn_down.weight", 160)
        assert [b.shape for b in blocks] == [(64, 64), (64, 64), (32, 32)]
        for (a, b), got in zip(windows(160), blocks):
            xw = x[:, a:b].astype(np.float64)
            np.testing.assert_allclose(got, xw.T @ xw / 50, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(covs.for_tensor("blk.0.attn_q.weight", 32)[0],
                                   y.astype(np.float64).T @ y / 9, rtol=1e-5, atol=1e-5)
        assert covs.for_tensor("blk.0.attn_q.weight", 64) is None  # another shape: not this tensor's
        assert covs.for_tensor("blk.1.attn_q.weight", 32) is None
        where = sink._dir
        assert any(where.iterdir())
    finally:
        covs.close()
    assert not where.exists()


def test_sink_shares_one_input_read_by_several_matrices(monkeypatch: pytest.MonkeyPatch) -> None:
    """q, k and v read one input: buffered as one copy, each still its own mean; an input that differs
    after the first flush is summed apart. Between flushes no sum is mapped into the process."""
    monkeypatch.setattr(cov_mod, "FLUSH_ROWS", 8)
    monkeypatch.setattr(cov_mod, "WINDOW", 32)
    x, other = correlated(24, 48, 13).astype(np.float32), correlated(8, 48, 14).astype(np.float32)
    sink = CovarianceSink()
    try:
        for start in range(0, 16, 4):
            for name in ("q", "k", "v"):
                sink.add(name, x[start:start + 4].copy())  # the collector hands over a fresh copy each time
        assert sink._buffers == {}  # all three flushed at 8 rows
        for name in ("q", "k"):
            sink.add(name, x[16:20])
        sink.add("v", other[:4])
        assert sink._buffers["q"][0] is sink._buffers["k"][0] and sink._buffers["v"][0] is not sink._buffers["q"][0]
        for name in ("q", "k"):
            sink.add(name, x[20:24])
        sink.add("v", other[4:])
        covs = sink.finish()
        qkv = {name: covs.for_tensor(name, 48) for name in ("q", "k", "v")}
        assert all(isinstance(b, np.ndarray) and not isinstance(b, np.memmap) for b in qkv["q"])
        v_rows = np.concatenate([x[:16], other]).astype(np.float64)
        for (a, b), q, k, v in zip(windows(48), qkv["q"], qkv["k"], qkv["v"]):
            xw = x[:, a:b].astype(np.float64)
            np.testing.assert_allclose(q, xw.T @ xw / 24, rtol=1e-5, atol=1e-5)
            assert np.array_equal(q, k)
            np.testing.assert_allclose(v, v_rows[:, a:b].T @ v_rows[:, a:b] / 24, rtol=1e-5, atol=1e-5)
    finally:
        sink.close()


def _provenance(path: Path) -> dict:
    return json.loads(gguf.GGUFReader(path).fields["hqq2gguf.options"].contents())


def test_calibrated_conversion_feeds_errors_forward_and_cleans_up(tiny_model_dir: Callable[[str], Path],
                                                                   tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The same self-written text either way; the file records the feedback, --no-feedback is the plain solve,
    and no covariance file outlives the conversion."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    model = tiny_model_dir("llama2")
    runs = {}
    for tag, feedback in (("on", True), ("off", False)):
        runs[tag] = convert(model, ConvertOptions.from_args(recipe="Q4_0", calibration="self", feedback=feedback,
                                                            output=tmp_path / f"{tag}.gguf")).path
    on, off = _provenance(runs["on"])["calibration"], _provenance(runs["off"])["calibration"]
    assert on["sequences"] == off["sequences"] == SelfText.n_sequences and on["text_sha256"] == off["text_sha256"]
    assert on["feedback"] == {"damp": DAMP, "tokens": on["tokens"]} and on["tokens"] >= FEEDBACK_MIN_TOKENS
    assert "feedback" not in off
    assert runs["on"].read_bytes() != runs["off"].read_bytes()
    assert not list(scratch.glob("hqq2gguf-covariance-*"))
    again = convert(model, ConvertOptions.from_args(recipe="Q4_0", calibration="self", feedback=True,
                                                    output=tmp_path / "again.gguf")).path
    assert again.read_bytes() == runs["on"].read_bytes()  # deterministic


def test_short_calibration_text_leaves_the_feedback_off(tiny_model_dir: Callable[[str], Path], tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    text = tmp_path / "short.txt"
    corpus = builtin_corpus()
    text.write_text(corpus[:len(corpus) // 3], encoding="utf-8")  # a few 512-token chunks
    monkeypatch.setattr(calibrate, "FEEDBACK_MIN_TOKENS", 100 * FEEDBACK_MIN_TOKENS)  # more than the file has
    with caplog.at_level(logging.INFO, logger="hqq2gguf.calibrate"):
        out = convert(tiny_model_dir("llama2"), ConvertOptions.from_args(recipe="Q4_0", calibration=str(text),
                                                                         feedback=True, output=tmp_path / "m.gguf")).path
    record = _provenance(out)["calibration"]
    assert record["tokens"] < calibrate.FEEDBACK_MIN_TOKENS and "feedback" not in record
    assert f"error feedback: off, {record['tokens']} tokens of calibration text" in caplog.text


@pytest.mark.default_calibration
@pytest.mark.parametrize("args, on", [((), True), (("--feedback",), True), (("--no-feedback",), False)],
                         ids=["default", "feedback", "no-feedback"])
def test_feedback_on_the_command_line(tiny_model_dir: Callable[[str], Path], tmp_path: Path,
                                      args: tuple[str, ...], on: bool) -> None:
    """On by default (with the default calibration) unless --no-feedback."""
    out = tmp_path / "m.gguf"
    result = CliRunner().invoke(main, ["convert", str(tiny_model_dir("llama2")), "--type", "Q4_K_M", *args,
                                       "-o", str(out)])
    assert result.exit_code == 0, result.output
    record = _provenance(out)["calibration"]
    assert ("feedback" in record) == on
    assert record["sequences"] == SelfText.n_sequences
