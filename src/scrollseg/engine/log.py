"""Run logging: one JSON object per line in metrics.jsonl, and short console lines.

metrics.jsonl is the record other tools read. When TensorBoard is installed
(``pip install tensorboard``) the numeric values are mirrored to ``RUN/tensorboard``.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def _tensorboard_writer(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
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
        if not self._board_checked:
            self._board_checked = True
            self._board = _tensorboard_writer(self.path.parent / "tensorboard")
        if self._board is not None:
            for key, value in clean.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._board.add_scalar(key, value, clean.get("step", 0))
            self._board.flush()

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (written after the checkpoint a resume starts from)."""
        if not self.enabled or not self.path.is_file():
            return
        keep = [r for r in self.read() if r.get("step", 0) <= step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in keep))


def say(message: str, enabled: bool = True) -> None:
    if enabled:
        # one write per line: ranks sharing a terminal or pipe then never splice lines
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
