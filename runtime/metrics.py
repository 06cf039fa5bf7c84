"""llama-perplexity's per-token maths: chunking, scoring, log-prob coding and summary statistics.

Reference: tools/perplexity/perplexity.cpp (``perplexity``, ``kl_divergence``) in llama.cpp, vendored in
llama-cpp-python 0.3.36. This module is pure numpy and knows nothing of models: ``evaluate`` feeds it the
logits of each chunk. What is reproduced:

- corpus: the text with ONE trailing newline removed (``-f`` does that);
- chunks: ``n_chunk = min(n_chunks, n_tokens // n_ctx)`` consecutive windows ``tokens[i*n_ctx:(i+1)*n_ctx]``,
  the first token of a chunk replaced by BOS when the vocabulary adds BOS;
- scoring: only the second half: logits at positions ``first = n_ctx//2 .. n_ctx-2`` predict tokens
  ``first+1 .. n_ctx-1`` (``n_ctx - 1 - first`` = 255 tokens per 512-token chunk);
- reference log-probs are kept the way ``--kl-divergence-base`` stores them: per token, uint16 codes of
  the logits over ``[max(min_logit, max_logit - 16), max_logit]`` plus (scale, min_log_prob); the KLD sums
  ``p_base * (log p_base - log q)`` over tokens with ``log p_base > -16``; "same top p" compares the argmax
  of the test logits with the argmax of the coded reference; PPL(base) comes from the coded log-probs;
- statistics: mean ± ``sqrt(var/(n-1))`` (llama.cpp's ``mean_and_uncertainty``), percentiles by linear
  interpolation at ``fraction*(n-1)``, same-top ± ``sqrt(p(1-p)/(n-1))``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

LOG_PROB_RANGE = 16.0  # llama.cpp codes log-probs within 16 nats of the top one
ROWS_PER_BLOCK = 32  # tokens per vectorized block of the KLD (bounds float64 temporaries)


# --------------------------------------------------------------------------------------- chunking


def first_scored(n_ctx: int) -> int:
    """Position of the first logit row that is scored: the first half of a chunk is context only."""
    return n_ctx // 2


def n_scored(n_ctx: int) -> int:
    """Tokens scored per chunk: logits ``first .. n_ctx-2`` predict tokens ``first+1 .. n_ctx-1``."""
    return n_ctx - 1 - first_scored(n_ctx)


def chunk_count(n_tokens: int, n_ctx: int, n_chunks: int | None) -> int:
    """Chunks evaluated: all whole ``n_ctx`` windows, at most ``n_chunks`` (None or < 0: all)."""
    n_max = n_tokens // n_ctx
    return n_max if n_chunks is None or n_chunks < 0 else min(n_chunks, n_max)


def chunk_input(tokens: Sequence[int], chunk: int, n_ctx: int, bos: int | None) -> list[int]:
    """The ``n_ctx`` tokens fed for ``chunk``; the first replaced by ``bos`` unless ``bos`` is None."""
    window = list(tokens[chunk * n_ctx:(chunk + 1) * n_ctx])
    if len(window) != n_ctx:
        raise ValueError(f"chunk {chunk} needs tokens up to {(chunk + 1) * n_ctx}, the corpus has {len(tokens)}")
    if bos is not None:
        window[0] = bos
    return window


def chunk_targets(tokens: Sequence[int], chunk: int, n_ctx: int) -> np.ndarray:
    """The tokens predicted by the scored logit rows of ``chunk`` (the ORIGINAL tokens, never BOS)."""
    start = chunk * n_ctx + first_scored(n_ctx) + 1
    return np.asarray(tokens[start:(chunk + 1) * n_ctx], dtype=np.int64)


def prepare_text(text: str | bytes) -> bytes:
    """The bytes llama-perplexity tokenizes for ``-f FILE``: the file with one trailing newline removed."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    return data[:-1] if data.endswith(b"\n") else data


# --------------------------------------------------------------------------------------- per-token math


