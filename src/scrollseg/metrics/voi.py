"""Variation of information between 26-connected components of two masks.

Components are labelled with connected-components-3d; the entropies come from a
sparse contingency table built with ``np.unique`` over paired labels.
"""
from __future__ import annotations

from dataclasses import dataclass

import cc3d
import numpy as np


@dataclass(frozen=True)
class VOI:
    """``split`` = H(pred | label), ``merge`` = H(label | pred), in bits (scikit-image's order)."""

    split: float
    merge: float

    @property
    def total(self) -> float:
        return self.split + self.merge


def variation_of_information(gt: np.ndarray, pred: np.ndarray, connectivity: int = 26) -> VOI:
    """VOI over the union of both foregrounds; background inside it is one more cluster."""
    gt = np.asarray(gt, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    union = gt | pred
    n = int(union.sum())
    if n == 0:
        return VOI(0.0, 0.0)
    lab_gt = cc3d.connected_components(gt, connectivity=connectivity)[union].astype(np.int64)
    lab_pred = cc3d.connected_components(pred, connectivity=connectivity)[union].astype(np.int64)
    pairs = lab_gt * (int(lab_pred.max()) + 1) + lab_pred
    _, joint = np.unique(pairs, return_counts=True)
    _, marg_gt = np.unique(lab_gt, return_counts=True)
    _, marg_pred = np.unique(lab_pred, return_counts=True)

    def entropy(counts: np.ndarray) -> float:
        p = counts / n
        return float(-(p * np.log2(p)).sum())

    h_joint = entropy(joint)
    split = h_joint - entropy(marg_gt)  # H(pred | gt)
    merge = h_joint - entropy(marg_pred)  # H(gt | pred)
    return VOI(max(split, 0.0), max(merge, 0.0))


def voi_score(voi_total: float, alpha: float = 0.3) -> float:
    return 1.0 / (1.0 + alpha * voi_total)
