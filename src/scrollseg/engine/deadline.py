"""When to stop and when to checkpoint: step and time budgets, deadlines and signals.

A ``--time-limit`` counts from the start of the session: ``SCROLLSEG_SESSION_START``
(epoch seconds) when set, else the start of this process (so time spent importing,
building the cache or compiling counts too). Launchers pass the session start on to
the processes they start.
"""
from __future__ import annotations

import os
import re
import signal
import time
from contextlib import contextmanager

from ..errors import ConfigError

SESSION_START_ENV = "SCROLLSEG_SESSION_START"
_IMPORTED_AT = time.time()
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


def process_start_time() -> float:
    """Epoch seconds at which this process started (from /proc on Linux; elsewhere the
    time this module was imported)."""
    try:
        with open("/proc/self/stat") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])  # field 22, counted after the command name
        with open("/proc/stat") as fh:
            boot = next(int(line.split()[1]) for line in fh if line.startswith("btime"))
        return boot + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED_AT


def session_start() -> float:
    raw = os.environ.get(SESSION_START_ENV, "").strip()
    if not raw:
        return process_start_time()
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{SESSION_START_ENV}={raw!r}: expected epoch seconds, e.g. the output of `date +%s`") from None


@contextmanager
def session_start_for_children():
    """Processes started inside this block count their time limit from this session's start."""
    previous = os.environ.get(SESSION_START_ENV)
    os.environ[SESSION_START_ENV] = repr(session_start())
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(SESSION_START_ENV, None)
        else:
            os.environ[SESSION_START_ENV] = previous


def checkpoint_estimate_s(parameter_bytes: int) -> float:
    """Time to write a checkpoint before one has been timed: weights and two optimizer
    buffers' worth at 100 MB/s, plus 5 s."""
    return 3 * parameter_bytes / 100e6 + 5.0


class Clock:
    """Wall-clock budget of this invocation (``--minutes``), the session deadline
    (``--time-limit``) and the periodic checkpoint timer.

    The deadline is near when the time left no longer covers the reserve: the longest
    checkpoint write and the longest loop pass (one step, with its logging and any
    validation) seen so far, with half again and 30 s to spare. Until a checkpoint has
    been timed, ``checkpoint_estimate_s`` stands in for it.
    """

    SAFETY = 1.5
    SLACK_S = 30.0

    def __init__(self, minutes: float, time_limit: str, checkpoint_minutes: float, checkpoint_estimate_s: float = 10.0):
        self.start = time.monotonic()
        self.budget_s = minutes * 60.0 if minutes > 0 else float("inf")
        limit = parse_duration(time_limit)
        self.deadline = session_start() + limit if limit > 0 else float("inf")  # epoch seconds
        self.checkpoint_s = checkpoint_estimate_s
        self.checkpoint_timed = False
        self.step_s = 0.0
        self._pass_started: float | None = None
        self.checkpoint_every_s = checkpoint_minutes * 60.0 if checkpoint_minutes > 0 else float("inf")
        self.last_checkpoint = self.start

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    @property
    def deadline_s(self) -> float:
        """Seconds after this clock's start at which the time left stops covering the reserve."""
        return self.deadline - self.reserve_s() - (time.time() - self.elapsed())

    def budget_spent(self) -> bool:
        return self.elapsed() >= self.budget_s

    def reserve_s(self) -> float:
        return self.SAFETY * (self.checkpoint_s + self.step_s) + self.SLACK_S

    def deadline_near(self) -> bool:
        """Called once per loop pass: times the pass and compares the time left with the reserve."""
        now = time.monotonic()
        if self._pass_started is not None:
            self.step_s = max(self.step_s, now - self._pass_started)
        self._pass_started = now
        return time.time() + self.reserve_s() >= self.deadline

    def checkpoint_due(self) -> bool:
        return time.monotonic() - self.last_checkpoint >= self.checkpoint_every_s

    def checkpointed(self, seconds: float) -> None:
        """A checkpoint took ``seconds``; the loop pass it belongs to is timed without it."""
        self.checkpoint_s = max(self.checkpoint_s, seconds) if self.checkpoint_timed else seconds
        self.checkpoint_timed = True
        if self._pass_started is not None:
            self._pass_started += seconds
        self.last_checkpoint = time.monotonic()
