"""Column importance from text: the model's own (self-calibration) or the user's, through llama.cpp.

    stats, text = collect_activations(gguf_path, SelfText(seed=0))       # the model writes; watched as it writes
    stats, text = collect_activations(gguf_path, Path("calib.txt"))       # the user's text, read

Reading is llama-imatrix's: the text is tokenized (BOS added where the vocabulary adds it), cut into chunks
of ``chunk`` tokens (the last partial chunk dropped), each chunk's first token replaced by BOS, every chunk
evaluated from an empty cache with all logits; the statistics are :class:`~.collect.ImatrixStats`.

Writing (self-calibration): sequences start from a random ordinary vocabulary token after BOS (LLM-QAT),
continue greedily for ``greedy_first`` tokens and are then sampled, each sequence at one of
``temperatures`` in turn, ``batch`` sequences side by side. The statistics are collected from the very
forward passes that write the text (every token the model reads as it writes, each sequence in its own
context): the same kind of rows a second reading would give, at half the cost. Deterministic for a given
``seed``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hqq2gguf.calibrate.collect import ImatrixCollector, ImatrixStats
from hqq2gguf.calibrate.covariance import CovarianceSink
from hqq2gguf.calibrate.llama_run import LlamaRunner
from hqq2gguf.errors import InputError
from hqq2gguf.progress import Progress

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SelfText:
    """How the model writes its own calibration text. The defaults are what the KLD tables chose
    (benchmarks/results/calibration_*.md): 1,024 tokens bought as much as 8,192 on SmolLM2-135M and Gemma-3-270M
    (and as much as real text), and sixteen 64-token sequences side by side cost a fraction of four 256-token
    ones on a large model (one weight read per step serves 16 tokens)."""

    n_sequences: int = 16
    n_tokens: int = 64
    temperatures: tuple[float, ...] = (0.6, 0.8, 1.0, 1.2)
    greedy_first: int = 3
    seed: int = 0
    batch: int = 16

    def __post_init__(self) -> None:
        if self.n_sequences < 1 or self.n_tokens < 1 or self.batch < 1 or not self.temperatures:
            raise ValueError(f"degenerate self-calibration settings: {self}")

    def provenance(self) -> dict[str, object]:
        return {"sequences": self.n_sequences, "tokens_per_sequence": self.n_tokens,
                "temperatures": list(self.temperatures), "greedy_first": self.greedy_first, "seed": self.seed,
                "starts": "random vocabulary token", "collected": "while writing"}


@dataclass(frozen=True)
class CalibrationText:
    """The text importance was measured on: ``n_chunks`` pieces (chunks read, or sequences written) of at most
    ``chunk`` tokens, ``tokens`` in all."""

    text: str
    n_chunks: int
    chunk: int
    tokens: int
    sequences: tuple[tuple[int, ...], ...] = ()
    """The token sequences the model wrote (self-calibration; each its start token, then what followed)."""

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def collect_activations(model: Path, source: SelfText | Path, *, chunk: int = 512, threads: int | None = None,
                        process_output: bool = False,
                        covariance: CovarianceSink | None = None) -> tuple[ImatrixStats, CalibrationText]:
    """llama-imatrix's statistics of ``model`` (a GGUF llama.cpp can run) over ``source``'s text: the model's own,
    watched while it writes, or a file's, read in chunks of ``chunk`` tokens. ``covariance``: also every 2-D
    matrix's input rows, added there."""
    if isinstance(source, SelfText):
        return _while_writing(model, source, threads, process_output, covariance)
    collector = ImatrixCollector(process_output=process_output, covariance=covariance)
    with LlamaRunner(model, n_ctx=chunk, n_batch=max(chunk, 512), threads=threads,
                     eval_callback=collector.callback) as llm:
        collector.active = False
        text = read_text(source)
        chunks = chunk_tokens(llm, text, chunk, where=source)
        collector.active = True
        t0 = time.perf_counter()
        with Progress(len(chunks), "calibration: reading") as progress:
            for tokens in chunks:
                llm.evaluate(tokens)
                _check(collector, model)
                progress.update(1)
    stats = collector.stats
    stats.chunks, stats.chunk_size = len(chunks), chunk
    logger.info("calibration: %d chunks of %d tokens, %d matrices (%.1f s)", len(chunks), chunk, len(stats.sums),
                time.perf_counter() - t0)
    return stats, CalibrationText(text, len(chunks), chunk, len(chunks) * chunk)


