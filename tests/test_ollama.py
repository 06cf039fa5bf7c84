"""hqq2gguf.runtime.chat_families / .ollama and ``hqq2gguf ollama``: template translation and the Modelfile.

The translated Go templates are checked against the Jinja originals by rendering both: Jinja with the
same sandbox llama-cpp-python uses, Go with tests/go_template/render.go, which reproduces Ollama's
``template.Execute`` for chat requests. That check needs ``go`` (skipped, with the reason, without it).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import chat_templates as tpl
import gguf
import pytest
from click.testing import CliRunner
from hqq2gguf.runtime.chat_families import (
    ChatFamily,
    default_system_prompt,
    family_spec,
    recognise,
    render_jinja,
)
from hqq2gguf.runtime.ollama import HEADER, build_modelfile, check_name, write_modelfile

from hqq2gguf.cli import main
from hqq2gguf.errors import InputError, OptionError, OutputError

# (Jinja template, family, supports a system message, its default system prompt)
TEMPLATES = {
    "smollm2": (tpl.SMOLLM2, ChatFamily.CHATML, True, "You are a helpful AI assistant named SmolLM, trained by Hugging Face"),
    "qwen2.5": (tpl.QWEN25, ChatFamily.CHATML, True, "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
    "llama3": (tpl.LLAMA3, ChatFamily.LLAMA3, True, None),
    "llama2": (tpl.LLAMA2, ChatFamily.LLAMA2, True, None),
    "mistral": (tpl.MISTRAL, ChatFamily.MISTRAL, False, None),
    "gemma3": (tpl.GEMMA3, ChatFamily.GEMMA, True, None),
    "phi3.5": (tpl.PHI35, ChatFamily.PHI3, True, None),
}
STOPS = {
    ChatFamily.CHATML: ["<|im_start|>", "<|im_end|>"],
    ChatFamily.LLAMA3: ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    ChatFamily.LLAMA2: ["[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"],
    ChatFamily.MISTRAL: ["[INST]", "[/INST]"],
    ChatFamily.GEMMA: ["<start_of_turn>", "<end_of_turn>"],
    ChatFamily.PHI3: ["<|end|>", "<|user|>", "<|assistant|>"],
}
SYSTEM = {"role": "system", "content": "You answer in one short sentence."}
CONVERSATIONS = {
    "one user turn": [{"role": "user", "content": "What is the capital of France?"}],
    "multi-turn": [{"role": "user", "content": "Hi there!"}, {"role": "assistant", "content": "Hello! How can I help?"},
                   {"role": "user", "content": "Tell me a joke about cats."}],
}
BOS, EOS = "<s>", "</s>"


def _gguf_with_template(path: Path, template: str | None) -> Path:
    """A tensor-less GGUF holding only the metadata the Modelfile builder reads."""
    writer = gguf.GGUFWriter(str(path), "llama")
    if template is not None:
        writer.add_chat_template(template)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    return path


# ------------------------------------------------------------------------------ recognition


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_family_recognised_by_markers(name: str) -> None:
    template, family, _, default_system = TEMPLATES[name]
    spec = recognise(template)
    assert spec is not None and spec.family is family
    assert list(spec.stop) == STOPS[family]
    assert default_system_prompt(template, spec) == default_system


@pytest.mark.parametrize("template", [None, "", tpl.ALPACA, "{{ messages[0]['content'] }}"])
def test_unknown_templates_are_not_guessed(template: str | None) -> None:
    assert recognise(template) is None


# ------------------------------------------------------------------------------ Go rendering


@pytest.fixture(scope="module")
def go_render(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/go_template/render.go built with the local Go toolchain."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("GO NOT INSTALLED: the Ollama templates are NOT rendered with Go (apt-get install golang-go)")
    out = tmp_path_factory.mktemp("go") / "render"
    env = {**os.environ, "GOCACHE": str(out.parent / "cache"), "GOFLAGS": "-mod=mod", "GO111MODULE": "off"}
    subprocess.run([go, "build", "-o", str(out), str(Path(__file__).parent / "go_template" / "render.go")],
                   check=True, env=env, capture_output=True)
    return out


def _render_go(binary: Path, template: str, messages: list[dict[str, str]]) -> str:
    proc = subprocess.run([str(binary)], input=json.dumps({"template": template, "messages": messages}),
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("with_system", [False, True], ids=["no-system", "system"])
@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_go_template_renders_like_the_jinja_template(go_render: Path, name: str, conversation: str,
                                                     with_system: bool) -> None:
    template, family, supports_system, default_system = TEMPLATES[name]
    if with_system and not supports_system:
        pytest.skip(f"{name}'s template refuses system messages")
    messages = ([SYSTEM] if with_system else []) + CONVERSATIONS[conversation]
    expected = render_jinja(template, messages, bos_token=BOS, eos_token=EOS)
    expected = expected.removeprefix(BOS)  # llama.cpp adds BOS when tokenizing; Ollama templates leave it out
    # Ollama puts the Modelfile's SYSTEM first when the request has no system message of its own.
    sent = messages if with_system or default_system is None else [
        {"role": "system", "content": default_system}, *messages]
    assert _render_go(go_render, family_spec(family).go_template, sent) == expected


# ------------------------------------------------------------------------------ Modelfile


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_modelfile_per_family(name: str, tmp_path: Path) -> None:
    template, family, _, default_system = TEMPLATES[name]
    path = _gguf_with_template(tmp_path / "m.gguf", template)
    mf = build_modelfile(path, name="my-model")
    lines = mf.text.splitlines()
    assert lines[0].startswith(HEADER)
    assert f"FROM {path.resolve()}" in lines
    spec = family_spec(family)
    assert f'TEMPLATE """{spec.go_template}"""' in mf.text
    assert [ln for ln in lines if ln.startswith("PARAMETER stop")] == [f'PARAMETER stop "{s}"' for s in STOPS[family]]
    assert (f'SYSTEM """{default_system}"""' in lines) == (default_system is not None)
    assert not mf.warnings


def test_modelfile_system_override_and_quoted_path(tmp_path: Path) -> None:
    (tmp_path / "with space").mkdir()
    path = _gguf_with_template(tmp_path / "with space" / "m.gguf", tpl.SMOLLM2)
    mf = build_modelfile(path, name="m", system="Be brief.")
    assert f'FROM "{path.resolve()}"' in mf.text
    assert 'SYSTEM """Be brief."""' in mf.text and "SmolLM" not in mf.text.split("SYSTEM")[1]


@pytest.mark.parametrize(("template", "warning"), [(tpl.ALPACA, "not recognised"), (None, "no tokenizer.chat_template")])
def test_unknown_or_missing_template_warns_and_writes_no_template(template: str | None, warning: str,
                                                                 tmp_path: Path) -> None:
    mf = build_modelfile(_gguf_with_template(tmp_path / "m.gguf", template), name="m")
    assert "TEMPLATE" not in mf.text and "PARAMETER" not in mf.text and "SYSTEM" not in mf.text
    assert len(mf.warnings) == 1 and warning in mf.warnings[0]


def test_write_modelfile_refuses_a_foreign_file(tmp_path: Path) -> None:
    mf = build_modelfile(_gguf_with_template(tmp_path / "m.gguf", tpl.LLAMA3), name="m")
    first = write_modelfile(mf)
    assert first == (tmp_path / "m.Modelfile").resolve()
    assert write_modelfile(mf) == first  # ours: replaced without --force
    foreign = tmp_path / "Modelfile"
    foreign.write_text("FROM llama3\n")
    with pytest.raises(OutputError, match="not written by hqq2gguf"):
        write_modelfile(mf, foreign)
    assert write_modelfile(mf, foreign, force=True) == foreign.resolve()
    assert write_modelfile(mf, tmp_path) == (tmp_path / "Modelfile").resolve()  # a directory: Modelfile in it


@pytest.mark.parametrize("name", ["llama3", "me/smol:q4", "a.b_c-d:latest"])
def test_valid_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "-x", "a b", "a;rm", "x:", "a/b/c"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(OptionError):
        check_name(name)


def test_not_a_gguf(tmp_path: Path) -> None:
    bad = tmp_path / "m.gguf"
    bad.write_bytes(b"NOPE" + bytes(64))
    with pytest.raises(InputError):
        build_modelfile(bad, name="m")


# ------------------------------------------------------------------------------ the command


def _path_without_ollama(tmp_path: Path) -> str:
    return os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if p and not (Path(p) / "ollama").exists())


def test_cli_without_ollama_prints_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _gguf_with_template(tmp_path / "m.gguf", tpl.SMOLLM2)
    monkeypatch.setenv("PATH", _path_without_ollama(tmp_path))
    result = CliRunner().invoke(main, ["ollama", str(model), "--name", "smol"])
    assert result.exit_code == 0, result.output
    modelfile = (tmp_path / "m.Modelfile").resolve()
    assert f"ollama is not on PATH; to import the model run: ollama create smol -f {modelfile}" in result.output
    assert "ChatML" in result.output and modelfile.read_text().startswith(HEADER)


def test_cli_runs_ollama_create(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in ``ollama`` on PATH records its arguments and exits 3: the command passes both through."""
    model = _gguf_with_template(tmp_path / "m.gguf", tpl.GEMMA3)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "ollama"
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'args.txt'}\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{_path_without_ollama(tmp_path)}")
    result = CliRunner().invoke(main, ["ollama", str(model), "--name", "gem:latest", "-o", str(tmp_path / "MF")])
    assert result.exit_code == 3, result.output
    assert (tmp_path / "args.txt").read_text().split() == ["create", "gem:latest", "-f", str((tmp_path / "MF").resolve())]


def test_cli_rejects_a_bad_name(tmp_path: Path) -> None:
    model = _gguf_with_template(tmp_path / "m.gguf", tpl.SMOLLM2)
    result = CliRunner().invoke(main, ["ollama", str(model), "--name", "bad name"])
    assert result.exit_code == 1 and "not a valid Ollama model name" in result.output
    assert not (tmp_path / "m.Modelfile").exists()
