"""When to stop and when to checkpoint: step and time budgets, deadlines and signals."""
from __future__ import annotations

import re
import signal
import time

from ..errors import ConfigError

_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?\s*$")


def parse_duration(text: str) -> float:
    """Seconds in ``"11h45m"``, ``"90m"``, ``"30s"`` or a bare number of minutes."""
    if not text:
        return 0.0
    try:
        return float(text) * 60.0
    except ValueError:
        pass
    m = _DURATION.match(text)
    if not m or not any(m.groups()):
        raise ConfigError(f"cannot read duration {text!r}; write it like 11h45m, 90m or 30s")
    h, mins, s = (float(g) if g else 0.0 for g in m.groups())
    return h * 3600 + mins * 60 + s


class StopSignals:
    """Turns SIGTERM, SIGINT and SIGUSR1 into a flag checked between steps."""

    SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGTERM", "SIGINT", "SIGUSR1")) if s is not None)

    def __init__(self):
        self.received: str | None = None
        self._previous = {}

    def _handle(self, signum, _frame) -> None:
        self.received = signal.Signals(signum).name

    def __enter__(self) -> "StopSignals":
        try:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread (e.g. some notebook runners): no handlers
            self._previous.clear()
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Clock:
    """Wall-clock budget for this invocation and the periodic checkpoint timer."""

    def __init__(self, minutes: float, time_limit: str, checkpoint_minutes: float, margin_s: float = 120.0):
        self.start = time.monotonic()
        self.budget_s = minutes * 60.0 if minutes > 0 else float("inf")
        limit = parse_duration(time_limit)
        # leave time to write the checkpoint before an external deadline
        self.deadline_s = max(limit - margin_s, limit * 0.9) if limit > 0 else float("inf")
        self.checkpoint_s = checkpoint_minutes * 60.0 if checkpoint_minutes > 0 else float("inf")
        self.last_checkpoint = self.start

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def budget_spent(self) -> bool:
        return self.elapsed() >= self.budget_s

    def deadline_near(self) -> bool:
        return self.elapsed() >= self.deadline_s

    def checkpoint_due(self) -> bool:
        return time.monotonic() - self.last_checkpoint >= self.checkpoint_s

    def checkpointed(self) -> None:
        self.last_checkpoint = time.monotonic()
