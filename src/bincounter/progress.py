"""Progress: a tqdm bar on an interactive terminal, a plain line every ~10% otherwise (CloudWatch, CI)."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("bincounter")


class _PlainProgress:
    def __init__(self, total: int | None, desc: str, every: float = 0.1):
        self.total, self.desc, self.n = total, desc, 0
        self.step = max(1, int((total or 0) * every)) if total else 100
        self.t0 = time.monotonic()
        self.postfix = ""

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n % self.step < n or (self.total and self.n == self.total):
            rate = self.n / max(time.monotonic() - self.t0, 1e-9)
            of = f"/{self.total}" if self.total else ""
            log.info("%s %d%s (%.1f/s)%s", self.desc, self.n, of, rate, self.postfix)

    def set_postfix_str(self, s: str) -> None:
        self.postfix = " " + s

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def progress(total: int | None, desc: str, enabled: bool = True, unit: str = "it"):
    """A context-manager progress reporter with `.update(n)` and `.set_postfix_str(s)`."""
    if not enabled:
        return _Silent()
    if sys.stderr.isatty():
        from tqdm import tqdm  # here, not at the top: the trainer runs where tqdm is not installed

        return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False)
    return _PlainProgress(total, desc)


class _Silent(_PlainProgress):
    def __init__(self):
        super().__init__(None, "")

    def update(self, n: int = 1) -> None:
        pass
