"""The plain intensity-threshold baseline: threshold + dust removal, tuned on training volumes.

It is the yardstick a learned model must beat: it finds bright sheets, not their
recto faces, and merges sheets that touch.
"""
from __future__ import annotations

import itertools

import numpy as np

from ..metrics.leaderboard import score_volume
from .postprocess import remove_dust


def threshold_predict(image: np.ndarray, threshold: int, min_component: int) -> np.ndarray:
    return remove_dust(image > threshold, min_component).astype(np.uint8)


def tune_threshold(pairs: list[tuple[np.ndarray, np.ndarray]], min_components=(0, 64, 512)) -> tuple[int, int, float]:
    """Best (threshold, min_component, mean score) on (image, label) pairs.

    A coarse sweep over intensity percentiles, then a finer one around the best."""

    def mean_score(t: int, m: int) -> float:
        return float(np.mean([score_volume(label, threshold_predict(img, t, m)).leaderboard for img, label in pairs]))

    values = np.concatenate([img[::4, ::4, ::4].ravel() for img, _ in pairs])
    coarse = sorted({int(np.percentile(values, q)) for q in range(50, 100, 8)})
    best = max(((t, m, mean_score(t, m)) for t, m in itertools.product(coarse, min_components)), key=lambda r: r[2])
    step = max(1, (coarse[-1] - coarse[0]) // (2 * len(coarse)))
    fine = [best[0] + d * step for d in (-2, -1, 1, 2)]
    return max([best] + [(t, best[1], mean_score(t, best[1])) for t in fine], key=lambda r: r[2])
