"""Run logging: metrics.jsonl (one JSON object per line), its TensorBoard mirror, the
console, and train.log (the console's lines, timestamped).

metrics.jsonl is the record other tools read; every numeric value of a record that
is not an event is mirrored to ``RUN/tensorboard``. Console lines go through
``say``, which also appends them to the run's train.log while one is open.
"""
from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

from ..progress import Progress, echo

_transcript: Path | None = None


def _tensorboard_writer(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # a damaged or partial install: metrics.jsonl still holds everything
        warnings.warn(f"TensorBoard logging is off ({exc}); reinstall scrollseg with its dependencies", stacklevel=3)
        return None
    return SummaryWriter(str(folder))


class MetricsLog:
    def __init__(self, path: Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self._board = None
        self._board_checked = False

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(clean) + "\n")
        if "event" in clean:  # start, out-of-memory, summary: not points of a curve
            return
        if not self._board_checked:
            self._board_checked = True
            self._board = _tensorboard_writer(self.path.parent / "tensorboard")
        if self._board is not None:
            for key, value in clean.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._board.add_scalar(key, value, clean.get("step", 0))
            self._board.flush()

    def read(self) -> list[dict]:
        return read_records(self.path)

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (written after the checkpoint a resume starts from)."""
        if not self.enabled or not self.path.is_file():
            return
        keep = [r for r in self.read() if r.get("step", 0) <= step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in keep))


def read_records(path: Path | str) -> list[dict]:
    """The records of a metrics.jsonl; a line cut short by a kill is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def transcribe_to(path: Path | str | None) -> None:
    """Append every later ``say`` line, timestamped, to ``path``; None stops."""
    global _transcript
    _transcript = Path(path) if path is not None else None


def note(message: str) -> None:
    """Write ``message`` to the open train.log only."""
    if _transcript is not None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(_transcript, "a", encoding="utf-8") as fh:
            fh.write("".join(f"{stamp} {line}\n" for line in message.splitlines() or [""]))


def say(message: str, enabled: bool = True) -> None:
    """A console line (when ``enabled``), kept in the open train.log either way."""
    if enabled:
        echo(message)
    note(message)


def step_line(record: dict, total_steps: int | None) -> str:
    return (f"step {record['step']:>6}/{total_steps or '?'} loss {record['loss']:.4f} lr {record['lr']:.2e} "
            f"{record['samples_per_s']:.1f} samples/s data-wait {record['data_wait']:.0%}")


class TrainConsole:
    """What a training run shows while it runs: a progress bar over the steps (plain
    lines where the console is not a terminal, see ``scrollseg.progress``) and the
    run's train.log, which gets every console line plus one line per log step."""

    def __init__(self, log_path: Path, total_steps: int | None, show: bool, enabled: bool):
        self.total_steps, self.show = total_steps, show and enabled
        self.bar: Progress | None = None
        if enabled:
            transcribe_to(log_path)

    def update(self, record: dict, steps: int) -> None:
        """A log step: ``record`` as written to metrics.jsonl, ``steps`` taken since the last one."""
        if self.show and self.bar is None:
            self.bar = Progress(total=self.total_steps, initial=record["step"] - steps, desc="train", unit="step")
        if self.bar is not None:
            self.bar.set_fields(loss=record["loss"], lr=f"{record['lr']:.2e}", samples_s=f"{record['samples_per_s']:.1f}",
                                data_wait=f"{record['data_wait']:.0%}")
            self.bar.update(steps)
        note(step_line(record, self.total_steps))

    def set_total(self, total_steps: int | None) -> None:
        """The step count once known (a time-budgeted run fixes it after its warm-up)."""
        if total_steps != self.total_steps:
            self.total_steps = total_steps
            self.stop_bar()  # redrawn with the new total at the next log step

    def stop_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        self.stop_bar()
        transcribe_to(None)
