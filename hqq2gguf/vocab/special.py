"""Special tokens, add-BOS/EOS/SEP flags, merges, normalizer flags and the chat template.

``SpecialVocab`` is ``gguf.SpecialVocab`` brought up to the behaviour of the gguf-py that llama.cpp's
converter vendors (llama-cpp-python 0.3.36).  PyPI's ``gguf`` 0.19.0 carries the same version string
but an older ``vocab.py``; the differences that change the written KV pairs are re-implemented here:

* a ``ByteLevel`` post-processor defaults add_bos/add_eos to False;
* a ``TemplateProcessing`` post-processor whose leading special token is neither the configured BOS
  nor CLS token fills in a missing ``bos_token``/``cls_token``;
* the add_X_token flags derived from ``tokenizer.json``'s post-processor win over
  ``tokenizer_config.json``'s ``add_X_token`` (PyPI lets the config overwrite them);
* ``tokenizer.json``'s normalizer (Lowercase / StripAccents / BertNormalizer, nested in Sequence)
  gives ``tokenizer.ggml.normalizer.lowercase`` / ``.strip_accents`` (keys PyPI's gguf lacks).

Everything else (merges.txt, config.json ids, id range checks) is inherited unchanged.
Chat templates are stored verbatim, never rendered.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from hqq2gguf.errors import InputError
from hqq2gguf.vocab.common import read_json

logger = logging.getLogger(__name__)

NORMALIZER_LOWERCASE_KEY = "tokenizer.ggml.normalizer.lowercase"
NORMALIZER_STRIP_ACCENTS_KEY = "tokenizer.ggml.normalizer.strip_accents"

# Special token types the vendored GGUFWriter has a handler for; the others are skipped with a
# warning, as there (cls, prefix, suffix, middle, fsep, ...).
_TOKEN_ID_KEYS = {
    "bos": gguf.Keys.Tokenizer.BOS_ID, "eos": gguf.Keys.Tokenizer.EOS_ID,
    "unk": gguf.Keys.Tokenizer.UNK_ID, "sep": gguf.Keys.Tokenizer.SEP_ID,
    "pad": gguf.Keys.Tokenizer.PAD_ID, "mask": gguf.Keys.Tokenizer.MASK_ID,
    "eot": gguf.Keys.Tokenizer.EOT_ID, "eom": gguf.Keys.Tokenizer.EOM_ID,
}
_ADD_TOKEN_KEYS = {
    "bos": gguf.Keys.Tokenizer.ADD_BOS, "eos": gguf.Keys.Tokenizer.ADD_EOS,
    "sep": gguf.Keys.Tokenizer.ADD_SEP,
}


@dataclass
class _Roles:
    """The configured bos/cls/eos/sep token texts; changes are written back to the config if any."""

    config: dict[str, Any] | None
    bos: Any = None
    cls: Any = None
    eos: Any = None
    sep: Any = None

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> _Roles:
        get = (config or {}).get
        roles = cls(config, get("bos_token"), get("cls_token"), get("eos_token"), get("sep_token"))
        if not roles.bos and roles.cls:
            roles.set_configured("bos", roles.cls)
        if not roles.eos and roles.sep:
            roles.set_configured("eos", roles.sep)
        return roles

    def set_configured(self, role: str, text: Any) -> None:
        """Set a role both here and in tokenizer_config (only when that config is non-empty)."""
        if self.config:
            self.config[f"{role}_token"] = text
            setattr(self, role, text)


def _special_id(item: dict[str, Any]) -> Any:
    return item.get("SpecialToken", {}).get("id")


def _merges_from_tokenizer_json(model: dict[str, Any], file: Path) -> list[str] | None:
    merges = model.get("merges")
    if not isinstance(merges, list) or not merges:
        return None
    first = merges[0]
    if isinstance(first, str):
        return merges
    if isinstance(first, list) and len(first) == 2 and isinstance(first[0], str):
        # transformers >= 4.45 stores pairs; spaces inside a part are written as U+0120 (' ' + 256)
        if any(" " in part for pair in merges for part in pair):
            logger.warning("spaces in merges detected, encoding them as %r", chr(ord(" ") + 256))
        return [" ".join(part.replace(" ", chr(ord(" ") + 256)) for part in pair) for pair in merges]
    raise InputError("unknown format of model.merges", file=file)


class SpecialVocab(gguf.SpecialVocab):
    """gguf.SpecialVocab with the vendored gguf-py's tokenizer.json handling (see module doc)."""

    normalizer_lowercase: bool | None
    normalizer_strip_accents: bool | None

    def __init__(self, path: Path, load_merges: bool = False,
                 special_token_types: tuple[str, ...] | list[str] | None = None,
                 n_vocab: int | None = None) -> None:
        # set before the base constructor, which loads the files through the overridden methods
        self.normalizer_lowercase = None
        self.normalizer_strip_accents = None
        super().__init__(path, load_merges=load_merges, special_token_types=special_token_types,
                         n_vocab=n_vocab)

    def add_to_gguf(self, gw: gguf.GGUFWriter, quiet: bool = False) -> None:
        if self.merges:
            gw.add_token_merges(self.merges)
        elif self.load_merges:
            logger.warning("merges requested but none found, the output may be non-functional")
        for typ, token_id in self.special_token_ids.items():
            if typ not in _TOKEN_ID_KEYS:
                logger.warning("no GGUF key for special token type %s (id %d) - skipping", typ, token_id)
                continue
            gw.add_uint32(_TOKEN_ID_KEYS[typ], token_id)
        for typ, value in self.add_special_token.items():
            if typ not in _ADD_TOKEN_KEYS:
                logger.warning("no GGUF key for add_%s_token (%s) - skipping", typ, value)
                continue
            gw.add_bool(_ADD_TOKEN_KEYS[typ], value)
        if self.chat_template is not None:
            gw.add_chat_template(self.chat_template)
        if self.normalizer_lowercase is not None:
            gw.add_bool(NORMALIZER_LOWERCASE_KEY, self.normalizer_lowercase)
        if self.normalizer_strip_accents is not None:
            gw.add_bool(NORMALIZER_STRIP_ACCENTS_KEY, self.normalizer_strip_accents)
        if not quiet:
            logger.info("special tokens %s, add flags %s", self.special_token_ids, self.add_special_token)

    # --- tokenizer.json / tokenizer_config.json -------------------------------------------------

    def _try_load_from_tokenizer_json(self, path: Path) -> bool:
        tokenizer_file = path / "tokenizer.json"
        tokenizer = read_json(tokenizer_file)
        added_tokens: Any = {}
        if tokenizer is not None:
            if self.load_merges:
                merges = _merges_from_tokenizer_json(tokenizer.get("model", {}), tokenizer_file)
                if merges is not None:
                    self.merges = merges
            if normalizer := tokenizer.get("normalizer"):
                self._parse_normalizer(normalizer)
            added_tokens = tokenizer.get("added_tokens", {})
        config = read_json(path / "tokenizer_config.json")
        roles = _Roles.from_config(config)
        if tokenizer and (post_processor := tokenizer.get("post_processor")):
            for processor in post_processor.get("processors", [post_processor]):
                self._apply_post_processor(processor, roles)
        if not config:
            return True
        self._load_chat_template(path, config)
        self._load_config_tokens(config, added_tokens)
        return True

    def _parse_normalizer(self, normalizer: dict[str, Any]) -> None:
        kind = normalizer.get("type")
        if kind == "Lowercase":
            self.normalizer_lowercase = True
        elif kind == "StripAccents":
            self.normalizer_strip_accents = True
        elif kind == "BertNormalizer":
            if "lowercase" in normalizer:
                self.normalizer_lowercase = normalizer["lowercase"]
            if "strip_accents" in normalizer:
                self.normalizer_strip_accents = normalizer["strip_accents"]
        elif kind == "Sequence":
            for inner in normalizer.get("normalizers", []):
                self._parse_normalizer(inner)

    def _apply_post_processor(self, processor: dict[str, Any], roles: _Roles) -> None:
        kind = processor.get("type")
        if kind == "ByteLevel":
            self.add_special_token.setdefault("bos", False)
            self.add_special_token.setdefault("eos", False)
        elif kind == "RobertaProcessing":
            self.add_special_token.update(bos=True, eos=True, sep=True)
            if not roles.cls and roles.config:
                roles.set_configured("cls", processor.get("cls", [roles.bos])[0])
            if not roles.sep and roles.config:
                roles.set_configured("sep", processor.get("sep", [roles.eos])[0])
        elif kind == "TemplateProcessing":
            single = processor.get("single", [])
            first, last = (self._template_single(single, roles) if len(single) > 1 else (None, None))
            if pair := processor.get("pair", []):
                self._template_pair(pair, first, last, roles)

    def _template_single(self, single: list[dict[str, Any]], roles: _Roles) -> tuple[Any, Any]:
        """Crude reading of TemplateProcessing<single>: [BOS/CLS] A [EOS] (as llama.cpp reads it)."""
        if first := _special_id(single[0]):
            if not roles.config:
                roles.bos = first
            elif first not in (roles.bos, roles.cls):
                if not roles.bos:
                    roles.set_configured("bos", first)
                if not roles.cls:
                    roles.set_configured("cls", first)
            self.add_special_token["bos"] = first in (roles.bos, roles.cls)
            if first not in (roles.bos, roles.cls):
                logger.warning("unknown leading special token %r in TemplateProcessing<single>", first)
        if last := _special_id(single[-1]):
            if not roles.config:
                roles.eos = last
            elif last != roles.eos:
                self._move_eos_to_eot(roles, last)
            self.add_special_token["eos"] = last == roles.eos
        return first, last

    def _move_eos_to_eot(self, roles: _Roles, last: Any) -> None:
        """The template ends in a token other than EOS: keep the old EOS as EOT (or EOM)."""
        for fallback in ("eot", "eom"):
            if fallback not in self.special_token_types:
                self.special_token_types = (*self.special_token_types, fallback)
                if roles.config:  # always true here: the caller only comes with a config
                    roles.config[f"{fallback}_token"] = roles.eos
                break
        else:
            logger.warning("overriding EOS token %r with %r without EOT/EOM fallback", roles.eos, last)
        roles.set_configured("eos", last)

    def _template_pair(self, pair: list[dict[str, Any]], first: Any, last: Any, roles: _Roles) -> None:
        """TemplateProcessing<pair>: a separator between A and B sets add_sep_token."""
        start = 1 if first and _special_id(pair[0]) == first else 0
        stop = -1 if last and _special_id(pair[-1]) == last else None
        if (first and start == 0) or (last and stop is None):
            logger.warning("TemplateProcessing<single> and <pair> disagree on leading/trailing tokens")
        pair = pair[start:stop]
        if not pair:
            return
        seq_a = pair[0].get("Sequence", {}).get("id")
        seq_b = pair[-1].get("Sequence", {}).get("id")
        middle = pair[1:-1]
        if seq_a != "A" or seq_b != "B" or not middle:
            return
        separators = (roles.sep, roles.eos)
        add_sep = bool(_special_id(middle[0]) in separators and _special_id(middle[0]) and not last)
        if len(middle) == 2 and _special_id(middle[1]) and _special_id(middle[1]) in separators:
            add_sep = True
        self.add_special_token["sep"] = add_sep
        if add_sep and not roles.sep and roles.config:
            roles.config["sep_token"] = roles.eos

    def _load_chat_template(self, path: Path, config: dict[str, Any]) -> None:
        alternative: Any = None
        jinja_file = path / "chat_template.jinja"
        if jinja_file.is_file():
            alternative = jinja_file.read_text(encoding="utf-8")
            extra = list((path / "additional_chat_templates").glob("*.jinja"))
            if extra:
                alternative = [{"name": "default", "template": alternative}]
                alternative += [{"name": p.stem, "template": p.read_text(encoding="utf-8")} for p in extra]
        elif (json_file := path / "chat_template.json").is_file():
            alternative = (read_json(json_file) or {}).get("chat_template")
        template = config.get("chat_template", alternative)
        if template is None or isinstance(template, (str, list)):
            self.chat_template = template
        else:
            logger.warning("bad type for chat_template in %s - ignoring", path / "tokenizer_config.json")

    def _load_config_tokens(self, config: dict[str, Any], added_tokens: Any) -> None:
        for typ in self.special_token_types:
            add_entry = config.get(f"add_{typ}_token")
            if isinstance(add_entry, bool):
                current = self.add_special_token.setdefault(typ, add_entry)
                if current != add_entry:
                    logger.warning("tokenizer_config add_%s_token=%s disagrees with the tokenizer.json "
                                   "post-processor (%s); using the latter", typ, add_entry, current)
            entry = config.get(f"{typ}_token")
            content = entry.get("content") if isinstance(entry, dict) else entry
            if not isinstance(content, str):
                continue
            token_id = next((tok.get("id") for tok in added_tokens if tok.get("content") == content), None)
            self._set_special_token(typ, token_id)