def nll_and_top(logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: negative log-likelihood of ``targets`` (float64), argmax (first on ties), and the row's
    log-softmax normalizer ``max + log(sum exp(l - max))``."""
    top = logits.argmax(axis=1)
    mx = logits[np.arange(len(logits)), top].astype(np.float64)
    lse = mx + np.log(np.exp(logits.astype(np.float64) - mx[:, None]).sum(axis=1))
    nll = lse - logits[np.arange(len(logits)), targets].astype(np.float64)
    return nll, top, lse


@dataclass(frozen=True)
class CodedLogProbs:
    """Reference log-probs of one chunk as llama.cpp codes them: ``log p = scale * code + min_log_prob``."""

    scale: np.ndarray  # float32 [n_rows]
    min_log_prob: np.ndarray  # float32 [n_rows]
    codes: np.ndarray  # uint16 [n_rows, n_vocab]

    def log_probs(self, rows: slice = slice(None)) -> np.ndarray:
        return (self.scale[rows, None].astype(np.float64) * self.codes[rows]
                + self.min_log_prob[rows, None].astype(np.float64))


def code_log_probs(logits: np.ndarray) -> CodedLogProbs:
    """llama.cpp's ``log_softmax(n_vocab, logits, uint16 * log_prob, tok)`` for every row."""
    logits = np.asarray(logits, dtype=np.float32)
    mx = logits.max(axis=1)
    mn = np.maximum(logits.min(axis=1), mx - np.float32(LOG_PROB_RANGE))
    log_sum_exp = np.log(np.exp(logits.astype(np.float64) - mx[:, None]).sum(axis=1)).astype(np.float32)
    min_log_prob = (mn - mx - log_sum_exp).astype(np.float32)
    scale = ((mx - mn) / np.float32(65535)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv_scale = np.where(scale > 0, np.float32(1) / scale, np.float32(0)).astype(np.float32)
    shifted = (logits - mn[:, None]) * inv_scale[:, None]
    codes = np.where(logits > mn[:, None], np.rint(shifted), 0).astype(np.uint16)
    return CodedLogProbs(scale, min_log_prob, codes)


@dataclass
class TokenStats:
    """Per-token statistics of the scored tokens, appended chunk by chunk."""

    nll: list[np.ndarray]
    nll_base: list[np.ndarray]
    kld: list[np.ndarray]
    same_top: list[np.ndarray]

    @classmethod
    def empty(cls) -> TokenStats:
        return cls([], [], [], [])

    def add_chunk(self, logits: np.ndarray, base: CodedLogProbs, targets: np.ndarray) -> None:
        """Compare one chunk's test logits with the coded reference log-probs."""
        nll, top, lse = nll_and_top(logits, targets)
        rows = np.arange(len(targets))
        nll_base = -(base.scale.astype(np.float64) * base.codes[rows, targets] + base.min_log_prob)
        top_base = base.codes.argmax(axis=1)
        kld = np.empty(len(targets))
        for r0 in range(0, len(targets), ROWS_PER_BLOCK):
            blk = slice(r0, r0 + ROWS_PER_BLOCK)
            lp_base = base.log_probs(blk)
            lq = logits[blk].astype(np.float64) - lse[blk, None]
            terms = np.where(lp_base > -LOG_PROB_RANGE, np.exp(lp_base) * (lp_base - lq), 0.0)
            kld[blk] = terms.sum(axis=1)
        self.nll.append(nll)
        self.nll_base.append(nll_base)
        self.kld.append(kld)
        self.same_top.append(top == top_base)


# --------------------------------------------------------------------------------------- statistics


def mean_and_uncertainty(values: np.ndarray) -> tuple[float, float]:
    """llama.cpp's ``mean_and_uncertainty``: mean and ``sqrt(var/(n-1))`` (0 for n <= 10)."""
    n = len(values)
    if n < 1:
        return 0.0, 0.0
    mean = float(values.mean())
    var = float((values * values).mean()) - mean * mean
    return mean, math.sqrt(var / (n - 1)) if var > 0 and n > 10 else 0.0


def paired_kld_ratio(test_chunks: Sequence[float], base_chunks: Sequence[float]) -> tuple[float, float]:
    """Mean-KLD ratio test/base of two files scored on the same chunks, and its standard error.

    The ratio estimator over chunks (``sum test / sum base``; error from the chunk-paired residuals
    ``test - ratio * base``): tokens within a chunk are correlated, chunks much less, and pairing removes the
    text's own difficulty that both files share."""
    t, b = np.asarray(test_chunks, np.float64), np.asarray(base_chunks, np.float64)
    if t.shape != b.shape or t.ndim != 1 or len(t) < 2:
        raise ValueError(f"need two equal lists of >= 2 chunk means, got {len(t)} and {len(b)}")
    if b.sum() <= 0:
        raise ValueError("the base file's KLD is zero: no ratio")
    ratio = float(t.sum() / b.sum())
    resid = t - ratio * b
    return ratio, float(resid.std(ddof=1) / math.sqrt(len(t)) / b.mean())


def percentile(sorted_values: np.ndarray, fraction: float) -> float:
    """llama.cpp's percentile: linear interpolation at ``fraction * (n - 1)`` of the sorted values."""
    if fraction <= 0:
        return float(sorted_values[0])
    if fraction >= 1:
        return float(sorted_values[-1])
    p = fraction * (len(sorted_values) - 1)
    i = int(p)
    p -= i
    return float((1 - p) * sorted_values[i] + p * sorted_values[min(i + 1, len(sorted_values) - 1)])


@dataclass(frozen=True)
class EvalResult:
    """Quality of ``test`` against ``reference`` on ``n_chunks`` x ``n_ctx`` tokens (second halves scored)."""

    test: str
    reference: str
    n_ctx: int
    n_chunks: int
    n_tokens_scored: int
    ppl: float
    ppl_unc: float
    ppl_ref: float
    ppl_ref_unc: float
    ln_ppl_ratio: float
    ln_ppl_ratio_unc: float
    kld_mean: float
    kld_unc: float
    kld_median: float
    kld_p99: float
    kld_p999: float
    kld_max: float
    same_top: float
    same_top_unc: float
    test_seconds: float
    ref_seconds: float
    chunk_kld: tuple[float, ...] = field(default=(), repr=False)
    """Mean KLD of each chunk's scored tokens, in chunk order: paired comparisons of two files on the same
    tokens (their spread is the evaluation's own uncertainty)."""

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(stats: TokenStats, *, test: str, reference: str, n_ctx: int, n_chunks: int,
              test_seconds: float = 0.0, ref_seconds: float = 0.0) -> EvalResult:
    """The llama-perplexity ``--kl-divergence`` summary of the collected per-token statistics."""
    nll, nll_base = np.concatenate(stats.nll), np.concatenate(stats.nll_base)
    kld, same = np.concatenate(stats.kld), np.concatenate(stats.same_top)
    n = len(nll)
    log_ppl, log_ppl_unc = mean_and_uncertainty(nll)
    log_base, log_base_unc = mean_and_uncertainty(nll_base)
    cov = (float((nll * nll_base).mean()) - log_ppl * log_base) / (n - 1) if n >= 10 else 0.0
    ratio_unc = math.sqrt(max(log_ppl_unc ** 2 + log_base_unc ** 2 - 2 * cov, 0.0))
    kld_mean, kld_unc = mean_and_uncertainty(kld)
    kld_sorted = np.sort(kld.astype(np.float32))
    p_top = float(same.mean())
    return EvalResult(
        test=test, reference=reference, n_ctx=n_ctx, n_chunks=n_chunks, n_tokens_scored=n,
        ppl=math.exp(log_ppl), ppl_unc=math.exp(log_ppl) * log_ppl_unc,
        ppl_ref=math.exp(log_base), ppl_ref_unc=math.exp(log_base) * log_base_unc,
        ln_ppl_ratio=log_ppl - log_base, ln_ppl_ratio_unc=ratio_unc,
        kld_mean=kld_mean, kld_unc=kld_unc, kld_median=percentile(kld_sorted, 0.5),
        kld_p99=percentile(kld_sorted, 0.99), kld_p999=percentile(kld_sorted, 0.999),
        kld_max=float(kld_sorted[-1]), same_top=p_top,
        same_top_unc=math.sqrt(p_top * (1 - p_top) / (n - 1)) if n > 1 else 0.0,
        test_seconds=test_seconds, ref_seconds=ref_seconds,
        chunk_kld=tuple(float(k.mean()) if len(k) else 0.0 for k in stats.kld),
    )


@dataclass(frozen=True)
class PerplexityResult:
    """Plain perplexity of one model (llama-perplexity without ``--kl-divergence``)."""

    model: str
    n_ctx: int
    n_chunks: int
    n_tokens_scored: int
    ppl: float
    ppl_unc: float
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def perplexity_result(model: str, n_ctx: int, n: int, nlls: list[np.ndarray], seconds: float) -> PerplexityResult:
    """The PerplexityResult of the per-chunk negative log-likelihoods ``nlls``."""
    nll = np.concatenate(nlls)
    log_ppl, unc = mean_and_uncertainty(nll)
    return PerplexityResult(model, n_ctx, n, len(nll), math.exp(log_ppl), math.exp(log_ppl) * unc, seconds)
