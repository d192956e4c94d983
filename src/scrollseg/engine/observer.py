"""Hooks through which a training run tells the layers above it what happened.

The trainer (rank 0) calls them after a validation's masks are predicted, when its
score arrives, and when the run ends; the app layer uses them to draw plots and
pictures without the engine importing it. A failing hook is reported and never
stops the training.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np


class RunObserver:
    """Override the hooks you need; each does nothing here."""

    def validated(self, run_dir: Path, step: int, volumes: list, masks: list[np.ndarray]) -> None:
        """The held-out ``volumes`` (CachedVolume: id, image, label) and their predicted ``masks``."""

    def scored(self, run_dir: Path, step: int, scores: dict) -> None:
        """The validation record of ``step`` (``val/...`` means, ``val/cases`` per volume)."""

    def finished(self, run_dir: Path, summary: dict) -> None:
        """The end-of-run summary, as written to RUN/summary.json."""


def notify(observers, hook: str, *args) -> None:
    for observer in observers:
        try:
            getattr(observer, hook)(*args)
        except Exception as exc:  # a plot must never end a long run
            warnings.warn(f"{type(observer).__name__}.{hook} failed ({exc.__class__.__name__}: {exc}); training goes on", stacklevel=2)
