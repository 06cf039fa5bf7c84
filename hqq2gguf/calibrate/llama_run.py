"""llama.cpp (through llama-cpp-python's C API) as the engine of calibration: batched generation, and chunks
evaluated with every token's logits while an eval callback watches the matrix multiplications.

    with LlamaRunner(gguf_path, n_ctx=512, n_seq=16, eval_callback=collector.callback) as llm:
        tokens = llm.tokenize(text)
        llm.evaluate(tokens[:512])                          # one chunk, as llama-imatrix evaluates it
        seqs = llm.generate(starts, n_tokens=256, temperatures=[0.8] * 16, rng=rng)

Works for every GGUF llama.cpp can run; the model is memory-mapped, so memory is the model once plus the KV
cache of one batch of sequences.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from hqq2gguf.errors import InputError, ResourceError

logger = logging.getLogger(__name__)


class LlamaRunner:
    """One model and one context, freed on exit."""

    def __init__(self, path: Path, *, n_ctx: int, n_seq: int = 1, n_batch: int = 512,
                 threads: int | None = None, eval_callback: object | None = None) -> None:
        import llama_cpp as ll

        self._ll = ll
        self.path = Path(path)
        _quiet_logs(ll)
        mparams = ll.llama_model_default_params()
        self.model = ll.llama_model_load_from_file(str(self.path).encode(), mparams)
        if not self.model:
            raise InputError("llama.cpp cannot load this GGUF for calibration", file=self.path)
        cparams = ll.llama_context_default_params()
        cparams.n_ctx = n_ctx * n_seq
        cparams.n_batch = cparams.n_ubatch = max(n_batch, n_seq)
        cparams.n_seq_max = n_seq
        cparams.kv_unified = True
        cparams.n_threads = cparams.n_threads_batch = threads or max(1, os.cpu_count() or 1)
        if eval_callback is not None:
            cparams.cb_eval = eval_callback
            cparams.cb_eval_user_data = None
        self.ctx = ll.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            ll.llama_model_free(self.model)
            raise ResourceError(f"llama.cpp cannot make a context of {n_ctx} x {n_seq} tokens for calibration",
                                file=self.path)
        self.vocab = ll.llama_model_get_vocab(self.model)
        self.n_vocab = ll.llama_vocab_n_tokens(self.vocab)
        self.n_batch = cparams.n_batch
        self.add_bos = bool(ll.llama_vocab_get_add_bos(self.vocab))
        self.bos = ll.llama_vocab_bos(self.vocab)
        self.n_decoded = 0  # tokens decoded so far (what an eval callback has watched)

    def __enter__(self) -> LlamaRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self._ll.llama_free(self.ctx)
        self._ll.llama_model_free(self.model)

    # --- vocabulary -----------------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        n_max = len(data) + 16
        buf = (self._ll.llama_token * n_max)()
        n = self._ll.llama_tokenize(self.vocab, data, len(data), buf, n_max, add_special, False)
        if n < 0:
            buf = (self._ll.llama_token * -n)()
            n = self._ll.llama_tokenize(self.vocab, data, len(data), buf, -n, add_special, False)
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(256)
        n = self._ll.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        return buf.raw[:max(n, 0)]

    def is_eog(self, token: int) -> bool:
        return bool(self._ll.llama_vocab_is_eog(self.vocab, token))

    def plain_tokens(self) -> np.ndarray:
        """Token ids that are ordinary text (not control, unknown, unused or byte tokens): generation starts."""
        ll = self._ll
        bad = (ll.LLAMA_TOKEN_ATTR_CONTROL | ll.LLAMA_TOKEN_ATTR_UNKNOWN | ll.LLAMA_TOKEN_ATTR_UNUSED
               | ll.LLAMA_TOKEN_ATTR_BYTE | ll.LLAMA_TOKEN_ATTR_UNDEFINED)
        ok = [t for t in range(self.n_vocab)
              if not ll.llama_vocab_get_attr(self.vocab, t) & bad and self.piece(t).strip()]
        return np.array(ok, dtype=np.int32)

    # --- evaluation -----------------------------------------------------------------------------------

    def evaluate(self, tokens: Sequence[int]) -> None:
        """One chunk from position 0 with a clear cache, every token's logits computed (so that llama.cpp does
        not skip the last layer's feed-forward for tokens without output), in batches of ``n_batch``."""
        self._clear()
        for start in range(0, len(tokens), self.n_batch):
            part = tokens[start:start + self.n_batch]
            self._decode([(t, start + i, 0, True) for i, t in enumerate(part)])

    def generate(self, starts: Sequence[Sequence[int]], n_tokens: int, temperatures: Sequence[float],
                 rng: np.random.Generator, *, greedy_first: int = 0,
                 progress: Callable[[int], None] | None = None) -> list[list[int]]:
        """Continue every start (one sequence each, side by side in one batch) by up to ``n_tokens`` tokens,
        sampled at that sequence's temperature (greedy for its first ``greedy_first``); a sequence stops at
        an end-of-generation token. Deterministic for a given ``rng`` state."""
        self._clear()
        seqs = [list(s) for s in starts]
        entries = [(t, i, s, i == len(seq) - 1) for s, seq in enumerate(seqs) for i, t in enumerate(seq)]
        if not all(seqs) or len(entries) > self.n_batch:
            raise ValueError(f"starts must be non-empty and hold at most {self.n_batch} tokens in all")
        active = list(range(len(seqs)))
        for step in range(n_tokens):
            rows = self._decode(entries)
            entries = []
            for row, s in zip(rows, active):
                token = self._sample(row, temperatures[s] if step >= greedy_first else 0.0, rng)
                if self.is_eog(token):
                    continue
                seqs[s].append(token)
                entries.append((token, len(seqs[s]) - 1, s, True))
            active = [e[2] for e in entries]
            if progress is not None:
                progress(len(active))
            if not active:
                break
        return seqs

    def _sample(self, row: int, temperature: float, rng: np.random.Generator) -> int:
        logits = np.ctypeslib.as_array(self._ll.llama_get_logits_ith(self.ctx, row), shape=(self.n_vocab,))
        if temperature <= 0:
            return int(np.argmax(logits))
        z = logits.astype(np.float64) / temperature
        p = np.exp(z - z.max())
        return int(rng.choice(self.n_vocab, p=p / p.sum()))

    def _clear(self) -> None:
        self._ll.llama_memory_clear(self._ll.llama_get_memory(self.ctx), True)

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> list[int]:
        """Decode (token, position, sequence, wants logits) entries, in batches; the batch rows with logits."""
        ll = self._ll
        rows = []
        for start in range(0, len(entries), self.n_batch):
            part = entries[start:start + self.n_batch]
            batch = ll.llama_batch_init(len(part), 0, 1)
            try:
                for i, (token, pos, seq, logits) in enumerate(part):
                    batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
                    batch.seq_id[i][0], batch.logits[i] = seq, logits
                batch.n_tokens = len(part)
                status = ll.llama_decode(self.ctx, batch)
                self.n_decoded += len(part)
            finally:
                ll.llama_batch_free(batch)
            if status != 0:
                raise ResourceError(f"llama.cpp could not decode a batch of {len(part)} tokens (status {status})",
                                    file=self.path)
            rows = [i for i, e in enumerate(part) if e[3]]  # logits rows of the last part only
        return rows


def _quiet_logs(ll: object) -> None:
    """llama.cpp's own log lines only at DEBUG (they go straight to stderr otherwise)."""
    if getattr(_quiet_logs, "callback", None) is None:
        def log(level: int, text: bytes, user_data: object) -> None:
            logger.debug("llama.cpp: %s", text.decode("utf-8", errors="replace").rstrip())

        _quiet_logs.callback = ll.llama_log_callback(log)  # type: ignore[attr-defined]
        ll.llama_log_set(_quiet_logs.callback, ctypes.c_void_p(0))
