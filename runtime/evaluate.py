"""Perplexity and KL-divergence exactly as llama.cpp's ``llama-perplexity`` computes them: the model loop.

The maths (chunking, scoring, log-prob coding, statistics) is in :mod:`hqq2gguf.runtime.metrics`; this
module feeds it from llama-cpp-python. What the loop reproduces of tools/perplexity/perplexity.cpp:

- the corpus is tokenized with the vocabulary's own add-BOS setting and without parsing special tokens
  (``common_tokenize(ctx, text, true)``);
- every chunk is evaluated from an empty KV cache as one batch, logits requested only for the scored rows;
- the reference log-probs can be written to / read from a file in llama.cpp's own ``_logits_`` format
  (``--kl-divergence-base``), so a reference computed once serves every test model (and llama-perplexity
  can read it).

``n_gpu_layers`` offloads layers when the llama-cpp-python build can (``-1``: all of them); the
reference and the test model may sit on different devices (``ref_n_gpu_layers``), which is how
``validate --compare-devices`` measures CPU-vs-CUDA agreement. Per chunk only per-token statistics are
kept; memory is a few ``n_ctx/2 x n_vocab`` arrays. No torch.
"""

from __future__ import annotations

import json
import logging
import math
import struct
import time
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from hqq2gguf.runtime.metrics import (
    CodedLogProbs,
    EvalResult,
    PerplexityResult,
    TokenStats,
    chunk_count,
    chunk_input,
    chunk_targets,
    code_log_probs,
    first_scored,
    n_scored,
    nll_and_top,
    perplexity_result,
    prepare_text,
    summarize,
)

logger = logging.getLogger(__name__)

LOGITS_MAGIC = b"_logits_"

# --------------------------------------------------------------------------------------- model


class ChunkModel:
    """A GGUF loaded in llama-cpp-python that returns the scored logit rows of one chunk at a time."""

    def __init__(self, path: Path | str, *, n_ctx: int = 512, n_threads: int | None = None,
                 flash_attn: bool = True, n_gpu_layers: int = 0) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self.path = Path(path)
        self.n_ctx = n_ctx
        # One chunk = one batch = one micro-batch; only the scored rows get logits (as llama-perplexity).
        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                                   n_threads=n_threads, n_threads_batch=n_threads, n_gpu_layers=n_gpu_layers,
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

    def __enter__(self) -> ChunkModel:  # noqa: PYI034 (typing.Self needs Python 3.11)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------- reference file

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


def _open_model(path: Path | str, n_ctx: int, n_threads: int | None, flash_attn: bool,
                n_gpu_layers: int = 0) -> ChunkModel:
    return ChunkModel(path, n_ctx=n_ctx, n_threads=n_threads, flash_attn=flash_attn, n_gpu_layers=n_gpu_layers)


def corpus_chunks(tokens: Sequence[int], n_ctx: int, n_chunks: int | None) -> int:
    """The number of chunks of the corpus; llama-perplexity refuses fewer than ``2 * n_ctx`` tokens, and so
    does this (with the numbers, so that the caller can pick a longer text or a smaller context)."""
    n = chunk_count(len(tokens), n_ctx, n_chunks)
    if n < 1 or len(tokens) < 2 * n_ctx:
        raise ValueError(f"the text has {len(tokens)} tokens: at least {2 * n_ctx} are needed for a context of "
                         f"{n_ctx}")
    return n


def write_reference(ref_gguf: Path | str, text: str | bytes, out_path: Path | str, *, n_ctx: int = 512,
                    n_chunks: int | None = 40, n_threads: int | None = None, flash_attn: bool = True,
                    n_gpu_layers: int = 0) -> PerplexityResult:
    """Evaluate the reference on the corpus, write its coded log-probs (llama.cpp's ``_logits_`` format)
    to ``out_path`` and return its perplexity (computed from the uncoded logits)."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".part")
    t0 = time.perf_counter()
    nlls = []
    with _open_model(ref_gguf, n_ctx, n_threads, flash_attn, n_gpu_layers) as model, open(tmp, "wb") as out:
        tokens = model.tokenize(text)
        n = corpus_chunks(tokens, n_ctx, n_chunks)
        out.write(LOGITS_MAGIC + struct.pack("<Iii", n_ctx, model.n_vocab, n))
        out.write(np.asarray(tokens[: n * n_ctx], dtype="<i4").tobytes())
        for i in range(n):
            logits = model.scored_logits(chunk_input(tokens, i, n_ctx, model.bos))
            nlls.append(nll_and_top(logits, chunk_targets(tokens, i, n_ctx))[0])
            _write_coded(out, code_log_probs(logits), model.n_vocab)
            _log_progress("reference", i, n, t0, nlls)
    tmp.replace(out_path)
    return perplexity_result(str(ref_gguf), n_ctx, n, nlls, time.perf_counter() - t0)


def perplexity(model_gguf: Path | str, text: str | bytes, *, n_ctx: int = 512, n_chunks: int | None = 40,
               n_threads: int | None = None, flash_attn: bool = True, n_gpu_layers: int = 0) -> PerplexityResult:
    """llama-perplexity's perplexity of one model on the first ``n_chunks`` chunks of ``text``."""
    t0 = time.perf_counter()
    nlls = []
    with _open_model(model_gguf, n_ctx, n_threads, flash_attn, n_gpu_layers) as model:
        tokens = model.tokenize(text)
        n = corpus_chunks(tokens, n_ctx, n_chunks)
        for i in range(n):
            logits = model.scored_logits(chunk_input(tokens, i, n_ctx, model.bos))
            nlls.append(nll_and_top(logits, chunk_targets(tokens, i, n_ctx))[0])
            _log_progress("perplexity", i, n, t0, nlls)
    return perplexity_result(str(model_gguf), n_ctx, n, nlls, time.perf_counter() - t0)


