"""Progress for long work: a tqdm bar on an interactive stderr, periodic log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType

logger = logging.getLogger("hqq2gguf.progress")


class Progress:
    def __init__(self, total: int, what: str, *, log_every_s: float = 10.0) -> None:
        self.total = max(total, 1)
        self.what = what
        self.done = 0
        self._log_every_s = log_every_s
        self._last_log = time.monotonic()
        self._bar = None
        if sys.stderr.isatty() and logger.isEnabledFor(logging.INFO):
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="B", unit_scale=True, desc=what, leave=False)

    def __enter__(self) -> "Progress":
        return self

    def update(self, n: int, item: str = "") -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last_log >= self._log_every_s:
            self._last_log = now
            logger.info("%s: %.0f%% (%s)", self.what, 100 * self.done / self.total, item)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.close()
