"""Chat-template families: recognise a GGUF's Jinja template, give its Ollama (Go) equivalent.

Ollama renders prompts with Go's text/template, not Jinja, so a model imported from a GGUF needs its
template restated. Each family below is recognised by markers that its Jinja templates must contain,
and comes with a Go template written to render the same text as the Jinja one (tests/test_ollama.py
checks that with Go itself when ``go`` is installed), plus the stop strings that end an assistant turn.

Ollama gives a ``.Messages`` template ``.System`` (every system message, joined) and ``.Messages``
(system messages included), so these templates place ``.System`` once and skip system messages in the
loop. The BOS token is left out: llama.cpp adds it when the vocabulary says so, as Ollama's own templates
assume. A template that matches no family is not guessed at.
"""

from __future__ import annotations

import datetime
import logging
import re
from dataclasses import dataclass
from enum import Enum

logger = logging.getLogger(__name__)


class ChatFamily(str, Enum):
    """Prompt formats recognised in a Jinja chat template."""

    LLAMA3 = "llama3"
    """Llama 3.x: ``<|start_header_id|>role<|end_header_id|>`` ... ``<|eot_id|>``."""
    CHATML = "chatml"
    """ChatML: ``<|im_start|>role`` ... ``<|im_end|>`` (SmolLM2, Qwen 2/2.5/3, many fine-tunes)."""
    GEMMA = "gemma"
    """Gemma: ``<start_of_turn>user|model`` ... ``<end_of_turn>``; a system prompt opens the first user turn."""
    PHI3 = "phi3"
    """Phi-3 / 3.5: ``<|system|>``, ``<|user|>``, ``<|assistant|>`` each closed by ``<|end|>``."""
    LLAMA2 = "llama2"
    """Llama 2 chat: ``[INST] <<SYS>>...<</SYS>> ... [/INST]``."""
    MISTRAL = "mistral"
    """Mistral instruct: ``[INST] ... [/INST]`` without ``<<SYS>>``."""


@dataclass(frozen=True)
class FamilySpec:
    family: ChatFamily
    label: str
    markers: tuple[str, ...]
    """Every one of these must occur in the Jinja template."""
    any_markers: tuple[str, ...]
    """At least one of these must occur too (empty: no such condition)."""
    go_template: str
    stop: tuple[str, ...]
    default_system: str | None
    """Regex with one group: the default system prompt in the template rendered for one user message."""


