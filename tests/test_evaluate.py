"""hqq2gguf.runtime.metrics and .evaluate: llama-perplexity's chunking, scoring, coding and statistics.

Pure functions are checked on synthetic data against independent numpy computations; the end-to-end
path runs a tiny converted model in llama-cpp-python (a model against itself: KLD 0, top-1 100%; its
perplexity against a direct computation from ``eval_logits``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hqq2gguf.runtime import evaluate as ev
from hqq2gguf.runtime import metrics as mt

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")

N_CTX = 64
N_CHUNKS = 3
TEXT = " ".join(f"The {w} number {i} walks over the bridge, and nobody knows why {i % 7} birds sing."
                for i, w in enumerate(["quick", "slow", "red", "green", "tall", "small"] * 12)) + "\n"


# ------------------------------------------------------------------------------------ chunking


def test_scored_half_of_a_512_chunk() -> None:
    assert mt.first_scored(512) == 256
    assert mt.n_scored(512) == 255  # logits 256..510 predict tokens 257..511


@pytest.mark.parametrize(("n_tokens", "n_chunks", "expected"),
                         [(2048, 40, 4), (2047, 40, 3), (100_000, 40, 40), (2048, None, 4), (2048, -1, 4)])
def test_chunk_count(n_tokens: int, n_chunks: int | None, expected: int) -> None:
    assert mt.chunk_count(n_tokens, 512, n_chunks) == expected


@pytest.mark.parametrize("bos", [None, 999])
def test_chunk_input_and_targets(bos: int | None) -> None:
    tokens = list(range(1000, 1000 + 5 * N_CTX))
    for chunk in range(5):
        start = chunk * N_CTX
        inp = mt.chunk_input(tokens, chunk, N_CTX, bos)
        assert inp[1:] == tokens[start + 1:start + N_CTX]
        assert inp[0] == (tokens[start] if bos is None else bos)
        targets = mt.chunk_targets(tokens, chunk, N_CTX)
        # logit row r (position first + r) predicts the token at position first + r + 1 of the chunk
        first = N_CTX // 2
        assert targets.tolist() == [tokens[start + first + r + 1] for r in range(mt.n_scored(N_CTX))]
        assert targets[-1] == tokens[start + N_CTX - 1]
    with pytest.raises(ValueError):
        mt.chunk_input(tokens, 5, N_CTX, bos)


def test_prepare_text_drops_one_trailing_newline() -> None:
    assert mt.prepare_text("a\n\n") == b"a\n"
    assert mt.prepare_text(b"a") == b"a"


# ------------------------------------------------------------------------------------ math


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def _logits(rng: np.random.Generator, rows: int = 40, vocab: int = 500, spread: float = 4.0) -> np.ndarray:
    return (rng.standard_normal((rows, vocab)) * spread).astype(np.float32)


def test_nll_matches_log_softmax() -> None:
    rng = np.random.default_rng(0)
    logits = _logits(rng)
    targets = rng.integers(0, logits.shape[1], len(logits))
    nll, top, _ = mt.nll_and_top(logits, targets)
    np.testing.assert_allclose(nll, -_log_softmax(logits)[np.arange(len(targets)), targets], rtol=1e-12)
    assert (top == logits.argmax(axis=1)).all()


def test_coded_log_probs_are_close_to_exact() -> None:
    rng = np.random.default_rng(1)
    logits = _logits(rng)
    exact = _log_softmax(logits)
    decoded = mt.code_log_probs(logits).log_probs()
    kept = exact > exact.max(axis=1, keepdims=True) - mt.LOG_PROB_RANGE
    # one code step is 16/65535 nats: rounding error at most half of it (plus float32 noise)
    assert np.abs(decoded - exact)[kept].max() < 0.6 * mt.LOG_PROB_RANGE / 65535


def test_kld_against_itself_is_zero_and_top1_agrees() -> None:
    rng = np.random.default_rng(2)
    logits = _logits(rng)
    targets = rng.integers(0, logits.shape[1], len(logits))
    stats = mt.TokenStats.empty()
    stats.add_chunk(logits, mt.code_log_probs(logits), targets)
    # llama.cpp's uint16 coding of the reference (half a step: 8/65535 nats) is first order in the KLD,
    # with either sign; it averages out over tokens.
    half_step = 0.5 * mt.LOG_PROB_RANGE / 65535
    assert np.abs(stats.kld[0]).max() < half_step
    assert abs(stats.kld[0].mean()) < 0.2 * half_step
    assert stats.same_top[0].all()


def test_kld_matches_exact_kld() -> None:
    rng = np.random.default_rng(3)
    base = _logits(rng)
    test = base + _logits(rng, spread=0.5)
    targets = rng.integers(0, base.shape[1], len(base))
    stats = mt.TokenStats.empty()
    stats.add_chunk(test, mt.code_log_probs(base), targets)
    lp, lq = _log_softmax(base), _log_softmax(test)
    exact = (np.exp(lp) * (lp - lq)).sum(axis=1)
    np.testing.assert_allclose(stats.kld[0], exact, rtol=1e-3, atol=1e-6)
    assert stats.same_top[0].mean() == (base.argmax(1) == test.argmax(1)).mean()


def test_statistics_like_llama_cpp() -> None:
    rng = np.random.default_rng(4)
    x = rng.exponential(size=1001)
    mean, unc = mt.mean_and_uncertainty(x)
    assert mean == pytest.approx(x.mean())
    assert unc == pytest.approx(x.std() / np.sqrt(len(x) - 1))
    s = np.sort(x)
    for f in (0.0, 0.01, 0.5, 0.99, 0.999, 1.0):
        assert mt.percentile(s, f) == pytest.approx(np.percentile(x, 100 * f))


def test_paired_kld_ratio_and_its_error() -> None:
    rng = np.random.default_rng(5)
    base = rng.exponential(0.1, size=20)  # chunk means: the text's difficulty varies a lot between chunks
    ratio, se = mt.paired_kld_ratio(0.9 * base, base)
    assert ratio == pytest.approx(0.9) and se == pytest.approx(0.0, abs=1e-12)  # pairing removes shared difficulty
    noisy = 0.9 * base * rng.normal(1.0, 0.05, size=20)
    ratio, se = mt.paired_kld_ratio(noisy, base)
    assert ratio == pytest.approx(noisy.sum() / base.sum())
    assert 0.0 < se < 0.05 and abs(ratio - 0.9) < 4 * se
    with pytest.raises(ValueError, match="equal"):
        mt.paired_kld_ratio([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="zero"):
        mt.paired_kld_ratio([0.1, 0.2], [0.0, 0.0])


# ------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_dir: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama (SentencePiece vocabulary that adds BOS) converted to F32 by hqq2gguf."""
    from hqq2gguf.convert import convert
    from hqq2gguf.options import ConvertOptions, OutType

    out = tmp_path_factory.mktemp("evaluate") / "tiny-f32.gguf"
    return convert(tiny_model_dir("llama2"), ConvertOptions(outtype=OutType.F32, output=out)).path


