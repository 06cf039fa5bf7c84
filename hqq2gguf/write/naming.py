"""Where the output goes: ``-o FILE`` as given, or a file named by the GGUF naming convention."""

from __future__ import annotations

from pathlib import Path

import gguf

from hqq2gguf.errors import OutputError
from hqq2gguf.options import ConvertOptions
from hqq2gguf.sources import NameParts

MAX_STEM_BYTES = 200  # file systems cap a name at 255 bytes; leave room for ".gguf" and the temporary name


def output_path(input_path: Path, options: ConvertOptions, names: NameParts) -> Path:
    """``-o FILE`` as given; ``-o DIR`` or none: the GGUF naming convention, in DIR or the current dir."""
    explicit = explicit_output(options)
    if explicit is not None:
        return explicit
    directory = options.output if options.output is not None else Path.cwd()
    stem = gguf.naming_convention(names.name or input_path.stem, names.basename, names.finetune, names.version,
                                  names.size_label, options.label)
    return directory / f"{safe_file_stem(stem)}.gguf"


def explicit_output(options: ConvertOptions) -> Path | None:
    """``-o FILE`` (a name ending in .gguf), or None when the name comes from the model (``-o DIR`` or none)."""
    if options.output is None or options.output.is_dir():
        return None
    if options.output.suffix != ".gguf":
        raise OutputError("output file name must end in .gguf (or give an existing directory)", file=options.output)
    return options.output


def safe_file_stem(stem: str) -> str:
    """Metadata is not a path: one safe file-name component whatever the model card or GGUF says
    (no separators, no leading dot, no "..", at most MAX_STEM_BYTES bytes of UTF-8)."""
    safe = "".join(c if c.isalnum() or c in "-_.+" else "-" for c in stem).strip(".-")
    safe = safe.encode("utf-8")[:MAX_STEM_BYTES].decode("utf-8", errors="ignore").rstrip(".-")
    return safe or "model"
