"""Both transformers majors (README, "transformers versions"): a model directory saved by transformers 5 converts
to the same file as the one saved by transformers 4, under either major, and under 5 to llama.cpp's converter's
file for that directory.

transformers 5 saves a tokenizer as tokenizer.json (byte-identical to 4's) and a short tokenizer_config.json
naming the class ``TokenizersBackend``, without special_tokens_map.json; transformers 4 has no such class, so
``AutoTokenizer`` refuses the directory there. ``tests/data/transformers5/tokenizer_config.json`` is what
transformers 5.25.0's ``save_pretrained`` wrote for the SmolLM2 tokenizer of the tiny models.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import transformers

import oracle
from hqq2gguf.convert import convert
from hqq2gguf.gguf_diff import compare_gguf, format_diffs
from hqq2gguf.options import ConvertOptions

V5_TOKENIZER_CONFIG = Path(__file__).parent / "data" / "transformers5" / "tokenizer_config.json"
TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])


@pytest.fixture(scope="module")
def v5_dir(tiny_model_dir, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny llama3 model (SmolLM2's BPE tokenizer) with its tokenizer files as transformers 5 saves them."""
    dest = tmp_path_factory.mktemp("saved-by-v5") / "llama3"
    shutil.copytree(tiny_model_dir("llama3"), dest)
    (dest / "special_tokens_map.json").unlink(missing_ok=True)
    shutil.copyfile(V5_TOKENIZER_CONFIG, dest / "tokenizer_config.json")
    return dest


def test_fixture_is_a_v5_saved_directory(v5_dir: Path) -> None:
    assert '"tokenizer_class": "TokenizersBackend"' in (v5_dir / "tokenizer_config.json").read_text()
    assert not (v5_dir / "special_tokens_map.json").exists()


def test_v5_saved_directory_converts_like_the_v4_saved_one(tiny_model_dir, v5_dir: Path, tmp_path: Path) -> None:
    ours = convert(v5_dir, ConvertOptions(output=tmp_path / "v5.gguf")).path
    reference = convert(tiny_model_dir("llama3"), ConvertOptions(output=tmp_path / "v4.gguf")).path
    diffs = compare_gguf(ours, reference)
    assert not diffs, format_diffs(diffs, ours, reference)


def test_v5_saved_directory_matches_llama_cpp(v5_dir: Path, oracle_src: Path, tmp_path: Path) -> None:
    if TRANSFORMERS_MAJOR < 5:
        pytest.skip(f"llama.cpp's converter reads a transformers-5 tokenizer only under transformers 5 (this is "
                    f"{transformers.__version__}); CI's transformers 5 pass runs this test")
    expected = oracle.run_oracle(v5_dir, "f16", tmp_path / "oracle.gguf")
    ours = convert(v5_dir, ConvertOptions(output=tmp_path / "ours.gguf")).path
    diffs = compare_gguf(ours, expected)
    assert not diffs, format_diffs(diffs, ours, expected)
