"""hqq2gguf.runtime.generate and ``hqq2gguf run`` / ``hqq2gguf chat`` on a tiny converted model.

The tiny model's weights are random, so the text is noise: what is checked is the plumbing (streaming,
the chat template, the history, determinism, exits), not the answers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from hqq2gguf.runtime.generate import (
    ChatSession,
    Sampling,
    chat_template,
    open_chat_model,
    stream_completion,
)
from hqq2gguf.runtime.llama import (
    device_info,
    effective_gpu_layers,
    gpu_offload_supported,
)

from hqq2gguf.cli import main
from hqq2gguf.errors import InputError, OptionError

GREEDY = ["--temperature", "0", "--max-tokens", "8", "-c", "128", "-t", "2"]


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_dir: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama 2 (with a [INST] chat template) converted to F32."""
    from hqq2gguf.convert import convert
    from hqq2gguf.options import ConvertOptions, OutType

    out = tmp_path_factory.mktemp("generate") / "tiny-F32.gguf"
    return convert(tiny_model_dir("llama2"), ConvertOptions(outtype=OutType.F32, output=out)).path


def test_sampling_validation() -> None:
    assert Sampling(temperature=0).deterministic and not Sampling().deterministic
    assert "seed" not in Sampling().kwargs() and Sampling(seed=3).kwargs()["seed"] == 3
    for bad in ({"max_tokens": 0}, {"temperature": -1}, {"top_p": 0}, {"top_k": -1}):
        with pytest.raises(OptionError):
            Sampling(**bad)


def test_greedy_is_deterministic_and_seeded_sampling_repeats(tiny_gguf: Path) -> None:
    llm = open_chat_model(tiny_gguf, n_ctx=128, n_threads=2)
    try:
        assert chat_template(llm) and "[INST]" in chat_template(llm)
        greedy = Sampling(max_tokens=12, temperature=0)
        first = "".join(stream_completion(llm, "The bridge", greedy))
        assert first and first == "".join(stream_completion(llm, "The bridge", greedy))
        seeded = Sampling(max_tokens=12, temperature=1.0, seed=7)
        assert "".join(stream_completion(llm, "The bridge", seeded)) == "".join(
            stream_completion(llm, "The bridge", seeded))
    finally:
        llm.close()


def test_chat_session_keeps_the_history(tiny_gguf: Path) -> None:
    llm = open_chat_model(tiny_gguf, n_ctx=256, n_threads=2)
    try:
        session = ChatSession(llm, Sampling(max_tokens=4, temperature=0), system="Be brief.")
        replies = ["".join(session.send(text)) for text in ("Hello", "And again")]
    finally:
        llm.close()
    assert [m["role"] for m in session.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert [m["content"] for m in session.messages[2::2]] == replies


def test_cli_run_streams_and_repeats(tiny_gguf: Path) -> None:
    runner = CliRunner()
    plain = runner.invoke(main, ["run", str(tiny_gguf), "-p", "Once upon a time", *GREEDY])
    assert plain.exit_code == 0, plain.output
    assert plain.stdout == runner.invoke(main, ["run", str(tiny_gguf), "-p", "Once upon a time", *GREEDY]).stdout
    chat = runner.invoke(main, ["run", str(tiny_gguf), "-p", "Hi", "--chat", "--system", "Be brief.", *GREEDY])
    assert chat.exit_code == 0, chat.output


def test_cli_run_errors(tiny_gguf: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    no_chat = runner.invoke(main, ["run", str(tiny_gguf), "-p", "x", "--system", "s"])
    assert no_chat.exit_code == 1 and "error: --system needs --chat" in no_chat.output
    missing = runner.invoke(main, ["run", str(tmp_path / "none.gguf"), "-p", "x"])
    assert missing.exit_code == 1 and "none.gguf: no such file" in missing.output
    with pytest.raises(InputError, match="not a GGUF file"):
        bad = tmp_path / "bad.gguf"
        bad.write_bytes(b"\x00" * 64)
        open_chat_model(bad)


@pytest.mark.parametrize(("stdin", "prompts"), [
    ("Hello\n\nHow are you?\n/exit\nnever sent\n", 4),  # the empty line prompts again; nothing after /exit
    ("Hello\nHow are you?\n", 3),  # two turns, then EOF at the third prompt
], ids=["/exit", "EOF"])
def test_cli_chat_until_exit_or_eof(tiny_gguf: Path, stdin: str, prompts: int) -> None:
    result = CliRunner().invoke(main, ["chat", str(tiny_gguf), "--system", "Be brief.", *GREEDY], input=stdin)
    assert result.exit_code == 0, result.output
    assert result.stdout.count(">>> ") == prompts
    assert "/exit or Ctrl-D ends" in result.stderr


def test_gpu_layers_on_a_cpu_build_say_so(caplog: pytest.LogCaptureFixture) -> None:
    if gpu_offload_supported():
        pytest.skip("this build can offload: nothing to warn about")
    with caplog.at_level(logging.WARNING):
        assert effective_gpu_layers(-1) == 0
    assert "running on the CPU: GPU offload unavailable" in caplog.text and "GGML_CUDA=on" in caplog.text
    assert effective_gpu_layers(0) == 0
    assert device_info().describe().startswith("GPU offload unavailable")


def test_amx_hazard_needs_both_the_build_and_the_cpu() -> None:
    from hqq2gguf.runtime.llama import amx_hazard

    built = "CPU : AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 1 | REPACK = 1 |"
    plain = "CPU : AVX2 = 1 | AVX512 = 1 | REPACK = 1 |"
    assert amx_hazard(built, "fpu avx2 amx_bf16 amx_int8 amx_tile")
    assert not amx_hazard(built, "fpu avx2 avx512f")  # compiled in, but ggml finds no AMX at run time
    assert not amx_hazard(plain, "fpu avx2 amx_bf16 amx_int8 amx_tile")  # scripts/setup.sh's build


def test_the_installed_build_has_no_amx_hazard() -> None:
    """scripts/setup.sh builds llama-cpp-python without AMX; a build with it segfaults on AMX CPUs."""
    import llama_cpp

    assert "AMX_INT8 = 1" not in llama_cpp.llama_print_system_info().decode()
