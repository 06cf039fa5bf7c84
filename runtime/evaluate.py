"""Perplexity and KL-divergence exactly as llama.cpp's ``llama-perplexity`` computes them.

Reference: tools/perplexity/perplexity.cpp (``perplexity``, ``kl_divergence``) in llama.cpp, vendored in
llama-cpp-python 0.3.36. What is reproduced, step by step:

- corpus: the text with ONE trailing newline removed (``-f`` does that), tokenized with the vocabulary's
  own add-BOS setting and without parsing special tokens (``common_tokenize(ctx, text, true)``);
- chunks: ``n_chunk = min(n_chunks, n_tokens // n_ctx)`` consecutive windows ``tokens[i*n_ctx:(i+1)*n_ctx]``,
  each evaluated from an empty KV cache; the first token of a chunk is replaced by BOS when the
  vocabulary adds BOS;
- scoring: only the second half: logits at positions ``first = n_ctx//2 .. n_ctx-2`` predict tokens
  ``first+1 .. n_ctx-1`` (``n_ctx - 1 - first`` = 255 tokens per 512-token chunk);
- reference log-probs are kept the way ``--kl-divergence-base`` stores them: per token, uint16 codes of
  the logits over ``[max(min_logit, max_logit - 16), max_logit]`` plus (scale, min_log_prob); the KLD sums
  ``p_base * (log p_base - log q)`` over tokens with ``log p_base > -16``; "same top p" compares the argmax
  of the test logits with the argmax of the coded reference; PPL(base) comes from the coded log-probs.
  The codes can be written to / read from a file in llama.cpp's own format (``_logits_`` header), so a
  reference computed once serves every test model (and llama-perplexity can read it);
- statistics: mean ± ``sqrt(var/(n-1))`` (llama.cpp's ``mean_and_uncertainty``), percentiles by linear
  interpolation at ``fraction*(n-1)``, same-top ± ``sqrt(p(1-p)/(n-1))``.

Per chunk only per-token statistics are kept; memory is a few ``n_ctx/2 x n_vocab`` arrays. No torch.
"""

from __future__ import annotations

import logging
import math
import struct
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO, Sequence

import numpy as np

logger = logging.getLogger(__name__)

LOGITS_MAGIC = b"_logits_"
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


# --------------------------------------------------------------------------------------- model


class ChunkModel:
    """A GGUF loaded in llama-cpp-python that returns the scored logit rows of one chunk at a time."""

    def __init__(self, path: Path | str, *, n_ctx: int = 512, n_threads: int | None = None,
                 flash_attn: bool = True) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self.path = Path(path)
        self.n_ctx = n_ctx
        # One chunk = one batch = one micro-batch; only the scored rows get logits (as llama-perplexity).
        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                                   n_threads=n_threads, n_threads_batch=n_threads, n_gpu_layers=0,
                                   logits_all=False, flash_attn=flash_attn, verbose=False)
        vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
        if llama_cpp.llama_vocab_get_add_eos(vocab):
            raise ValueError(f"{path}: the vocabulary adds EOS; llama-perplexity refuses such models")
        self.bos: int | None = int(llama_cpp.llama_vocab_bos(vocab)) if llama_cpp.llama_vocab_get_add_bos(vocab) else None
        self._batch = llama_cpp.llama_batch_init(n_ctx, 0, 1)

    def tokenize(self, text: str | bytes) -> list[int]:
        """The corpus tokens as llama-perplexity makes them (BOS only if the vocabulary adds it)."""
        return self.llm.tokenize(prepare_text(text), add_bos=True, special=False)

    def scored_logits(self, chunk_tokens: Sequence[int]) -> np.ndarray:
        """Logits of positions ``first .. n_ctx-2`` of a fresh evaluation of ``chunk_tokens``, float32
        [n_scored, n_vocab]."""
        lib, b, n = self._lib, self._batch, self.n_ctx
        if len(chunk_tokens) != n:
            raise ValueError(f"a chunk has {n} tokens, got {len(chunk_tokens)}")
        first = first_scored(n)
        lib.llama_memory_clear(lib.llama_get_memory(self.llm.ctx), True)
        b.n_tokens = n
        for pos, tok in enumerate(chunk_tokens):
            b.token[pos] = tok
            b.pos[pos] = pos
            b.n_seq_id[pos] = 1
            b.seq_id[pos][0] = 0
            b.logits[pos] = pos >= first
        rc = lib.llama_decode(self.llm.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc} for {self.path}")
        ptr = lib.llama_get_logits(self.llm.ctx)
        rows = np.ctypeslib.as_array(ptr, shape=((n - first) * self.n_vocab,))
        return rows.reshape(n - first, self.n_vocab)[: n_scored(n)].copy()

    def close(self) -> None:
        if self._batch is not None:
            self._lib.llama_batch_free(self._batch)
            self._batch = None
        self.llm.close()

    def __enter__(self) -> "ChunkModel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
    def empty(cls) -> "TokenStats":
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
    )


