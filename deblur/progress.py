"""Progress people can read where it lands: tqdm bars on a terminal; elsewhere (CI logs, `ray job logs`, a file)
a plain line now and then and one when the stage ends, instead of a wall of carriage-return frames."""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm import tqdm

#: seconds between the lines of a stage that is not on a terminal
EVERY_S = 30.0


def on_terminal() -> bool:
    """Whether progress goes to a person watching (stderr, where tqdm draws, is a terminal)."""
    return sys.stderr.isatty()


class Lines:
    """tqdm's `update`/`close` (and context manager) as lines on stderr: every EVERY_S, and a last one."""

    def __init__(self, total: int, desc: str, unit: str):
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self.start = self.shown = time.monotonic()
        self.closed = False

    def _line(self, done: bool) -> None:
        took = time.monotonic() - self.start
        rate = f"{self.n / took:.2f} {self.unit}/s" if took > 0 else ""
        when = f"in {took:.1f} s" if done else f"{100 * self.n / max(self.total, 1):.0f} %, {took:.0f} s"
        print(f"{self.desc}: {self.n}/{self.total} {self.unit} {when} ({rate})", file=sys.stderr, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.shown >= EVERY_S:
            self.shown = time.monotonic()
            self._line(False)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._line(True)

    def __enter__(self) -> Lines:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def bar(total: int, desc: str, unit: str, enabled: bool = True) -> tqdm | Lines:
    """A stage's progress: a tqdm bar on a terminal, `Lines` elsewhere, nothing at all when not `enabled`."""
    if not enabled:
        return tqdm(total=total, disable=True)
    if on_terminal():
        return tqdm(total=total, desc=desc, unit=unit)
    return Lines(total, desc, unit)