def test_model_against_itself(tiny_gguf: Path, tmp_path: Path) -> None:
    result = ev.evaluate(tiny_gguf, tiny_gguf, TEXT, n_ctx=N_CTX, n_chunks=N_CHUNKS, n_threads=2)
    assert result.n_chunks == N_CHUNKS
    assert result.n_tokens_scored == N_CHUNKS * mt.n_scored(N_CTX)
    assert abs(result.kld_mean) < 1e-5 and result.kld_max < 1e-4
    assert len(result.chunk_kld) == N_CHUNKS and sum(result.chunk_kld) / N_CHUNKS == pytest.approx(result.kld_mean)
    assert result.same_top == 1.0
    assert result.ppl == pytest.approx(result.ppl_ref, rel=1e-3)
    cached = ev.evaluate(tiny_gguf, tiny_gguf, TEXT, n_ctx=N_CTX, n_chunks=N_CHUNKS, n_threads=2,
                         ref_cache=tmp_path / "ref.logits")
    assert cached.kld_mean == pytest.approx(result.kld_mean, abs=1e-9)
    assert cached.chunk_kld == pytest.approx(result.chunk_kld, abs=1e-9)
    assert cached.ppl == pytest.approx(result.ppl, rel=1e-6)
    assert ev.ReferenceFile(tmp_path / "ref.logits").n_chunks == N_CHUNKS


def test_perplexity_matches_direct_computation(tiny_gguf: Path) -> None:
    from hqq2gguf.runtime import eval_logits, load_model

    # flash attention off on both sides (load_model's default): the same kernels, the same numbers
    got = ev.perplexity(tiny_gguf, TEXT, n_ctx=N_CTX, n_chunks=N_CHUNKS, n_threads=2, flash_attn=False)
    llm = load_model(tiny_gguf, n_ctx=N_CTX, n_threads=2)
    try:
        tokens = llm.tokenize(TEXT.rstrip("\n").encode(), add_bos=True, special=False)
        bos = llm.token_bos()
        assert tokens[0] == bos, "the tiny Llama vocabulary should add BOS"
        assert len(tokens) >= N_CHUNKS * N_CTX, f"TEXT tokenizes to only {len(tokens)} tokens"
        nll = []
        first = N_CTX // 2
        for c in range(N_CHUNKS):
            chunk = [bos] + tokens[c * N_CTX + 1:(c + 1) * N_CTX]
            lp = _log_softmax(eval_logits(llm, chunk))
            nll += [-lp[i, tokens[c * N_CTX + i + 1]] for i in range(first, N_CTX - 1)]
    finally:
        llm.close()
    assert got.n_tokens_scored == len(nll)
    assert got.ppl == pytest.approx(float(np.exp(np.mean(nll))), rel=1e-6)
