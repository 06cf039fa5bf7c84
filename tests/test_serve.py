"""``hqq2gguf serve``: llama-cpp-python's OpenAI-compatible server on a loopback port, chatting through the GGUF's
own template. Only 127.0.0.1 is contacted; every wait is bounded."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bad_input_helpers import run_cli
from hqq2gguf.convert import convert
from hqq2gguf.errors import OptionError
from hqq2gguf.options import ConvertOptions

pytest.importorskip("llama_cpp.server", reason="llama-cpp-python's [server] extra is not installed")

START_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 60.0
CHAT = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8, "temperature": 0.0}


@pytest.fixture(scope="module")
def chat_gguf(tiny_model_dir, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny llama3 model (SmolLM2's tokenizer and chat template) as an F16 GGUF."""
    return convert(tiny_model_dir("llama3"), ConvertOptions(output=tmp_path_factory.mktemp("serve") / "m.gguf")).path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(port: int, method: str, path: str, body: dict | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    conn.request(method, path, body=json.dumps(body) if body is not None else None,
                 headers={"Content-Type": "application/json"})
    return conn.getresponse()


@pytest.fixture(scope="module")
def server(chat_gguf: Path) -> Iterator[tuple[int, subprocess.Popen]]:
    """``hqq2gguf serve`` in its own process on a free loopback port; stopped (SIGINT, then kill) at the end."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "hqq2gguf.cli", "serve", str(chat_gguf), "--port", str(port),
                             "-t", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if _request(port, "GET", "/v1/models").status == 200:
                    break
            except OSError:
                time.sleep(0.2)
        else:
            proc.kill()
            pytest.fail(f"server did not start (exit {proc.poll()}):\n{proc.communicate(timeout=10)[0]}")
        yield port, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def test_models_lists_the_file(server: tuple[int, subprocess.Popen]) -> None:
    listing = json.loads(_request(server[0], "GET", "/v1/models").read())
    assert [m["id"] for m in listing["data"]] == ["m"]


def test_chat_completion_uses_the_gguf_template(server: tuple[int, subprocess.Popen], chat_gguf: Path) -> None:
    import llama_cpp

    response = _request(server[0], "POST", "/v1/chat/completions", {"model": "m", **CHAT})
    assert response.status == 200
    answer = json.loads(response.read())
    message = answer["choices"][0]["message"]
    assert message["role"] == "assistant" and isinstance(message["content"], str)
    assert 1 <= answer["usage"]["completion_tokens"] <= CHAT["max_tokens"]
    # The same request in this process, through the GGUF's own template: the same prompt, the same greedy reply.
    llm = llama_cpp.Llama(model_path=str(chat_gguf), n_ctx=2048, n_threads=2, verbose=False,
                          chat_format="chat_template.default")
    try:
        local = llm.create_chat_completion(messages=CHAT["messages"], max_tokens=CHAT["max_tokens"], temperature=0.0)
    finally:
        llm.close()
    assert answer["usage"]["prompt_tokens"] == local["usage"]["prompt_tokens"]
    assert message["content"] == local["choices"][0]["message"]["content"]


def test_streamed_completion(server: tuple[int, subprocess.Popen]) -> None:
    response = _request(server[0], "POST", "/v1/completions",
                        {"model": "m", "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0.0,
                         "stream": True})
    assert response.status == 200 and response.getheader("Content-Type", "").startswith("text/event-stream")
    events = []
    for _ in range(1000):  # bounded: 8 tokens make a dozen events
        line = response.readline()
        if not line:
            break
        if line.startswith(b"data: "):
            events.append(line[6:].strip())
            if events[-1] == b"[DONE]":
                break
    assert events and events[-1] == b"[DONE]", events
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) >= 2 and all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks)


def test_sigterm_stops_the_server_and_frees_the_port(chat_gguf: Path, server: tuple[int, subprocess.Popen]) -> None:
    port, proc = server
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    with pytest.raises(OSError):
        _request(port, "GET", "/v1/models")


def test_port_in_use_is_one_error(chat_gguf: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, output = run_cli("serve", str(chat_gguf), "--port", str(port))
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert code == 1 and errors == [f"error: port {port} on 127.0.0.1 is in use: stop what listens there, or "
                                    "choose another with --port"], output


def test_loopback_by_default_and_bad_options_refused(tmp_path: Path) -> None:
    from hqq2gguf.runtime.serve import ServeOptions

    assert ServeOptions(tmp_path / "m.gguf").host == "127.0.0.1"
    for bad in ({"port": 0}, {"port": 70000}, {"host": " "}, {"n_ctx": 4}):
        with pytest.raises(OptionError):
            ServeOptions(tmp_path / "m.gguf", **bad)
    code, output = run_cli("serve", str(tmp_path / "missing.gguf"))
    assert code == 1 and "no such file" in output
