"""Surface Dice at a tolerance (Nikolov et al. 2018), surfels weighted by area.

Written here rather than depending on DeepMind's ``surface-distance`` package,
which is not on PyPI, and faster: only whether a surfel lies within the tolerance
matters, which a dilation answers without distance transforms. Surfels are the
marching-cubes faces of each 2x2x2 cell; their areas come from a table generated
once (``scripts/make_surfel_table.py``). Work is confined to the bounding box of
both masks, so cost follows the foreground, not the volume.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .surfel_areas import SURFEL_AREAS

_AREA_TABLE = np.asarray(SURFEL_AREAS, dtype=np.float64)
# Weight of each corner of the 2x2x2 cell; index 0 is the low corner.
_CELL_KERNEL = np.array([[[128, 64], [32, 16]], [[8, 4], [2, 1]]], dtype=np.uint8)


def _cell_codes(mask: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Neighbour code of every 2x2x2 cell touching the crop [lo, hi] of ``mask``.

    Cell p covers crop voxels p - 1 and p along each axis; corner (a, b, c) of it
    weighs ``_CELL_KERNEL[a, b, c]``, so the code is a sum of eight shifted slices.
    """
    shape = tuple(int(v) for v in hi - lo + 2)
    padded = np.zeros(tuple(n + 1 for n in shape), dtype=np.uint8)
    padded[1:-1, 1:-1, 1:-1] = mask[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1]
    codes = np.zeros(shape, dtype=np.uint8)
    for a in range(2):
        for b in range(2):
            for c in range(2):
                codes |= padded[a : a + shape[0], b : b + shape[1], c : c + shape[2]] * _CELL_KERNEL[a, b, c]
    return codes


def _ball(radius: float) -> np.ndarray:
    """Integer offsets within Euclidean distance ``radius`` of the centre."""
    r = int(np.floor(radius))
    grid = np.mgrid[-r : r + 1, -r : r + 1, -r : r + 1]
    return (grid**2).sum(axis=0) <= radius * radius


def dilate_ball(mask: np.ndarray, radius: float) -> np.ndarray:
    """Binary dilation by the ball of ``radius``.

    For radii from sqrt(3) to below sqrt(5) (the leaderboard's 2 among them) the ball
    is the 3x3x3 cube, plus the six points two steps along an axis from radius 2 on:
    a separable cube dilation and six shifts, far faster than a generic dilation.
    """
    r2 = radius * radius
    if not 3 <= r2 < 5:
        return ndimage.binary_dilation(mask, structure=_ball(radius))
    out = mask
    for axis in range(3):
        grown = out.copy()
        lo, hi = [slice(None)] * 3, [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        grown[tuple(hi)] |= out[tuple(lo)]
        grown[tuple(lo)] |= out[tuple(hi)]
        out = grown
    if r2 >= 4:
        for axis in range(3):
            lo, hi = [slice(None)] * 3, [slice(None)] * 3
            lo[axis], hi[axis] = slice(None, -2), slice(2, None)
            out[tuple(hi)] |= mask[tuple(lo)]
            out[tuple(lo)] |= mask[tuple(hi)]
    return out


def foreground_box(*masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive low and high corners of the bounding box of the masks' union (not all empty)."""
    union = np.logical_or.reduce(masks)
    coords = [np.flatnonzero(union.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    return np.array([c[0] for c in coords]), np.array([c[-1] for c in coords])


def surface_cells(mask: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The surfel cells of ``mask`` over the crop [lo, hi] (a boolean grid of cells, see
    ``_cell_codes``) and their areas, in the grid's C order."""
    codes = _cell_codes(mask, lo, hi)
    border = (codes != 0) & (codes != 255)
    return border, _AREA_TABLE[codes[border]]


def surface_dice(gt: np.ndarray, pred: np.ndarray, tolerance: float = 2.0) -> float:
    """Surface Dice at ``tolerance`` voxels: 1 when both masks are empty, 0 when one is.

    Only "within the tolerance or not" matters here, so instead of two distance
    transforms each surface is dilated by the ball of that radius: the same answer
    (distances between voxel centres are exact), several times faster.
    """
    gt = np.asarray(gt, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    has_gt, has_pred = bool(gt.any()), bool(pred.any())
    if not has_gt and not has_pred:
        return 1.0
    if not has_gt or not has_pred:
        return 0.0
    lo, hi = foreground_box(gt, pred)
    border_gt, area_gt = surface_cells(gt, lo, hi)
    border_pred, area_pred = surface_cells(pred, lo, hi)
    total = area_gt.sum() + area_pred.sum()
    if total == 0:
        return 0.0
    near_pred = dilate_ball(border_pred, tolerance)
    near_gt = dilate_ball(border_gt, tolerance)
    overlap = area_gt[near_pred[border_gt]].sum() + area_pred[near_gt[border_pred]].sum()
    return float(overlap / total)
