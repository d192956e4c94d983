"""The plain intensity-threshold baseline: threshold + dust removal, tuned on training volumes.

It is the yardstick a learned model must beat: it finds bright sheets, not their
recto faces, and merges sheets that touch.
"""
from __future__ import annotations

import itertools

import numpy as np

from ..metrics.leaderboard import score_volume
from .postprocess import binarise


def threshold_predict(image: np.ndarray, threshold: int, min_component: int) -> np.ndarray:
    return binarise(image.astype(np.float32), float(threshold), 0.0, min_component)


def tune_threshold(pairs: list[tuple[np.ndarray, np.ndarray]], thresholds=None, min_components=(0, 64, 512)) -> tuple[int, int, float]:
    """Best (threshold, min_component, mean score) over a grid, on (image, label) pairs."""
    if thresholds is None:
        values = np.concatenate([img[::4, ::4, ::4].ravel() for img, _ in pairs])
        thresholds = sorted({int(np.percentile(values, q)) for q in range(50, 100, 4)})
    best = (0, 0, -1.0)
    for t, m in itertools.product(thresholds, min_components):
        score = float(np.mean([score_volume(label, threshold_predict(img, t, m)).leaderboard for img, label in pairs]))
        if score > best[2]:
            best = (t, m, score)
    return best
