"""``hqq2gguf ollama``: a Modelfile for a GGUF, and ``ollama create`` when Ollama is installed.

The Modelfile names the GGUF by absolute path (``ollama create`` copies it into Ollama's store, and a
relative path would depend on where the command runs), restates the chat template in Go syntax for the
recognised families (:mod:`.chat_families`), carries the template's default system prompt, and lists
the family's end-of-turn strings as stop parameters. An unrecognised template gets no TEMPLATE line: Ollama
then falls back to what it derives from the GGUF's own ``tokenizer.chat_template``, which beats a guess.
"""

from __future__ import annotations

import logging
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hqq2gguf.runtime.chat_families import FamilySpec, default_system_prompt, recognise
from hqq2gguf.runtime.structure import CHAT_TEMPLATE_KEY, open_gguf_checked

from hqq2gguf import __version__
from hqq2gguf.errors import InputError, OptionError, OutputError

logger = logging.getLogger(__name__)

HEADER = "# Modelfile written by hqq2gguf"
"""First line of every Modelfile we write: such a file may be overwritten without --force."""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?(:[A-Za-z0-9][A-Za-z0-9._-]*)?$")


@dataclass(frozen=True)
class Modelfile:
    """The Modelfile of one GGUF and what was recognised in it."""

    gguf: Path
    text: str
    family: FamilySpec | None
    system: str | None
    warnings: tuple[str, ...]


def check_name(name: str) -> str:
    """An Ollama model name (``name``, ``namespace/name``, optionally ``:tag``), or OptionError."""
    if not _NAME.match(name):
        raise OptionError(f"{name!r} is not a valid Ollama model name (letters, digits, '.', '_', '-'; "
                          "optionally namespace/name and :tag)")
    return name


def build_modelfile(gguf_path: Path | str, *, name: str, system: str | None = None) -> Modelfile:
    """The Modelfile text for ``gguf_path``; ``system`` replaces the template's default system prompt."""
    path = Path(gguf_path).resolve()
    f = open_gguf_checked(path)
    template = f.value(CHAT_TEMPLATE_KEY)
    spec = recognise(template)  # type: ignore[arg-type]
    warnings = []
    if template is None:
        warnings.append(f"{path.name} has no {CHAT_TEMPLATE_KEY}: no TEMPLATE written (Ollama sends the prompt "
                        "as is, fine for a base model)")
    elif spec is None:
        warnings.append("chat template not recognised (none of ChatML, Llama 3, Llama 2, Mistral, Gemma, Phi-3): "
                        "no TEMPLATE written, Ollama will use the one it derives from the GGUF's own template")
    if system is None and spec is not None:
        system = default_system_prompt(template, spec)  # type: ignore[arg-type]
    if system is not None and '"""' in system:
        warnings.append('the system prompt contains """, which a Modelfile cannot quote: SYSTEM left out')
        system = None
    lines = [f"{HEADER} {__version__} for Ollama model {name!r}",
             f"# chat template: {spec.label if spec else 'not translated'}",
             f"FROM {_quote_path(path)}"]
    if spec is not None:
        lines.append(f'TEMPLATE """{spec.go_template}"""')
    if system:
        lines.append(f'SYSTEM """{system}"""')
    if spec is not None:
        lines += [f'PARAMETER stop "{s}"' for s in spec.stop]
    return Modelfile(path, "\n".join(lines) + "\n", spec, system, tuple(warnings))


def _quote_path(path: Path) -> str:
    text = str(path)
    if '"' in text or "\n" in text:
        raise InputError("a path holding a double quote or a newline cannot be written into a Modelfile", file=path)
    return f'"{text}"' if any(c.isspace() for c in text) else text


def default_output(gguf_path: Path) -> Path:
    """``model.Modelfile`` next to ``model.gguf``: one Modelfile per GGUF, even in a shared folder."""
    return gguf_path.with_suffix(".Modelfile")


def write_modelfile(modelfile: Modelfile, output: Path | None = None, *, force: bool = False) -> Path:
    """Write the Modelfile (default: next to the GGUF). An existing file is replaced only when we wrote it
    or with ``force``."""
    out = (output if output is not None else default_output(modelfile.gguf)).resolve()
    if out.is_dir():
        out = out / "Modelfile"
    if out.exists() and not force:
        with open(out, encoding="utf-8", errors="replace") as fh:
            ours = fh.readline().startswith(HEADER)
        if not ours:
            raise OutputError("exists and was not written by hqq2gguf (pass --force to overwrite)", file=out)
    if not out.parent.is_dir():
        raise OutputError("output directory does not exist", file=out.parent)
    out.write_text(modelfile.text, encoding="utf-8")
    return out


def create_command(name: str, modelfile_path: Path) -> list[str]:
    return ["ollama", "create", check_name(name), "-f", str(modelfile_path)]


def ollama_binary() -> str | None:
    """The ``ollama`` executable on PATH, or None."""
    return shutil.which("ollama")


def run_create(name: str, modelfile_path: Path) -> int:
    """Run ``ollama create``; its output goes to the terminal. Returns its exit status."""
    command = create_command(name, modelfile_path)
    binary = ollama_binary()
    if binary is None:
        raise OptionError("ollama is not on PATH; import with: " + shlex.join(command))
    logger.info("running %s", shlex.join(command))
    return subprocess.run([binary, *command[1:]], check=False).returncode
