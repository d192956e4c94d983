"""Validation: the accelerator predicts the held-out volumes, the leaderboard metric
scores them, inline or in a CPU process so that training goes on meanwhile.

Scoring a 320^3 volume exactly takes seconds (Betti matching); on a GPU run that time
would leave the accelerator idle, so there the masks go to one spawned worker process
and the scores are collected at later steps. The model state at the validation step
is kept as a candidate checkpoint until its score arrives and decides whether it
becomes ``best.pt``.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor

import numpy as np
import torch

from ..config import Config
from ..inference.predict import predict_masks
from ..metrics.evaluate import MEAN_KEYS
from ..metrics.leaderboard import score_volume


def validation_masks(model: torch.nn.Module, volumes, cfg: Config, device: torch.device) -> list[np.ndarray]:
    """Masks of the held-out volumes with the inference settings, without flip TTA
    (which would make every validation eight times as long)."""
    settings = dataclasses.replace(cfg, inference=dataclasses.replace(cfg.inference, tta=False))
    items = [(i, np.asarray(v.image), (v.mean, v.std)) for i, v in enumerate(volumes)]
    return [mask for _, mask in predict_masks(model, items, settings, device)]


CASE_KEYS = MEAN_KEYS + ("voi_split", "voi_merge")


def score_pairs(labels: list[np.ndarray], masks: list[np.ndarray], ids: list[str] | None = None) -> dict:
    """Mean leaderboard metric (and its parts) over (label, mask) pairs; with ``ids``,
    also each volume's figures under ``val/cases``."""
    scores = [score_volume(label, mask) for label, mask in zip(labels, masks)]
    out: dict = {f"val/{k}": float(np.mean([getattr(s, k) for s in scores])) for k in MEAN_KEYS}
    if ids is not None:
        out["val/cases"] = {vid: {k: float(getattr(s, k)) for k in CASE_KEYS} for vid, s in zip(ids, scores)}
    return out


class BackgroundScorer:
    """Scores validation masks in one spawned process; results come back in order."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._pending: deque[tuple[int, Future]] = deque()

    def submit(self, step: int, labels: list[np.ndarray], masks: list[np.ndarray], ids: list[str] | None = None) -> None:
        if self._pool is None:
            # spawn: the training process may hold CUDA, which a forked child must not touch
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        self._pending.append((step, self._pool.submit(score_pairs, labels, masks, ids)))

    def results(self, wait: bool = False) -> list[tuple[int, dict]]:
        """(step, scores) of the finished validations, oldest first; ``wait`` for all."""
        out = []
        while self._pending and (wait or self._pending[0][1].done()):
            step, future = self._pending.popleft()
            out.append((step, future.result()))
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._pending.clear()
