"""Split GGUF input: a set ``name-00001-of-00003.gguf`` ... as llama.cpp's converter (``--split-max-size``,
``--split-max-tensors``) and ``llama-gguf-split`` write it, read from its first part.

Every part carries ``split.no`` (0-based), ``split.count`` and ``split.tensors.count`` (the whole set's); the
first part also holds the model's metadata. The other parts are found by llama.cpp's naming rule
(``llama_split_path``) and checked to belong to the same set before any tensor data is read.
"""

from __future__ import annotations

import re
from pathlib import Path

import gguf

from hqq2gguf.errors import InputError
from hqq2gguf.read.gguf_reader import GgufReader

SPLIT_KEYS = (gguf.Keys.Split.LLM_KV_SPLIT_NO, gguf.Keys.Split.LLM_KV_SPLIT_COUNT,
              gguf.Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT)
_PART_NAME = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def part_name(prefix: str, no: int, count: int) -> str:
    """llama.cpp's ``llama_split_path``: the file name of part ``no`` (1-based) of ``count``."""
    return f"{prefix}-{no:05d}-of-{count:05d}.gguf"


def _int_field(reader: GgufReader, key: str) -> int | None:
    field = reader.get_field(key)
    if field is None:
        return None
    value = field.contents()
    return value if isinstance(value, int) and not isinstance(value, bool) else -1


def split_parts(path: Path, reader: GgufReader) -> list[Path]:
    """All parts of the set whose first part is ``path`` (``[path]`` for an unsplit file); one line of error
    when ``path`` is not the first part, its name breaks llama.cpp's rule, or a part is missing."""
    count = _int_field(reader, gguf.Keys.Split.LLM_KV_SPLIT_COUNT)
    if count is None or count == 1:
        return [path]
    if count < 1:
        raise InputError(f"split.count is {count}: corrupt split GGUF", file=path)
    match = _PART_NAME.match(path.name)
    no = _int_field(reader, gguf.Keys.Split.LLM_KV_SPLIT_NO)
    if no is not None and no != 0 and match:
        first = path.with_name(part_name(match["prefix"], 1, count))
        raise InputError(f"this is part {no + 1} of a split GGUF of {count} parts: give its first part, {first}",
                         file=path)
    if not match or int(match["no"]) != 1 or int(match["count"]) != count:
        raise InputError(f"split GGUF of {count} parts whose name does not follow llama.cpp's split naming "
                         f"(<name>-00001-of-{count:05d}.gguf), so its other parts cannot be found", file=path)
    parts = [path.with_name(part_name(match["prefix"], i, count)) for i in range(1, count + 1)]
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise InputError(f"split GGUF of {count} parts: part {missing[0]!r} is missing ({len(missing)} of {count} "
                         "missing): finish the download", file=path)
    return parts


def check_part(reader: GgufReader, part: Path, index: int, count: int) -> None:
    """Part ``index`` (0-based) must say it is that part of a set of ``count``: otherwise it belongs to another
    set (a foreign file under the expected name)."""
    no = _int_field(reader, gguf.Keys.Split.LLM_KV_SPLIT_NO)
    its_count = _int_field(reader, gguf.Keys.Split.LLM_KV_SPLIT_COUNT)
    if no != index or its_count != count:
        said = "no split.* keys" if no is None or its_count is None else f"part {no + 1} of {its_count}"
        raise InputError(f"expected part {index + 1} of {count} of this split GGUF, but the file says {said}: it "
                         "belongs to another split set", file=part)


def check_set(first: GgufReader, readers: list[GgufReader], parts: list[Path]) -> None:
    """The set's tensors are each in one part, and add up to the first part's ``split.tensors.count``."""
    if len(parts) == 1:
        return
    for i, (reader, part) in enumerate(zip(readers, parts)):
        check_part(reader, part, i, len(parts))
    seen: dict[str, Path] = {}
    for reader, part in zip(readers, parts):
        for t in reader.tensors:
            if t.name in seen:
                raise InputError(f"tensor also in {seen[t.name].name!r}: the parts come from different split sets",
                                 file=part, tensor=t.name)
            seen[t.name] = part
    expected = _int_field(first, gguf.Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT)
    if expected is not None and expected != len(seen):
        raise InputError(f"the first part's split.tensors.count is {expected} but the {len(parts)} parts hold "
                         f"{len(seen)} tensors: the parts come from different split sets", file=parts[0])
