"""Hugging Face Hub ids as input, resolved through huggingface_hub and its standard cache.

No test reaches the network: the cache is a layout on disk (``models--org--name/{blobs,refs,snapshots}``, as
huggingface_hub writes it) read with HF_HUB_OFFLINE=1, and the two answers only the Hub gives (no such
repository, no such revision) come from a stub Hub on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import gguf
import pytest

from bad_input_helpers import assert_clean_failure, run_cli
from hqq2gguf.convert import convert
from hqq2gguf.errors import InputError, OptionError
from hqq2gguf.gguf_diff import compare_gguf, format_diffs
from hqq2gguf.options import ConvertOptions
from hqq2gguf.read.hub import is_hub_id, resolve_model

REPO = "tiny-org/tiny-llama"
SHA_MAIN = "0123456789abcdef0123456789abcdef01234567"
SHA_V1 = "89abcdef0123456789abcdef0123456789abcdef"


def add_snapshot(cache: Path, sha: str, files: dict[str, bytes], refs: tuple[str, ...] = ("main",),
                 repo: str = REPO) -> Path:
    """One snapshot of ``repo`` in huggingface_hub's cache layout: content-addressed blobs, the snapshot's
    files as relative symlinks to them, and ``refs/<name>`` holding the commit."""
    storage = cache / f"models--{repo.replace('/', '--')}"
    snapshot = storage / "snapshots" / sha
    snapshot.mkdir(parents=True)
    (storage / "blobs").mkdir(exist_ok=True)
    (storage / "refs").mkdir(exist_ok=True)
    for name, data in files.items():
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    for ref in refs:
        (storage / "refs" / ref).write_text(sha)
    return snapshot


@pytest.fixture
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache, offline, for this test (the environment and huggingface_hub's constants,
    which it reads at import)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def _model_files(model_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()}


@pytest.mark.parametrize(("text", "expected"), [
    ("Qwen/Qwen2.5-0.5B-Instruct", True), ("HuggingFaceTB/SmolLM2-135M", True), ("org/name.v2", True),
    ("model", False), ("./org/name", False), ("org/name/sub", False), ("org/model.gguf", False), ("../x", False),
    ("org/..", False), ("/abs/path", False),
])
def test_hub_ids_are_told_from_paths(text: str, expected: bool) -> None:
    assert is_hub_id(text) is expected


def test_revision_chooses_the_snapshot(offline_cache: Path) -> None:
    main = add_snapshot(offline_cache, SHA_MAIN, {"config.json": b"{}"})
    v1 = add_snapshot(offline_cache, SHA_V1, {"config.json": b"{}"}, refs=("v1",))
    assert resolve_model(REPO).path == main
    assert resolve_model(REPO, "v1").path == v1
    assert resolve_model(REPO, SHA_V1).path == v1
    assert resolve_model(REPO).hub_id == REPO


def test_existing_path_wins_and_takes_no_revision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local = tmp_path / "tiny-org" / "tiny-llama"
    local.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert resolve_model(REPO).path == Path(REPO) and resolve_model(REPO).hub_id is None
    with pytest.raises(OptionError, match="applies to Hugging Face Hub ids"):
        resolve_model(REPO, "v1")


def test_hub_id_converts_like_the_directory_named_after_it(tiny_model_dir, offline_cache: Path,
                                                           tmp_path: Path) -> None:
    model_dir = tiny_model_dir("llama2")
    add_snapshot(offline_cache, SHA_MAIN, _model_files(model_dir))
    ours = convert(REPO, ConvertOptions(output=tmp_path / "hub.gguf")).path
    direct = convert(model_dir, ConvertOptions(output=tmp_path / "dir.gguf", model_name=REPO)).path
    diffs = compare_gguf(ours, direct)
    assert not diffs, format_diffs(diffs, ours, direct)
    name = gguf.GGUFReader(ours).get_field(gguf.Keys.General.NAME).contents()
    assert name == REPO  # as llama.cpp's converter names a --remote model


def test_cli_reads_the_cache_offline_from_the_environment(tiny_model_dir, tmp_path: Path) -> None:
    """The conventions a user relies on, in a fresh process: HF_HUB_CACHE, HF_HUB_OFFLINE=1, --revision."""
    cache = tmp_path / "hf-cache"
    add_snapshot(cache, SHA_V1, _model_files(tiny_model_dir("llama2")), refs=("v1",))
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "hf-home")}
    proc = subprocess.run([sys.executable, "-m", "hqq2gguf.cli", "convert", REPO, "--revision", "v1", "-o", str(out)],
                          capture_output=True, text=True, timeout=300, env=env, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    written = sorted(p.name for p in out.iterdir())
    assert len(written) == 1 and written[0].startswith("tiny-org-tiny-llama") and written[0].endswith("-F16.gguf")


@pytest.mark.parametrize(("revision", "needles"), [
    (None, ("not a local path", "this model is not in the Hugging Face cache", "HF_HUB_OFFLINE=1")),
    ("v9", ("revision 'v9' is not in the Hugging Face cache", "HF_HUB_OFFLINE=1")),
])
def test_offline_and_not_cached_is_one_error(offline_cache: Path, tmp_path: Path, revision: str | None,
                                             needles: tuple[str, ...]) -> None:
    add_snapshot(offline_cache, SHA_MAIN, {"config.json": b"{}"}, repo="tiny-org/other")
    out = tmp_path / "out"
    out.mkdir()
    repo = REPO if revision is None else "tiny-org/other"
    code, output = run_cli("convert", repo, "-o", str(out / "m.gguf"), *(("--revision", revision) if revision else ()))
    line = assert_clean_failure(code, output, out, repo, *needles)
    assert str(offline_cache) in line


class _StubHub(http.server.BaseHTTPRequestHandler):
    """What the Hub answers for a repository or a revision that does not exist (huggingface_hub reads the
    X-Error-Code header)."""

    def do_GET(self) -> None:  # noqa: N802 - the http.server interface
        code = "RevisionNotFound" if "/revision/v9" in self.path else "RepoNotFound"
        self.send_response(404)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", f"{code} (stub)")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, *args: object) -> None:
        pass


def _reset_hub_sessions() -> None:
    from huggingface_hub import utils

    reset = getattr(utils, "reset_sessions", None) or getattr(utils, "close_session")  # huggingface_hub < 1 / >= 1
    reset()


@pytest.fixture
def stub_hub(offline_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """huggingface_hub online, talking to a stub Hub on 127.0.0.1 (and an empty cache)."""
    from huggingface_hub import constants

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StubHub)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    _reset_hub_sessions()  # a session made while offline stays offline
    try:
        yield endpoint
    finally:
        _reset_hub_sessions()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize(("revision", "needle"), [
    (None, "no such model on the Hugging Face Hub"),
    ("v9", "revision 'v9' does not exist in this repository"),
])
def test_unknown_id_or_revision_is_one_error(stub_hub: str, revision: str | None, needle: str) -> None:
    with pytest.raises(InputError) as caught:
        resolve_model("tiny-org/no-such-model", revision)
    assert needle in caught.value.message and "tiny-org/no-such-model" in caught.value.message
