"""Probability map -> binary surface mask: threshold or hysteresis, then dust removal."""
from __future__ import annotations

import cc3d
import numpy as np


def hysteresis(prob: np.ndarray, low: float, high: float) -> np.ndarray:
    """Voxels above ``low`` in 26-connected components that reach ``high`` somewhere."""
    labels = cc3d.connected_components(prob > low, connectivity=26)
    keep = np.unique(labels[prob > high])
    return np.isin(labels, keep[keep > 0])


def binarise(prob: np.ndarray, threshold: float = 0.5, hysteresis_low: float = 0.0, min_component: int = 0) -> np.ndarray:
    """uint8 0/1 mask of the same shape as ``prob``."""
    if 0 < hysteresis_low < threshold:
        mask = hysteresis(prob, hysteresis_low, threshold)
    else:
        mask = prob > threshold
    if min_component > 1 and mask.any():
        mask = cc3d.dust(mask, threshold=min_component, connectivity=26, in_place=True)
    return mask.astype(np.uint8)
