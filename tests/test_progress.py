import io

import pytest

from scrollseg import progress as progress_module
from scrollseg.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def clock(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: now[0])
    monkeypatch.delenv("SCROLLSEG_PROGRESS", raising=False)
    return now


def test_plain_lines_at_the_interval_with_rate_eta_and_fields(clock):
    out = io.StringIO()  # a log file or pipe, not a terminal
    bar = Progress(total=10, desc="score", unit="vol", stream=out, interval=5)
    for _ in range(10):
        clock[0] += 1
        bar.set_fields(loss=0.25)
        bar.update()
    bar.close()
    assert out.getvalue().splitlines() == [
        "score 5/10 vol (50%), 1 vol/s, elapsed 00:05, ETA 00:05, loss 0.25",
        "score 10/10 vol (100%), 1 vol/s, elapsed 00:10, loss 0.25",
    ]


def test_plain_close_prints_the_unprinted_end_unless_told_not_to(clock):
    out = io.StringIO()
    items = list(Progress(["a", "b", "c"], desc="cache", unit="vol", stream=out, interval=60))
    assert items == ["a", "b", "c"]
    assert out.getvalue().splitlines() == ["cache 3/3 vol (100%), 0 vol/s, elapsed 00:00"]
    quiet = io.StringIO()
    list(Progress(range(3), desc="tiles", stream=quiet, interval=60, leave=False))
    assert quiet.getvalue() == ""


def test_terminal_gets_a_live_bar_and_disabled_gets_nothing(clock):
    tty = Terminal()
    with Progress(total=4, desc="train", unit="step", stream=tty) as bar:
        bar.update(4)
    assert "\r" in tty.getvalue() and "4/4" in tty.getvalue()
    off = Terminal()
    with Progress(total=4, stream=off, enabled=False) as bar:
        bar.update(4)
    assert off.getvalue() == ""


def test_environment_forces_plain_lines_on_a_terminal(clock, monkeypatch):
    monkeypatch.setenv("SCROLLSEG_PROGRESS", "plain")
    tty = Terminal()
    with Progress(total=2, desc="predict", unit="vol", stream=tty, interval=60) as bar:
        bar.update(2)
    assert tty.getvalue() == "predict 2/2 vol (100%), 0 vol/s, elapsed 00:00\n"
