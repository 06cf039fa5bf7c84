"""Models that exercise llama.cpp's per-tensor type rules, for tests/test_recipes.py.

Two kinds:

* :data:`HF_MODELS` -- tiny Hugging Face models converted to F16 GGUF by hqq2gguf (the real pipeline);
* :data:`SYNTHETIC_MODELS` -- F16 GGUFs written directly: real hyper-parameters (80 layers, 8 experts,
  Falcon, odd row lengths) with tensors of only a few rows. Types depend on names, the row length
  ne0 and the hyper-parameters, never on the number of rows, and llama.cpp's quantizer does not
  check tensor shapes against the hyper-parameters, so these are cheap stand-ins for huge models.

:func:`snapshot_tensors` rebuilds the tensor list of the dense models of llama.cpp's
``tests/snapshots/*.schema`` (which list only the tensors whose type differs from the default).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
import transformers

import tiny_models
from hqq2gguf.recipes import ModelInfo, TensorInfo

# ---------------------------------------------------------------- tiny HF models, converted by hqq2gguf

_LLAMA = dict(max_position_embeddings=256, initializer_range=0.02, rms_norm_eps=1e-5, rope_theta=10000.0)

HF_MODELS: dict[str, tiny_models.TinyModel] = {
    "llama2": tiny_models.TINY_MODELS["llama2"],  # hidden 64: every K-quant falls back
    "qwen2-tied": tiny_models.TINY_MODELS["qwen2"],
    "phi3-qkv": tiny_models.TINY_MODELS["phi3"],
    "gemma3-tied": tiny_models.TINY_MODELS["gemma3"],
    # ne0 multiple of 256, GQA 4, 16 layers (use_more_bits pattern)
    "llama-h256-gqa4-l16": tiny_models.TinyModel(
        "llama-h256-gqa4-l16", transformers.LlamaConfig,
        dict(_LLAMA, hidden_size=256, intermediate_size=512, num_hidden_layers=16, num_attention_heads=8,
             num_key_value_heads=2), tokenizer="llama-spm", dtype="f16"),
    # SmolLM2-like: hidden 576 = 64*9 (K-quants fall back), ffn_down ne0 768 (K-quants fit), GQA 3
    "llama-h576-gqa3-l8": tiny_models.TinyModel(
        "llama-h576-gqa3-l8", transformers.LlamaConfig,
        dict(_LLAMA, hidden_size=576, intermediate_size=768, num_hidden_layers=8, num_attention_heads=9,
             num_key_value_heads=3), tokenizer="llama-spm", dtype="f16"),
    # tied embeddings, no GQA, 9 layers
    "llama-h256-mha-tied-l9": tiny_models.TinyModel(
        "llama-h256-mha-tied-l9", transformers.LlamaConfig,
        dict(_LLAMA, hidden_size=256, intermediate_size=256, num_hidden_layers=9, num_attention_heads=4,
             num_key_value_heads=4), tokenizer="llama-spm", dtype="f16", tie_word_embeddings=True),
}


# ---------------------------------------------------------------- synthetic F16 GGUFs

@dataclass(frozen=True)
class SyntheticModel:
    """An F16 GGUF with the hyper-parameters of a real model and a few rows per tensor."""

    arch: str
    n_layer: int
    hidden: int
    n_head: int
    n_head_kv: int
    n_ff: int = 512
    n_expert: int = 0
    fused_qkv: bool = False
    gated_ffn: bool = True
    tied: bool = False
    shared_expert: bool = False
    extra: tuple[tuple[str, tuple[int, ...]], ...] = ()
    """More tensors: (name, numpy shape); 1-D ones are written F32."""
    rows: int = 8

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, numpy shape) of every tensor; only ne0 (the last axis) is realistic."""
        rows, h = self.rows, self.hidden
        out: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (rows, h)), ("output_norm.weight", (h,))]
        if not self.tied:
            out.append(("output.weight", (rows, h)))
        for i in range(self.n_layer):
            p = f"blk.{i}."
            out.append((p + "attn_norm.weight", (h,)))
            names = ["attn_qkv"] if self.fused_qkv else ["attn_q", "attn_k", "attn_v"]
            out += [(p + n + ".weight", (rows, h)) for n in names + ["attn_output"]]
            out += self._ffn(p)
        return out + list(self.extra)

    def _ffn(self, p: str) -> list[tuple[str, tuple[int, ...]]]:
        rows, h, e = self.rows, self.hidden, self.n_expert
        if e:
            out = [(p + "ffn_gate_inp.weight", (e, h)), (p + "ffn_gate_exps.weight", (e, rows, h)),
                   (p + "ffn_up_exps.weight", (e, rows, h)), (p + "ffn_down_exps.weight", (e, rows, self.n_ff))]
            if self.shared_expert:
                out += [(p + "ffn_up_shexp.weight", (rows, h)), (p + "ffn_down_shexp.weight", (rows, self.n_ff))]
            return out
        gate = [(p + "ffn_gate.weight", (rows, h))] if self.gated_ffn else []
        return gate + [(p + "ffn_up.weight", (rows, h)), (p + "ffn_down.weight", (rows, self.n_ff))]

    def write(self, path: Path) -> Path:
        w = gguf.GGUFWriter(path, self.arch)
        w.add_context_length(256)
        w.add_embedding_length(self.hidden)
        w.add_block_count(self.n_layer)
        w.add_feed_forward_length(self.n_ff)
        w.add_head_count(self.n_head)
        w.add_head_count_kv(self.n_head_kv)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_layer_norm_eps(1e-5)
        w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
        if self.n_expert:
            w.add_expert_count(self.n_expert)
            w.add_expert_used_count(2)
        rng = np.random.default_rng(0)
        for name, shape in self.tensors():
            dtype = np.float32 if len(shape) == 1 else np.float16
            w.add_tensor(name, rng.standard_normal(shape).astype(dtype))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return path