def _while_writing(model: Path, cfg: SelfText, threads: int | None, process_output: bool,
                   covariance: CovarianceSink | None) -> tuple[ImatrixStats, CalibrationText]:
    collector = ImatrixCollector(process_output=process_output, min_rows=1, covariance=covariance)
    with LlamaRunner(model, n_ctx=cfg.n_tokens + 8, n_seq=cfg.batch, threads=threads,
                     eval_callback=collector.callback) as llm:
        t0 = time.perf_counter()
        n_before = llm.n_decoded
        bodies = write_sequences(llm, cfg, check=lambda: _check(collector, model))
        text, n_tokens = joined_text(llm, bodies), llm.n_decoded - n_before
    stats = collector.stats
    stats.chunks, stats.chunk_size = cfg.n_sequences, cfg.n_tokens
    logger.info("calibration: %d sequences, %d tokens read while written, %d matrices (%.1f s)", cfg.n_sequences,
                n_tokens, len(stats.sums), time.perf_counter() - t0)
    return stats, CalibrationText(text, cfg.n_sequences, cfg.n_tokens, n_tokens, tuple(map(tuple, bodies)))


def _check(collector: ImatrixCollector, model: Path) -> None:
    """Raise what the eval callback caught (it must not unwind through C): Ctrl-C stays Ctrl-C."""
    if isinstance(collector.error, KeyboardInterrupt):
        raise KeyboardInterrupt
    if collector.error is not None:
        raise InputError(f"cannot collect activations: {collector.error}", file=model)


def joined_text(llm: LlamaRunner, bodies: list[list[int]]) -> str:
    """Written token sequences as text, separated by blank lines."""
    texts = [b"".join(llm.piece(t) for t in body).decode("utf-8", errors="replace") for body in bodies]
    return "\n\n".join(t.strip() for t in texts) + "\n"


def write_sequences(llm: LlamaRunner, cfg: SelfText, *, check: Callable[[], None] = lambda: None,
                    what: str = "calibration: writing") -> list[list[int]]:
    """The model's own token sequences (each: its random start token, then what the model wrote after it)."""
    rng = np.random.default_rng(cfg.seed)
    plain = llm.plain_tokens()
    if plain.size == 0:
        raise InputError("the vocabulary has no ordinary text token to start self-written text from: give "
                         "--calibration FILE (your own text) or --calibration none", file=llm.path)
    starts = rng.choice(plain, size=cfg.n_sequences)
    bodies = []
    with Progress(cfg.n_sequences * cfg.n_tokens, what) as progress:
        def step(n: int) -> None:
            check()
            progress.update(n)

        for first in range(0, cfg.n_sequences, cfg.batch):
            group = range(first, min(first + cfg.batch, cfg.n_sequences))
            prompts = [([llm.bos] if llm.add_bos else []) + [int(starts[i])] for i in group]
            temps = [cfg.temperatures[i % len(cfg.temperatures)] for i in group]
            seqs = llm.generate(prompts, cfg.n_tokens, temps, rng, greedy_first=cfg.greedy_first,
                                progress=step)
            bodies += [seq[len(prompt) - 1:] for prompt, seq in zip(prompts, seqs)]
    return bodies


def read_text(path: Path) -> str:
    """A calibration text file: UTF-8 text, refused with the reason when empty or binary."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read the calibration text: {e.strerror or e}", file=path) from e
    if b"\x00" in data:
        raise InputError("the calibration text is binary (it holds NUL bytes)", file=path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"the calibration text is not UTF-8 (byte {e.start})", file=path) from None
    if not text.strip():
        raise InputError("the calibration text is empty", file=path)
    return text


def chunk_tokens(llm: LlamaRunner, text: str, chunk: int, *, where: Path | None = None) -> list[list[int]]:
    """llama-imatrix's chunks: ``chunk`` tokens each, the first one replaced by BOS where the vocabulary adds
    it; at least one whole chunk is needed."""
    tokens = llm.tokenize(text, add_special=True)
    n = len(tokens) // chunk
    if n == 0:
        raise InputError(f"the calibration text is {len(tokens)} tokens long, shorter than one chunk of {chunk}",
                         file=where)
    chunks = [tokens[i * chunk:(i + 1) * chunk] for i in range(n)]
    if llm.add_bos:
        for c in chunks:
            c[0] = llm.bos
    return chunks
