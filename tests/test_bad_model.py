"""A checkpoint that disagrees with its config.json or its tokenizer: one line naming the file, the tensor
and both shapes (or the tokenizer file and the sizes), before anything is written.

llama.cpp's loader checks every tensor's shape against the hyper-parameters; hqq2gguf checks the same
rule while planning (models/shapes.py), so a bad checkpoint never becomes a GGUF llama.cpp refuses.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import gguf
import pytest
import torch
from bad_input_helpers import convert, convert_fails, tree_digest
from safetensors.torch import load_file, save_file


def _copy(tiny_model_dir, name: str, dst: Path) -> Path:
    shutil.copytree(tiny_model_dir(name), dst)
    return dst


@pytest.fixture
def model(tiny_model_dir, tmp_path: Path) -> Path:
    """A private, writable copy of the tiny Llama model (hidden 64, 4 heads of 16, 2 KV heads, vocab 600)."""
    return _copy(tiny_model_dir, "llama2", tmp_path / "model")


def _edit_weights(model: Path, **replace: torch.Tensor) -> None:
    tensors = load_file(model / "model.safetensors")
    tensors.update({name.replace("__", "."): t for name, t in replace.items()})
    save_file(tensors, model / "model.safetensors")


def _edit_config(model: Path, **values: object) -> None:
    config = json.loads((model / "config.json").read_text())
    config.update(values)
    (model / "config.json").write_text(json.dumps(config))


# --- tensor shapes against config.json --------------------------------------------------------------

Q_PROJ = "model.layers.0.self_attn.q_proj.weight"
K_PROJ = "model.layers.1.self_attn.k_proj.weight"


@pytest.mark.parametrize(("tensor", "shape", "needles"), [
    (Q_PROJ, (64, 96), ["shape [64, 96]", "[num_attention_heads*head_dim=64, hidden_size=64]",
                        "blk.0.attn_q.weight"]),
    (K_PROJ, (48, 64), ["shape [48, 64]", "[num_key_value_heads*head_dim=32, hidden_size=64]"]),
    ("model.embed_tokens.weight", (640, 64), ["shape [640, 64]", "[vocab_size=600, hidden_size=64]"]),
    ("lm_head.weight", (599, 64), ["shape [599, 64]", "[vocab_size=600, hidden_size=64]"]),
    ("model.layers.1.mlp.down_proj.weight", (64, 96), ["shape [64, 96]", "[hidden_size=64, intermediate_size=128]"]),
    ("model.layers.0.input_layernorm.weight", (72,), ["shape [72]", "[hidden_size=64]"]),
    ("model.norm.weight", (64, 1), ["shape [64, 1]", "[hidden_size=64]"]),
], ids=["q_proj-columns", "k_proj-rows", "embed-rows", "lm_head-rows", "down_proj", "layer-norm", "final-norm-2d"])
def test_tensor_shape_disagrees_with_config(model: Path, tmp_path: Path, tensor: str, shape: tuple[int, ...],
                                            needles: list[str]) -> None:
    _edit_weights(model, **{tensor.replace(".", "__"): torch.zeros(shape)})
    convert_fails(model, tmp_path / "out", "model.safetensors", f"tensor {tensor!r}", "disagrees with config.json",
                  *needles)


def test_rows_that_cannot_form_heads_name_the_tensor(model: Path, tmp_path: Path) -> None:
    """The RoPE permutation fails before the shape check could: still the file and the tensor."""
    _edit_weights(model, **{Q_PROJ.replace(".", "__"): torch.zeros(60, 64)})
    convert_fails(model, tmp_path / "out", "model.safetensors", f"tensor {Q_PROJ!r}", "60 rows cannot be split")


def test_config_disagrees_with_every_tensor(model: Path, tmp_path: Path) -> None:
    """A config.json from another size of the model: the first tensor checked is named."""
    _edit_config(model, hidden_size=128, head_dim=32)
    convert_fails(model, tmp_path / "out", "disagrees with config.json", "hidden_size=128")


def test_fused_qkv_shape_is_checked(tiny_model_dir, tmp_path: Path) -> None:
    model = _copy(tiny_model_dir, "phi3", tmp_path / "model")
    _edit_weights(model, model__layers__0__self_attn__qkv_proj__weight=torch.zeros(96, 64))
    convert_fails(model, tmp_path / "out", "model.safetensors", "shape [96, 64]",
                  "[num_attention_heads*head_dim+2*num_key_value_heads*head_dim=128, hidden_size=64]")


def test_bias_shape_is_checked(tiny_model_dir, tmp_path: Path) -> None:
    model = _copy(tiny_model_dir, "qwen2", tmp_path / "model")
    _edit_weights(model, model__layers__0__self_attn__v_proj__bias=torch.zeros(48))
    convert_fails(model, tmp_path / "out", "tensor 'model.layers.0.self_attn.v_proj.bias'", "shape [48]",
                  "[num_key_value_heads*head_dim=32]")


# --- tokenizer --------------------------------------------------------------------------------------

def test_no_tokenizer_at_all(model: Path, tmp_path: Path) -> None:
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (model / name).unlink(missing_ok=True)
    convert_fails(model, tmp_path / "out", str(model), "no tokenizer found", "tokenizer.json or tokenizer.model")


@pytest.mark.parametrize("name", ["llama2", "qwen2"], ids=["spm", "bpe"])
def test_tokenizer_json_not_json(tiny_model_dir, tmp_path: Path, name: str) -> None:
    model = _copy(tiny_model_dir, name, tmp_path / "model")
    (model / "tokenizer.json").write_text('{"model": {"vocab": ', encoding="utf-8")
    convert_fails(model, tmp_path / "out", "tokenizer.json", "not valid JSON")


def test_bpe_tokenizer_larger_than_vocab_size(tiny_model_dir, tmp_path: Path) -> None:
    """config.json and the weights agree on 256 tokens, the tokenizer has more: refused, naming it."""
    model = _copy(tiny_model_dir, "qwen2", tmp_path / "model")
    tensors = load_file(model / "model.safetensors")
    tensors["model.embed_tokens.weight"] = tensors["model.embed_tokens.weight"][:256].clone()
    save_file(tensors, model / "model.safetensors")
    _edit_config(model, vocab_size=256)
    convert_fails(model, tmp_path / "out", "tokenizer.json", "tokenizer has token id", "vocab_size is 256")


def test_spm_tokenizer_larger_than_vocab_size_is_cut_as_llama_cpp_does(model: Path, tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """llama.cpp's converter keeps the first vocab_size pieces of tokenizer.model and warns: so do we
    (the pieces past the embedding have no row; its output must stay identical to llama.cpp's)."""
    tensors = load_file(model / "model.safetensors")
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        tensors[name] = tensors[name][:560].clone()
    save_file(tensors, model / "model.safetensors")
    _edit_config(model, vocab_size=560)
    with caplog.at_level(logging.WARNING):
        code, output = convert(model, tmp_path / "out")
    assert code == 0, output
    assert any("tokenizer.model" in r.getMessage() and "out of range" in r.getMessage() for r in caplog.records)
    reader = gguf.GGUFReader(tmp_path / "out" / "m.gguf")
    assert len(reader.get_field(gguf.Keys.Tokenizer.LIST).data) == 560


def test_tokenizer_smaller_than_vocab_size_is_padded(model: Path, tmp_path: Path) -> None:
    """Fewer tokens than vocab_size (embedding rows reserved for later): [PADi] tokens fill the gap, as in
    llama.cpp, and the file loads."""
    from hqq2gguf.runtime import eval_logits, load_model

    tensors = load_file(model / "model.safetensors")
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        tensors[name] = torch.cat([tensors[name], torch.zeros(40, 64)])
    save_file(tensors, model / "model.safetensors")
    _edit_config(model, vocab_size=640)
    before = tree_digest(model)
    code, output = convert(model, tmp_path / "out")
    assert code == 0, output
    assert tree_digest(model) == before
    path = tmp_path / "out" / "m.gguf"
    tokens = gguf.GGUFReader(path).get_field(gguf.Keys.Tokenizer.LIST)
    assert len(tokens.data) == 640 and tokens.contents(639) == "[PAD639]"
    logits = eval_logits(load_model(path), [1, 5, 7])
    assert logits.shape == (3, 640) and bool((abs(logits) < 1e4).all())