SYNTHETIC_MODELS: dict[str, SyntheticModel] = {
    "syn-llama-70b": SyntheticModel("llama", 80, 256, 8, 1),  # LLM_TYPE_70B: attn_v raised to Q5_K
    "syn-llama-65b": SyntheticModel("llama", 80, 256, 8, 8),  # 80 layers, no GQA: not "70B"
    "syn-qwen2-80": SyntheticModel("qwen2", 80, 256, 4, 4, tied=True),  # qwen2 is "70B" at 80 layers
    "syn-mixtral-8x": SyntheticModel("llama", 4, 256, 8, 2, n_expert=8),  # attn_v/k Q8_0, attn_output Q5_K
    "syn-moe-4x-l16": SyntheticModel("qwen2moe", 16, 256, 4, 1, n_ff=256, n_expert=4, shared_expert=True),
    "syn-falcon-tied": SyntheticModel("falcon", 8, 256, 8, 1, fused_qkv=True, gated_ffn=False, tied=True),
    "syn-phi3-qkv-gqa4": SyntheticModel("phi3", 8, 256, 8, 2, fused_qkv=True),
    "syn-odd-shapes": SyntheticModel(
        "llama", 8, 96, 3, 1, n_ff=48,  # ne0 96: 32-blocks only; ffn_down ne0 48: F16 fallback
        extra=(("position_embd.weight", (8, 96)), ("blk.0.ffn_gate_inp.weight", (4, 96)),
               ("blk.1.row.weight", (1, 96)), ("rope_freqs.weight", (16,)), ("blk.2.attn_q.bias", (8, 96)))),
}


# ---------------------------------------------------------------- llama.cpp's snapshot schemas

@dataclass(frozen=True)
class Snapshot:
    """A dense model of tests/snapshots: its hyper-parameters, and per ftype the listed exceptions."""

    name: str
    arch: str
    head_dim: int
    info: dict[str, int] = field(default_factory=dict)
    sections: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)
    """ftype name -> (default type name, {tensor: type name})."""


# schema file -> (architecture, head_dim): dense models whose tensor list can be rebuilt from the header
SNAPSHOT_MODELS: dict[str, tuple[str, int]] = {
    "qwen3-0.6b": ("qwen3", 128),
    "qwen3-14b": ("qwen3", 128),
    "meta-llama-3.1-70b-instruct": ("llama", 128),
    "gemma-3-4b-it": ("gemma3", 256),
}


def read_snapshot(path: Path, arch: str, head_dim: int) -> Snapshot:
    snap = Snapshot(path.stem, arch, head_dim)
    current: dict[str, str] | None = None
    for line in path.read_text().splitlines():
        if line.startswith("# n_embd="):
            snap.info.update({k: int(v) for k, v in (kv.split("=") for kv in line[2:].split(", "))})
        elif not line or line.startswith("#"):
            continue
        elif line.startswith("["):
            ftype, default = line[1:].split("] ")
            current = {}
            snap.sections[ftype] = (default, current)
        elif current is not None:
            name, qtype = line.rsplit(" ", 1)
            current[name] = qtype
    return snap


def snapshot_tensors(snap: Snapshot) -> tuple[ModelInfo, list[TensorInfo]]:
    """The quantizable tensors of a dense snapshot model (numpy shapes: (ne1, ne0))."""
    i = snap.info
    n_embd, n_ff, n_vocab, hd = i["n_embd"], i["n_ff"], i["n_vocab"], snap.head_dim
    q_dim, kv_dim = i["n_head"] * hd, i["n_head_kv"] * hd
    listed = {name for _, overrides in snap.sections.values() for name in overrides}
    tensors = [TensorInfo("token_embd.weight", (n_vocab, n_embd))]
    if "output.weight" in listed:
        tensors.append(TensorInfo("output.weight", (n_vocab, n_embd)))
    for layer in range(i["n_layer"]):
        p = f"blk.{layer}."
        shapes = {"attn_q": (q_dim, n_embd), "attn_k": (kv_dim, n_embd), "attn_v": (kv_dim, n_embd),
                  "attn_output": (n_embd, q_dim), "ffn_gate": (n_ff, n_embd), "ffn_up": (n_ff, n_embd),
                  "ffn_down": (n_embd, n_ff)}
        tensors += [TensorInfo(p + n + ".weight", s) for n, s in shapes.items()]
    info = ModelInfo(snap.arch, i["n_layer"], i["n_head"], i["n_head_kv"], i.get("n_expert", 0))
    return info, tensors
