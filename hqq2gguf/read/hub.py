"""A Hugging Face Hub id (``Qwen/Qwen2.5-0.5B-Instruct``) as a local model directory, through huggingface_hub.

    model = resolve_model("Qwen/Qwen2.5-0.5B-Instruct", revision=None)   # a path that exists is returned as is
    model.path      # the snapshot directory in the standard cache (HF_HOME / HF_HUB_CACHE)
    model.hub_id    # "Qwen/Qwen2.5-0.5B-Instruct" (None for a local path)

Only the files a conversion reads are fetched (:data:`HUB_FILES`: config, safetensors and their index, tokenizer
files, chat template, model card), at ``revision`` (a branch, tag or commit; default ``main``). huggingface_hub's
own conventions apply unchanged: HF_TOKEN for private and gated repositories, HF_HUB_OFFLINE=1 to use only what
the cache holds. Every failure (unknown id, unknown revision, offline and not cached, gated) is one line.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from hqq2gguf.errors import InputError, OptionError

logger = logging.getLogger(__name__)

#: What a conversion reads from a repository (fnmatch patterns, as huggingface_hub's ``allow_patterns``).
HUB_FILES = (
    "config.json", "generation_config.json", "model*.safetensors", "model.safetensors.index.json",
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "tekken.json", "chat_template.jinja", "chat_template.json", "modules.json",
    "README.md",
)
# owner/name as the Hub spells ids: one slash, no "..", names of letters, digits and "-_.".
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


@dataclass(frozen=True)
class ResolvedModel:
    path: Path
    hub_id: str | None = None
    """The Hub id the path was downloaded for (llama.cpp's converter names the model after it)."""


def snapshot_repo_id(path: Path) -> str | None:
    """The Hub id of a snapshot directory of the standard cache (``models--org--name/snapshots/<commit>``), else
    None: such a directory is named by its commit, so names must come from the repository instead."""
    if path.parent.name != "snapshots" or not _COMMIT.match(path.name):
        return None
    storage = path.parent.parent.name
    return storage.removeprefix("models--").replace("--", "/", 1) if storage.startswith("models--") else None


def is_hub_id(text: str) -> bool:
    """Whether ``text`` is spelled like a Hub id (``owner/name``); a path that exists always wins."""
    return bool(_HUB_ID.match(text)) and ".." not in text and not text.endswith((".gguf", ".safetensors"))


def resolve_model(model: str | Path, revision: str | None = None) -> ResolvedModel:
    """``model`` as a local path: itself when it exists (or is not spelled like a Hub id), else the snapshot of
    that Hub id at ``revision``, downloaded into (or found in) the standard cache."""
    path = Path(model)
    if path.exists() or not is_hub_id(str(model)):
        if revision is not None:
            raise OptionError(f"--revision {revision!r} applies to Hugging Face Hub ids, and {str(model)!r} is a "
                              "local path")
        return ResolvedModel(path)
    return ResolvedModel(_download(str(model), revision), hub_id=str(model))


def _download(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import constants, snapshot_download

    where = f"Hugging Face Hub model {repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    logger.info("resolving %s (cache: %s)", where, constants.HF_HUB_CACHE)
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(HUB_FILES)))
    except Exception as e:  # noqa: BLE001 - every huggingface_hub failure becomes one clear line
        raise InputError(_explain(e, repo_id, revision, constants.HF_HUB_CACHE), file=repo_id) from e


def _explain(e: Exception, repo_id: str, revision: str | None, cache: str) -> str:
    from huggingface_hub import errors

    if isinstance(e, errors.GatedRepoError):
        return ("the repository is gated: accept its conditions on huggingface.co, then set HF_TOKEN to a token "
                "of that account")
    if isinstance(e, errors.RevisionNotFoundError):
        return f"revision {revision!r} does not exist in this repository (give a branch, tag or commit)"
    if isinstance(e, errors.RepositoryNotFoundError):
        return ("no such model on the Hugging Face Hub (check the id; for a private repository set HF_TOKEN), and "
                "no local path of that name")
    if isinstance(e, errors.LocalEntryNotFoundError):
        what = f"revision {revision!r}" if revision else "this model"
        return (f"not a local path, and {what} is not in the Hugging Face cache ({cache}) while the Hub cannot be "
                "reached (HF_HUB_OFFLINE=1 or no network): download it once online, or give a local directory")
    if isinstance(e, errors.HFValidationError):
        return f"not a local path nor a valid Hugging Face Hub id: {e}"
    if isinstance(e, OSError):
        return f"cannot download from the Hugging Face Hub: {e.strerror or e}"
    return f"cannot download from the Hugging Face Hub: {e}"
