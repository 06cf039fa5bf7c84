"""One error hierarchy for everything a user can cause.

Library code raises these; the CLI turns them into a one-line message and a non-zero exit code.
Never ``assert`` to validate user input: asserts vanish under ``python -O``.
"""

from __future__ import annotations

from pathlib import Path


class Hqq2GgufError(Exception):
    """Base class: a problem with the user's input, options or environment (not a bug)."""

    def __init__(self, reason: str, *, file: str | Path | None = None, tensor: str | None = None) -> None:
        self.reason = reason
        self.file = Path(file) if file is not None else None
        self.tensor = tensor
        super().__init__(self.message)

    @property
    def message(self) -> str:
        where = []
        if self.file is not None:
            where.append(str(self.file))
        if self.tensor is not None:
            where.append(f"tensor {self.tensor!r}")
        text = f"{': '.join(where)}: {self.reason}" if where else self.reason
        # One line, whatever a wrapped library message holds (the CLI prints exactly one line).
        return " ".join(line.strip() for line in text.splitlines() if line.strip())


class InputError(Hqq2GgufError):
    """The input model is missing, corrupt, truncated or inconsistent."""


class UnsupportedError(Hqq2GgufError):
    """The input is valid but uses something hqq2gguf does not convert (architecture, dtype, ...)."""


class OptionError(Hqq2GgufError):
    """The options contradict each other or the input."""


class OutputError(Hqq2GgufError):
    """The output cannot be written (exists, unwritable, disk full)."""


class DeviceError(Hqq2GgufError):
    """A device was asked for (a GPU) that the installed llama-cpp-python build cannot use."""


class ResourceError(Hqq2GgufError):
    """The machine ran out of something the conversion needs (memory)."""


# What a ResourceError suggests: the streaming bound (benchmarks/convert_memory_cap.py measures it).
MEMORY_HINT = "hqq2gguf needs memory for about 3 x the largest tensor plus 1 GiB; free memory or raise the limit"