_CHATML = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ .Content }}{{ if not $last }}<|im_end|>
{{ end }}
{{- end }}
{{- if and $last (ne .Role "assistant") }}<|im_start|>assistant
{{ end }}
{{- end }}"""

_LLAMA3 = """{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>
{{- end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>

{{ .Content }}
{{- if not $last }}<|eot_id|>{{ end }}
{{- end }}
{{- end }}"""

_GEMMA = """{{- $first := true }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<start_of_turn>user
{{ if and $first $.System }}{{ $.System }}

{{ end }}{{ .Content }}<end_of_turn>
{{ if $last }}<start_of_turn>model
{{ end }}
{{- $first = false }}
{{- else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}<end_of_turn>
{{ end }}
{{- end }}"""

_PHI3 = """{{- if .System }}<|system|>
{{ .System }}<|end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|user|>
{{ .Content }}<|end|>
{{ else if eq .Role "assistant" }}<|assistant|>
{{ .Content }}<|end|>
{{ end }}
{{- if and $last (ne .Role "assistant") }}<|assistant|>
{{ end }}
{{- end }}"""

_LLAMA2 = """{{- $first := true }}
{{- range .Messages }}
{{- if eq .Role "user" }}
{{- if not $first }}<s>{{ end }}[INST] {{ if and $first $.System }}<<SYS>>
{{ $.System }}
<</SYS>>

{{ end }}{{ .Content }} [/INST]
{{- $first = false }}
{{- else if eq .Role "assistant" }} {{ .Content }} </s>
{{- end }}
{{- end }}"""

_MISTRAL = """{{- $first := true }}
{{- range .Messages }}
{{- if eq .Role "user" }}[INST] {{ if and $first $.System }}{{ $.System }}

{{ end }}{{ .Content }} [/INST]
{{- $first = false }}
{{- else if eq .Role "assistant" }}{{ .Content }}</s>
{{- end }}
{{- end }}"""

# Checked in this order: the first family whose markers all occur wins (Llama 2 before Mistral).
FAMILIES: tuple[FamilySpec, ...] = (
    FamilySpec(ChatFamily.LLAMA3, "Llama 3 (<|start_header_id|> ... <|eot_id|>)",
               ("<|start_header_id|>", "<|end_header_id|>"), (), _LLAMA3,
               ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
               r"^<\|start_header_id\|>system<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>"),
    FamilySpec(ChatFamily.CHATML, "ChatML (<|im_start|> ... <|im_end|>)", ("<|im_start|>",), (), _CHATML,
               ("<|im_start|>", "<|im_end|>"), r"^<\|im_start\|>system\n(.*?)<\|im_end\|>"),
    FamilySpec(ChatFamily.GEMMA, "Gemma (<start_of_turn> ... <end_of_turn>)", ("<start_of_turn>",), (), _GEMMA,
               ("<start_of_turn>", "<end_of_turn>"), None),
    FamilySpec(ChatFamily.PHI3, "Phi-3 (<|user|> ... <|end|>)", ("<|end|>",), ("<|user|>", "<|assistant|>"), _PHI3,
               ("<|end|>", "<|user|>", "<|assistant|>"), r"^<\|system\|>\n(.*?)<\|end\|>"),
    FamilySpec(ChatFamily.LLAMA2, "Llama 2 ([INST] <<SYS>> ... [/INST])", ("[INST]", "<<SYS>>"), (), _LLAMA2,
               ("[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"), r"<<SYS>>\n(.*?)\n<</SYS>>"),
    FamilySpec(ChatFamily.MISTRAL, "Mistral ([INST] ... [/INST])", ("[INST]",), (), _MISTRAL,
               ("[INST]", "[/INST]"), None),
)
_BY_FAMILY = {spec.family: spec for spec in FAMILIES}


def family_spec(family: ChatFamily) -> FamilySpec:
    return _BY_FAMILY[family]


def recognise(jinja_template: str | None) -> FamilySpec | None:
    """The family of a Jinja chat template, by its markers; None when it matches none."""
    if not jinja_template:
        return None
    for spec in FAMILIES:
        if all(m in jinja_template for m in spec.markers) and (
                not spec.any_markers or any(m in jinja_template for m in spec.any_markers)):
            return spec
    return None


def render_jinja(jinja_template: str, messages: list[dict[str, str]], *, bos_token: str = "",
                 eos_token: str = "", add_generation_prompt: bool = True) -> str:
    """The Jinja template rendered the way transformers and llama-cpp-python do (sandboxed, trimmed blocks)."""
    from jinja2.sandbox import (
        ImmutableSandboxedEnvironment,  # installed with llama-cpp-python and transformers
    )

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env.from_string(jinja_template).render(messages=messages, bos_token=bos_token, eos_token=eos_token,
                                                  add_generation_prompt=add_generation_prompt)


def default_system_prompt(jinja_template: str, spec: FamilySpec) -> str | None:
    """The system prompt the Jinja template inserts when the conversation has none (SmolLM2 and Qwen do),
    found by rendering it for one user message; None when it inserts none or cannot be rendered."""
    if spec.default_system is None:
        return None
    from jinja2 import TemplateError

    probe = "\x00user message\x00"
    try:
        text = render_jinja(jinja_template, [{"role": "user", "content": probe}])
    except (TemplateError, ValueError, TypeError) as exc:  # a template that cannot render has no default
        logger.debug("chat template not rendered (%s): no default system prompt taken from it", exc)
        return None
    head = text.split(probe, 1)[0]
    match = re.search(spec.default_system, head, flags=re.DOTALL)
    return match.group(1) if match and match.group(1).strip() else None