def _log_progress(what: str, i: int, n: int, t0: float, nlls: list[np.ndarray]) -> None:
    ppl = math.exp(float(np.concatenate(nlls).mean()))
    logger.info("%s [%d/%d] PPL %.4f  %.1f s", what, i + 1, n, ppl, time.perf_counter() - t0)


# --------------------------------------------------------------------------------------- evaluation


def kl_divergence(test_gguf: Path | str, reference: ReferenceFile | Path | str, *, n_chunks: int | None = None,
                  n_threads: int | None = None, flash_attn: bool = True, n_gpu_layers: int = 0) -> EvalResult:
    """llama-perplexity ``--kl-divergence`` of ``test_gguf`` against a reference log-prob file: the test
    model sees the reference file's tokens (first ``n_chunks`` chunks; None: all of them)."""
    ref = reference if isinstance(reference, ReferenceFile) else ReferenceFile(reference)
    n = ref.n_chunks if n_chunks is None else min(n_chunks, ref.n_chunks)
    t0 = time.perf_counter()
    stats = TokenStats.empty()
    with _open_model(test_gguf, ref.n_ctx, n_threads, flash_attn, n_gpu_layers) as model:
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
             ref_cache: Path | str | None = None, n_gpu_layers: int = 0,
             ref_n_gpu_layers: int | None = None) -> EvalResult:
    """KL-divergence, top-1 agreement and both perplexities of ``test_gguf`` against ``ref_gguf``.

    With ``ref_cache`` the reference log-probs are read from that ``_logits_`` file, written first when it
    is missing or was made for other settings (so the reference is evaluated once per corpus); without
    it both models are evaluated chunk by chunk side by side and nothing is written. The test model gets
    ``n_gpu_layers``, the reference ``ref_n_gpu_layers`` (None: the same).
    """
    ref_layers = n_gpu_layers if ref_n_gpu_layers is None else ref_n_gpu_layers
    if ref_cache is not None:
        ref, _ = reference_cache(ref_gguf, text, ref_cache, n_ctx=n_ctx, n_chunks=n_chunks, n_threads=n_threads,
                                 flash_attn=flash_attn, n_gpu_layers=ref_layers)
        result = kl_divergence(test_gguf, ref, n_chunks=n_chunks, n_threads=n_threads, flash_attn=flash_attn,
                               n_gpu_layers=n_gpu_layers)
        return EvalResult(**{**result.to_dict(), "reference": str(ref_gguf)})
    t_ref = t_test = 0.0
    t_start = time.perf_counter()
    stats = TokenStats.empty()
    with _open_model(ref_gguf, n_ctx, n_threads, flash_attn, ref_layers) as ref, \
            _open_model(test_gguf, n_ctx, n_threads, flash_attn, n_gpu_layers) as test:
        if test.n_vocab != ref.n_vocab:
            raise ValueError(f"{test_gguf}: vocabulary of {test.n_vocab} tokens, {ref_gguf} has {ref.n_vocab}")
        tokens = ref.tokenize(text)
        n = corpus_chunks(tokens, n_ctx, n_chunks)
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
                    n_chunks: int | None = 40, n_threads: int | None = None, flash_attn: bool = True,
                    n_gpu_layers: int = 0) -> tuple[ReferenceFile, PerplexityResult]:
    """The reference log-prob file at ``cache`` and the reference's perplexity, reused when the file was
    made from ``ref_gguf`` (same path, size and mtime) with the same ``n_ctx`` and ``n_chunks``, otherwise
    (re)written. The sidecar ``<cache>.json`` records the source and the perplexity."""
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
                          flash_attn=flash_attn, n_gpu_layers=n_gpu_layers)
    stamp.write_text(json.dumps({"source": source, "perplexity": ppl.to_dict()}, indent=1) + "\n")
    return ReferenceFile(cache), ppl
