"""A Hugging Face model directory: config, weight shards (validated, lazy) and tokenizer files.

Tensor order is the one llama.cpp's converter uses — shards sorted by file name, tensors sorted by
name within a shard — so that our output lists tensors in the same order as its output.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from hqq2gguf.errors import InputError, UnsupportedError
from hqq2gguf.read.safetensors import read_safetensors_header

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


@dataclass(frozen=True)
class SourceTensor:
    """A tensor of the input, known by name, shape and dtype before its data is read."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    file: Path
    load: Callable[[], torch.Tensor] = field(repr=False, compare=False)


@dataclass
class HfModel:
    path: Path
    config: dict[str, Any]  # hyper-parameters as llama.cpp's converter sees them (AutoConfig.to_dict())
    architecture: str
    tensors: dict[str, SourceTensor]


def load_config(path: Path) -> dict[str, Any]:
    """Read config.json with clear errors, then the hyper-parameters as transformers resolves them.

    llama.cpp's converter reads ``AutoConfig.from_pretrained(dir).to_dict()``, which fills defaults
    (e.g. ``head_dim``, ``rope_theta``) that a bare config.json may omit; reading it the same way keeps
    our metadata identical to its output. Without transformers' help (unknown ``model_type``) the raw
    JSON is used, as the converter does.
    """
    config_file = path / "config.json"
    if not config_file.is_file():
        raise InputError("config.json is missing: not a Hugging Face model directory", file=path)
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"invalid JSON: {e}", file=config_file) from e
    if not isinstance(raw, dict):
        raise InputError("config.json is not a JSON object", file=config_file)
    archs = raw.get("architectures")
    if not isinstance(archs, list) or not archs or not isinstance(archs[0], str):
        raise InputError("config.json has no 'architectures' list naming the model class", file=config_file)
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path, trust_remote_code=False, local_files_only=True).to_dict()
    except Exception as e:  # noqa: BLE001 - any failure means "use the raw JSON", as the converter does
        logger.debug("AutoConfig could not read %s (%s); using the raw config.json", config_file, e)
        config = raw
    # The architecture is chosen before text_config is merged in (its "architectures" may be None).
    architecture = archs[0]
    text_config = config.get("text_config")
    if isinstance(text_config, dict):
        text_archs = text_config.get("architectures")
        if isinstance(text_archs, list) and text_archs and isinstance(text_archs[0], str):
            architecture = text_archs[0]
        config = {**config, **text_config}
    config["architectures"] = [architecture]
    return config


def open_hf_dir(path: Path, *, allow_pickle: bool = False) -> HfModel:
    """Index a Hugging Face directory without reading any tensor data."""
    if not path.is_dir():
        raise InputError("not a directory", file=path)
    config = load_config(path)
    architecture = config["architectures"][0]
    tensors = _index_safetensors(path)
    if tensors is None:
        tensors = _index_pickle(path, allow_pickle)
    if not tensors:
        raise InputError("no weights found (expected model*.safetensors)", file=path)
    return HfModel(path=path, config=config, architecture=architecture, tensors=tensors)


def _index_safetensors(path: Path) -> dict[str, SourceTensor] | None:
    index_file = path / "model.safetensors.index.json"
    weight_map: dict[str, str] = {}
    if index_file.is_file():
        try:
            index = json.loads(index_file.read_text(encoding="utf-8"))
            weight_map = index["weight_map"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise InputError(f"invalid shard index ({e})", file=index_file) from e
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise InputError("'weight_map' is not an object of tensor name -> file name", file=index_file)
        parts = sorted(set(weight_map.values()))
        for part in parts:
            if Path(part).name != part:
                raise InputError(f"shard name {part!r} is not a plain file name", file=index_file)
            if not (path / part).is_file():
                missing = sorted(n for n, p in weight_map.items() if p == part)
                raise InputError(
                    f"missing shard {part!r} referenced by the index ({len(missing)} tensors, e.g. {missing[0]!r})",
                    file=index_file,
                )
    else:
        parts = sorted(p.name for p in path.iterdir() if p.name.startswith("model") and p.name.endswith(".safetensors"))
    if not parts:
        return None

    tensors: dict[str, SourceTensor] = {}
    for part in parts:
        header, _ = read_safetensors_header(path / part)
        for name, st in header.items():
            if name in tensors:
                raise InputError(f"tensor also stored in {tensors[name].file.name!r}", file=path / part, tensor=name)
            tensors[name] = SourceTensor(name, st.shape, st.torch_dtype, st.file, st.load)
    if weight_map:
        _check_index(index_file, weight_map, tensors)
    return tensors


def _check_index(index_file: Path, weight_map: dict[str, str], tensors: dict[str, SourceTensor]) -> None:
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
        raise InputError(
            f"{len(missing)} tensors listed in the index are in no shard (e.g. {missing[0]!r} in "
            f"{weight_map[missing[0]]!r}): incomplete download?", file=index_file,
        )
    extra = sorted(set(tensors) - set(weight_map))
    if extra:
        raise InputError(f"shards hold {len(extra)} tensors the index does not list (e.g. {extra[0]!r})", file=index_file)


def _index_pickle(path: Path, allow_pickle: bool) -> dict[str, SourceTensor]:
    parts = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
    if not parts:
        return {}
    if not allow_pickle:
        raise UnsupportedError(
            "only pickle checkpoints found; pickle files can execute code when loaded, so they are refused. "
            "Convert them to safetensors, or pass --allow-pickle to load them with torch.load(weights_only=True)",
            file=parts[0],
        )
    tensors: dict[str, SourceTensor] = {}
    for part in parts:
        logger.warning("loading pickle checkpoint %s with torch.load(weights_only=True)", part)
        try:
            state = torch.load(part, map_location="cpu", mmap=True, weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises many types for a bad/hostile pickle
            raise InputError(f"cannot load pickle checkpoint safely: {e}", file=part) from e
        if not isinstance(state, dict):
            raise InputError("pickle checkpoint is not a state dict", file=part)
        for name in sorted(state):
            value = state[name]
            if isinstance(value, torch.Tensor):
                tensors[name] = SourceTensor(name, tuple(value.shape), value.dtype, part, lambda v=value: v)
    return tensors
