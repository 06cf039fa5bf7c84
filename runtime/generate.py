"""Text generation and chat with llama-cpp-python, streamed token by token.

Chat goes through the GGUF's own ``tokenizer.chat_template`` (llama-cpp-python renders the embedded Jinja
template when the file has one), so what the model sees is what its authors trained it on; a file without
a template gets a warning, because llama-cpp-python then falls back to a generic format the model may
never have seen. Sampling is one frozen dataclass; ``temperature=0`` is greedy decoding, which makes a
run reproducible whatever the seed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hqq2gguf.runtime.llama import load_model

from hqq2gguf.errors import OptionError

logger = logging.getLogger(__name__)

CHAT_TEMPLATE_KEY = "tokenizer.chat_template"


@dataclass(frozen=True)
class Sampling:
    """How tokens are drawn. ``temperature == 0``: always the most likely token (deterministic)."""

    max_tokens: int = 256
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    repeat_penalty: float = 1.0
    seed: int | None = None
    """Seed of the sampler; None: a fresh one per call. Irrelevant when ``temperature == 0``."""

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise OptionError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise OptionError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise OptionError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise OptionError(f"top_k must be >= 0, got {self.top_k}")

    @property
    def deterministic(self) -> bool:
        return self.temperature == 0

    def kwargs(self) -> dict:
        """Keyword arguments of llama-cpp-python's ``create_completion`` / ``create_chat_completion``."""
        kw = {"max_tokens": self.max_tokens, "temperature": self.temperature, "top_k": self.top_k,
              "top_p": self.top_p, "repeat_penalty": self.repeat_penalty}
        if self.seed is not None:
            kw["seed"] = self.seed
        return kw


def open_chat_model(path: Path | str, *, n_ctx: int = 2048, n_gpu_layers: int = 0, n_threads: int | None = None,
                    seed: int | None = None):
    """A model for generation: no per-position logits kept (they cost n_ctx x n_vocab floats)."""
    return load_model(path, n_ctx=n_ctx, n_gpu_layers=n_gpu_layers, n_threads=n_threads, logits_all=False,
                      seed=1234 if seed is None else seed)


def chat_template(llm) -> str | None:
    """The GGUF's embedded Jinja chat template, or None."""
    return llm.metadata.get(CHAT_TEMPLATE_KEY)


def warn_without_template(llm, path: Path | str) -> None:
    if chat_template(llm) is None:
        logger.warning("%s has no %s: llama-cpp-python falls back to its generic %r format, which this model "
                       "may not have been trained on", path, CHAT_TEMPLATE_KEY, llm.chat_format)


def stream_completion(llm, prompt: str, sampling: Sampling = Sampling()) -> Iterator[str]:
    """The continuation of ``prompt`` (plain text, no template), piece by piece as it is generated."""
    for chunk in llm.create_completion(prompt, stream=True, **sampling.kwargs()):
        text = chunk["choices"][0]["text"]
        if text:
            yield text


def stream_chat(llm, messages: list[dict[str, str]], sampling: Sampling = Sampling()) -> Iterator[str]:
    """The assistant's reply to ``messages`` (rendered with the embedded chat template), piece by piece."""
    for chunk in llm.create_chat_completion(messages=messages, stream=True, **sampling.kwargs()):
        text = chunk["choices"][0]["delta"].get("content")
        if text:
            yield text


@dataclass
class ChatSession:
    """A conversation that keeps its history: each :meth:`send` sees every earlier turn."""

    llm: object
    sampling: Sampling = Sampling()
    system: str | None = None
    messages: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.system and not self.messages:
            self.messages.append({"role": "system", "content": self.system})

    def send(self, text: str) -> Iterator[str]:
        """Stream the reply to ``text``; the full reply joins the history once the stream is exhausted."""
        self.messages.append({"role": "user", "content": text})
        pieces = []
        try:
            for piece in stream_chat(self.llm, self.messages, self.sampling):
                pieces.append(piece)
                yield piece
        finally:  # an interrupted reply is kept as far as it got, so the history stays alternating
            self.messages.append({"role": "assistant", "content": "".join(pieces)})