# --------------------------------------------------------------------------------------- reference file


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


def _row_values(n_vocab: int) -> int:
    """uint16 values per token row in a ``_logits_`` file: (scale, min_log_prob) as 4, then the codes."""
    return 2 * ((n_vocab + 1) // 2) + 4


def _write_coded(out: BinaryIO, coded: CodedLogProbs, n_vocab: int) -> None:
    rows = np.zeros((len(coded.scale), _row_values(n_vocab)), dtype=np.uint16)
    head = np.stack([coded.scale, coded.min_log_prob], axis=1).astype("<f4")
    rows[:, :4] = head.view("<u2")
    rows[:, 4:4 + n_vocab] = coded.codes
    out.write(rows.astype("<u2").tobytes())


class ReferenceFile:
    """A llama.cpp ``_logits_`` file (``llama-perplexity --kl-divergence-base``), memory-mapped."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as f:
            head = f.read(20)
        if len(head) < 20 or head[:8] != LOGITS_MAGIC:
            raise ValueError(f"{path} is not a llama.cpp log-probability file (no {LOGITS_MAGIC!r} header)")
        self.n_ctx, self.n_vocab, self.n_chunks = struct.unpack("<Iii", head[8:20])
        n_tok = self.n_ctx * self.n_chunks
        self.tokens = np.fromfile(self.path, dtype="<i4", count=n_tok, offset=20)
        nv, ns = _row_values(self.n_vocab), n_scored(self.n_ctx)
        expected = 20 + 4 * n_tok + 2 * nv * ns * self.n_chunks
        if self.path.stat().st_size != expected:
            raise ValueError(f"{path}: {self.path.stat().st_size} bytes, expected {expected} for n_ctx {self.n_ctx}, "
                             f"n_vocab {self.n_vocab}, {self.n_chunks} chunks")
        self._rows = np.memmap(self.path, dtype="<u2", mode="r", offset=20 + 4 * n_tok,
                               shape=(self.n_chunks, ns, nv))

    def chunk(self, i: int) -> CodedLogProbs:
        rows = np.asarray(self._rows[i])
        head = np.ascontiguousarray(rows[:, :4]).view("<f4")
        return CodedLogProbs(head[:, 0].copy(), head[:, 1].copy(), rows[:, 4:4 + self.n_vocab])


def _open_model(path: Path | str, n_ctx: int, n_threads: int | None, flash_attn: bool) -> ChunkModel:
    return ChunkModel(path, n_ctx=n_ctx, n_threads=n_threads, flash_attn=flash_attn)


def write_reference(ref_gguf: Path | str, text: str | bytes, out_path: Path | str, *, n_ctx: int = 512,
                    n_chunks: int | None = 40, n_threads: int | None = None,
                    flash_attn: bool = True) -> PerplexityResult:
    """Evaluate the reference on the corpus, write its coded log-probs (llama.cpp's ``_logits_`` format)
    to ``out_path`` and return its perplexity (computed from the uncoded logits)."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".part")
    t0 = time.perf_counter()
    nlls = []
    with _open_model(ref_gguf, n_ctx, n_threads, flash_attn) as model, open(tmp, "wb") as out:
        tokens = model.tokenize(text)
        n = chunk_count(len(tokens), n_ctx, n_chunks)
        if n < 1 or len(tokens) < 2 * n_ctx:
            raise ValueError(f"the corpus has {len(tokens)} tokens: at least {2 * n_ctx} needed for n_ctx {n_ctx}")
        out.write(LOGITS_MAGIC + struct.pack("<Iii", n_ctx, model.n_vocab, n))
        out.write(np.asarray(tokens[: n * n_ctx], dtype="<i4").tobytes())
        for i in range(n):
            logits = model.scored_logits(chunk_input(tokens, i, n_ctx, model.bos))
            nlls.append(nll_and_top(logits, chunk_targets(tokens, i, n_ctx))[0])
            _write_coded(out, code_log_probs(logits), model.n_vocab)
            _log_progress("reference", i, n, t0, nlls)
    tmp.replace(out_path)
    return _perplexity_result(str(ref_gguf), n_ctx, n, nlls, time.perf_counter() - t0)


def perplexity(model_gguf: Path | str, text: str | bytes, *, n_ctx: int = 512, n_chunks: int | None = 40,
               n_threads: int | None = None, flash_attn: bool = True) -> PerplexityResult:
    """llama-perplexity's perplexity of one model on the first ``n_chunks`` chunks of ``text``."""
    t0 = time.perf_counter()
    nlls = []
    with _open_model(model_gguf, n_ctx, n_threads, flash_attn) as model:
        tokens = model.tokenize(text)
        n = chunk_count(len(tokens), n_ctx, n_chunks)
        for i in range(n):
            logits = model.scored_logits(chunk_input(tokens, i, n_ctx, model.bos))
            nlls.append(nll_and_top(logits, chunk_targets(tokens, i, n_ctx))[0])
            _log_progress("perplexity", i, n, t0, nlls)
    return _perplexity_result(str(model_gguf), n_ctx, n, nlls, time.perf_counter() - t0)


def _perplexity_result(model: str, n_ctx: int, n: int, nlls: list[np.ndarray], seconds: float) -> PerplexityResult:
    nll = np.concatenate(nlls)
    log_ppl, unc = mean_and_uncertainty(nll)
    return PerplexityResult(model, n_ctx, n, len(nll), math.exp(log_ppl), math.exp(log_ppl) * unc, seconds)


def _log_progress(what: str, i: int, n: int, t0: float, nlls: list[np.ndarray]) -> None:
    ppl = math.exp(float(np.concatenate(nlls).mean()))
    logger.info("%s [%d/%d] PPL %.4f  %.1f s", what, i + 1, n, ppl, time.perf_counter() - t0)


# --------------------------------------------------------------------------------------- evaluation


def kl_divergence(test_gguf: Path | str, reference: ReferenceFile | Path | str, *, n_chunks: int | None = None,
                  n_threads: int | None = None, flash_attn: bool = True) -> EvalResult:
    """llama-perplexity ``--kl-divergence`` of ``test_gguf`` against a reference log-prob file: the test
    model sees the reference file's tokens (first ``n_chunks`` chunks; None: all of them)."""
    ref = reference if isinstance(reference, ReferenceFile) else ReferenceFile(reference)
    n = ref.n_chunks if n_chunks is None else min(n_chunks, ref.n_chunks)
    t0 = time.perf_counter()
    stats = TokenStats.empty()
    with _open_model(test_gguf, ref.n_ctx, n_threads, flash_attn) as model:
        if model.n_vocab != ref.n_vocab:
            raise ValueError(f"{test_gguf}: vocabulary of {model.n_vocab} tokens, the reference has {ref.n_vocab}")
        for i in range(n):
            logits = model.scored_logits(chunk_input(ref.tokens, i, ref.n_ctx, model.bos))
            stats.add_chunk(logits, ref.chunk(i), chunk_targets(ref.tokens, i, ref.n_ctx))
            _log_progress("kld", i, n, t0, stats.nll)
    return summarize(stats, test=str(test_gguf), reference=str(ref.path), n_ctx=ref.n_ctx, n_chunks=n,
                     test_seconds=time.perf_counter() - t0)


def evaluate(test_gguf: Path | str, ref_gguf: Path | str, text: str | bytes, *, n_ctx: int = 512,
             n_chunks: int | None = 40, n_threads: int | None = None, flash_attn: bool = True,
             ref_cache: Path | str | None = None) -> EvalResult:
    """KL-divergence, top-1 agreement and both perplexities of ``test_gguf`` against ``ref_gguf``.

    With ``ref_cache`` the reference log-probs are read from that ``_logits_`` file, written first when it
    is missing or was made for other settings (so the reference is evaluated once per corpus); without
    it both models are evaluated chunk by chunk side by side and nothing is written.
    """
    if ref_cache is not None:
        ref, _ = reference_cache(ref_gguf, text, ref_cache, n_ctx=n_ctx, n_chunks=n_chunks, n_threads=n_threads,
                                 flash_attn=flash_attn)
        result = kl_divergence(test_gguf, ref, n_chunks=n_chunks, n_threads=n_threads, flash_attn=flash_attn)
        return EvalResult(**{**result.to_dict(), "reference": str(ref_gguf)})
    t_ref = t_test = 0.0
    t_start = time.perf_counter()
    stats = TokenStats.empty()
    with _open_model(ref_gguf, n_ctx, n_threads, flash_attn) as ref, \
            _open_model(test_gguf, n_ctx, n_threads, flash_attn) as test:
        if test.n_vocab != ref.n_vocab:
            raise ValueError(f"{test_gguf}: vocabulary of {test.n_vocab} tokens, {ref_gguf} has {ref.n_vocab}")
        tokens = ref.tokenize(text)
        n = chunk_count(len(tokens), n_ctx, n_chunks)
        for i in range(n):
            t0 = time.perf_counter()
            base = code_log_probs(ref.scored_logits(chunk_input(tokens, i, n_ctx, ref.bos)))
            t1 = time.perf_counter()
            logits = test.scored_logits(chunk_input(tokens, i, n_ctx, test.bos))
            t_ref, t_test = t_ref + t1 - t0, t_test + time.perf_counter() - t1
            stats.add_chunk(logits, base, chunk_targets(tokens, i, n_ctx))
            _log_progress("kld", i, n, t_start, stats.nll)
    return summarize(stats, test=str(test_gguf), reference=str(ref_gguf), n_ctx=n_ctx, n_chunks=n,
                     test_seconds=t_test, ref_seconds=t_ref)


def reference_cache(ref_gguf: Path | str, text: str | bytes, cache: Path | str, *, n_ctx: int = 512,
                    n_chunks: int | None = 40, n_threads: int | None = None,
                    flash_attn: bool = True) -> tuple[ReferenceFile, PerplexityResult]:
    """The reference log-prob file at ``cache`` and the reference's perplexity, reused when the file was
    made from ``ref_gguf`` (same path, size and mtime) with the same ``n_ctx`` and ``n_chunks``, otherwise
    (re)written. The sidecar ``<cache>.json`` records the source and the perplexity."""
    import json

    cache = Path(cache)
    stamp = cache.with_name(cache.name + ".json")
    st = Path(ref_gguf).stat()
    source = {"gguf": str(Path(ref_gguf).resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns,
              "n_ctx": n_ctx, "n_chunks": n_chunks}
    if cache.exists() and stamp.exists():
        saved = json.loads(stamp.read_text())
        if saved.get("source") == source:
            return ReferenceFile(cache), PerplexityResult(**saved["perplexity"])
    ppl = write_reference(ref_gguf, text, cache, n_ctx=n_ctx, n_chunks=n_chunks, n_threads=n_threads,
                          flash_attn=flash_attn)
    stamp.write_text(json.dumps({"source": source, "perplexity": ppl.to_dict()}, indent=1) + "\n")
    return ReferenceFile(cache), ppl
