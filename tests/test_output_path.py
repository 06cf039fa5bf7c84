"""Where the output goes: unwritable or missing places fail cleanly, and names taken from the model
(metadata, model card, --model-name) never move the file out of the chosen directory."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import gguf
import pytest
from bad_input_helpers import assert_clean_failure, run_cli, tree_digest
from gguf_bytes import VALID, kv_str


@pytest.fixture
def model(tiny_model_dir, tmp_path: Path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(tiny_model_dir("llama2"), dst)
    return dst


def _fails(model: Path, output: Path, watched: Path, *needles: str) -> None:
    before = tree_digest(model)
    code, text = run_cli("convert", str(model), "-o", str(output), "--outtype", "f16")
    assert_clean_failure(code, text, watched, *needles)
    assert tree_digest(model) == before


# --- unwritable / missing output places ---------------------------------------------------------------

def test_parent_is_a_regular_file(model: Path, tmp_path: Path) -> None:
    """Fails for root too (chmod does not stop root; a file as parent directory does)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "plain.txt").write_text("not a directory")
    code, text = run_cli("convert", str(model), "-o", str(out / "plain.txt" / "m.gguf"))
    assert_clean_failure(code, text, out / "missing", str(out / "plain.txt"), "is a file, not a directory")
    assert sorted(p.name for p in out.iterdir()) == ["plain.txt"]


def test_parent_missing(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    _fails(model, out / "no" / "such" / "m.gguf", out, str(out / "no" / "such"), "output directory does not exist")


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root: a mode-0555 directory does not stop root's writes, "
                                               "so unwritability cannot be provoked this way")
def test_directory_without_write_permission(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        _fails(model, out / "m.gguf", out, str(out), "output directory is not writable")
    finally:
        out.chmod(0o755)


def test_output_name_without_gguf_suffix(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    _fails(model, out / "m.bin", out, "m.bin", "output file name must end in .gguf")


def test_output_is_an_existing_file_of_the_input(model: Path, tmp_path: Path) -> None:
    """-o pointing at a file inside the model directory without .gguf: refused, the file untouched."""
    _fails(model, model / "config.json", tmp_path / "nothing", "config.json", "must end in .gguf")


# --- names from the model never escape the output directory --------------------------------------------

HOSTILE_NAMES = ["../../escaped", "/etc/passwd", "..", "a/../../b", "name\x00with-nul", "x" * 400]


def _only_output_in(out: Path, root: Path, expected_dirs: set[str]) -> Path:
    """Exactly one .gguf in ``out``; nothing new anywhere else under ``root``."""
    files = list(out.iterdir())
    assert len(files) == 1 and files[0].suffix == ".gguf", files
    assert len(files[0].name.encode()) <= 255
    assert {p.name for p in root.iterdir()} == expected_dirs, sorted(p.name for p in root.iterdir())
    return files[0]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=["dotdot", "absolute", "only-dots", "mixed", "nul", "long"])
def test_model_name_cannot_escape_output_dir(model: Path, tmp_path: Path, name: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    code, text = run_cli("convert", str(model), "-o", str(out), "--outtype", "f16", "--model-name", name)
    assert code == 0, text
    written = _only_output_in(out, tmp_path, {"model", "out"})
    assert "/" not in written.stem and not written.name.startswith(".")
    assert gguf.GGUFReader(written).get_field(gguf.Keys.General.NAME).contents() == name  # stored verbatim


def test_model_card_name_cannot_escape_output_dir(model: Path, tmp_path: Path) -> None:
    pytest.importorskip("yaml", reason="gguf reads the model card's YAML front matter with PyYAML")
    (model / "README.md").write_text("---\nmodel_name: ../../../../tmp/evil\n---\n# card\n", encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    code, text = run_cli("convert", str(model), "-o", str(out), "--outtype", "f16")
    assert code == 0, text
    written = _only_output_in(out, tmp_path, {"model", "out"})
    assert written.name.startswith("tmp-evil")
    assert gguf.GGUFReader(written).get_field(gguf.Keys.General.NAME).contents() == "../../../../tmp/evil"


@pytest.mark.parametrize("name", ["../../../escaped", "/tmp/absolute"], ids=["dotdot", "absolute"])
def test_gguf_general_name_cannot_escape_output_dir(tmp_path: Path, name: str) -> None:
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    src = replace(VALID, kvs=(VALID.kvs[0], kv_str("general.name", name))).write(src_dir / "in.gguf")
    out = tmp_path / "out"
    out.mkdir()
    code, text = run_cli("convert", str(src), "-o", str(out), "--outtype", "f16")
    assert code == 0, text
    written = _only_output_in(out, tmp_path, {"src", "out"})
    assert written.parent == out and ("escaped" in written.name or "absolute" in written.name)
