"""Progress display: a live tqdm bar on a terminal, plain lines at an interval elsewhere.

A bar redrawn with carriage returns turns a CI log, a ``nohup`` file or a Kaggle
notebook's output into one enormous line, so when the stream is not a terminal the
same progress is printed as whole lines, at most one per ``interval`` seconds (and
one when the work ends). ``SCROLLSEG_PROGRESS=bar|plain|off`` overrides the choice;
``SCROLLSEG_PROGRESS_INTERVAL`` sets the seconds between plain lines.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Iterator

from tqdm import tqdm

DEFAULT_INTERVAL_S = 30.0


def _mode(stream, enabled: bool) -> str:
    if not enabled:
        return "off"
    forced = os.environ.get("SCROLLSEG_PROGRESS", "").strip().lower()
    if forced in ("bar", "plain", "off"):
        return forced
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "plain"


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60:02d}:{rest % 60:02d}"


def _format_value(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class Progress:
    """Counts work done toward ``total``, with named fields shown after the count.

    Iterating over it walks ``iterable`` and counts each item; ``update(n)`` counts by
    hand. One interface whatever the display: a tqdm bar, plain lines, or nothing.
    """

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
                 enabled: bool = True, leave: bool = True, initial: int = 0, stream=None, interval: float | None = None):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.desc, self.unit, self.leave = total, desc, unit, leave
        self.stream = stream if stream is not None else sys.stderr
        self.mode = _mode(self.stream, enabled)
        self.interval = interval if interval is not None else float(os.environ.get("SCROLLSEG_PROGRESS_INTERVAL", DEFAULT_INTERVAL_S))
        self.n = self.initial = initial
        self.fields: dict = {}
        self.start = self.last_line = time.monotonic()
        self._printed_n: int | None = None
        self._bar = (tqdm(total=total, desc=desc, unit=unit, initial=initial, leave=leave, file=self.stream, dynamic_ncols=True)
                     if self.mode == "bar" else None)

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode == "plain" and time.monotonic() - self.last_line >= self.interval:
            self._line()

    def set_fields(self, **fields) -> None:
        self.fields.update(fields)
        if self._bar is not None:
            self._bar.set_postfix({k: _format_value(v) for k, v in self.fields.items()}, refresh=False)

    def rate(self) -> float:
        """Units per second since the bar started (or resumed)."""
        elapsed = time.monotonic() - self.start
        return (self.n - self.initial) / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float | None:
        rate = self.rate()
        return (self.total - self.n) / rate if self.total is not None and rate > 0 else None

    def describe(self) -> str:
        """The plain line: count, share, rate, elapsed time, ETA, then the fields."""
        count = f"{self.n}/{self.total} {self.unit} ({self.n / self.total:.0%})" if self.total else f"{self.n} {self.unit}"
        parts = [f"{self.desc} {count}".strip(), f"{self.rate():.3g} {self.unit}/s", f"elapsed {format_duration(time.monotonic() - self.start)}"]
        eta = self.eta()
        if eta is not None and self.n < (self.total or 0):
            parts.append(f"ETA {format_duration(eta)}")
        parts += [f"{k} {_format_value(v)}" for k, v in self.fields.items()]
        return ", ".join(parts)

    def _line(self) -> None:
        self.stream.write(self.describe() + "\n")
        self.stream.flush()
        self.last_line = time.monotonic()
        self._printed_n = self.n

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.mode == "plain" and self.leave and self._printed_n != self.n:
            self._line()
        self.mode = "off"


def echo(message: str, stream=None) -> None:
    """Write one line without tearing a live bar (tqdm clears and redraws its bars)."""
    stream = stream if stream is not None else sys.stderr
    if getattr(tqdm, "_instances", None):
        tqdm.write(message, file=stream)
    else:
        # one write per line: ranks sharing a terminal or pipe then never splice lines
        stream.write(message + "\n")
        stream.flush()
