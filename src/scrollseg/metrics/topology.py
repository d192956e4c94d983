"""TopoScore: Betti matching of the inverted masks per 2x2x2 octant.

The leaderboard's TopoScore counts persistence pairs of the inverted masks
(foreground 0, background 1) in a cubical complex whose higher cells take the max
of their voxels, per 2x2x2 octant of the volume. In that filtration every finite
pair of the foreground is born at 0 and dies at 1, so the predicted count p_k and
label count g_k in dimension k are Betti numbers of the foreground complex
(dimension 0 minus the component that never dies); the matched count m_k comes
from ``betti_matching``.

Betti numbers come from connected components and the Euler characteristic:
b0 = 6-connected foreground components, b2 = 26-connected background components
not touching the octant border (enclosed cavities), b1 = b0 + b2 - chi.
"""
from __future__ import annotations

from dataclasses import dataclass

import cc3d
import numpy as np
from numba import njit

from .betti_matching import Workspace, matched_counts

DIM_WEIGHTS = (0.34, 0.33, 0.33)


@dataclass(frozen=True)
class TopoCounts:
    """matched / predicted / label feature counts, one triple per dimension 0..2."""

    counts: tuple[tuple[int, int, int], ...]

    def f1(self, dim: int) -> float | None:
        m, p, g = self.counts[dim]
        if p + g == 0:
            return None
        if g == 0:
            return 0.5 / (p + 0.5)
        return 2.0 * m / (p + g)

    @property
    def score(self) -> float:
        weighted = [(w, self.f1(k)) for k, w in enumerate(DIM_WEIGHTS)]
        active = [(w, f) for w, f in weighted if f is not None]
        if not active:
            return 1.0
        return sum(w * f for w, f in active) / sum(w for w, _ in active)


@njit(cache=True)
def _euler_characteristic(f):
    """chi = vertices - edges + squares - cubes, counted cell by cell at each lowest corner."""
    X, Y, Z = f.shape
    chi = 0
    for x in range(X):
        for y in range(Y):
            for z in range(Z):
                if not f[x, y, z]:
                    continue
                chi += 1
                ex = x + 1 < X and f[x + 1, y, z]
                ey = y + 1 < Y and f[x, y + 1, z]
                ez = z + 1 < Z and f[x, y, z + 1]
                chi -= ex + ey + ez
                sxy = ex and ey and f[x + 1, y + 1, z]
                sxz = ex and ez and f[x + 1, y, z + 1]
                syz = ey and ez and f[x, y + 1, z + 1]
                chi += sxy + sxz + syz
                if sxy and sxz and syz and f[x + 1, y + 1, z + 1]:
                    chi -= 1
    return chi


def euler_characteristic(fg: np.ndarray) -> int:
    """chi of the cubical complex whose vertices are the foreground voxels."""
    return int(_euler_characteristic(np.ascontiguousarray(fg, dtype=bool)))


def betti_numbers(fg: np.ndarray) -> tuple[int, int, int]:
    fg = np.ascontiguousarray(fg, dtype=bool)
    if not fg.any():
        return 0, 0, 0
    _, b0 = cc3d.connected_components(fg, connectivity=6, return_N=True)
    bg_labels, n_bg = cc3d.connected_components(~fg, connectivity=26, return_N=True)
    sides = [bg_labels[[0, -1]], bg_labels[:, [0, -1]], bg_labels[:, :, [0, -1]]]
    touching = np.unique(np.concatenate([side.ravel() for side in sides]))
    b2 = n_bg - int(np.count_nonzero(touching))
    b1 = b0 + b2 - euler_characteristic(fg)
    return int(b0), int(b1), int(b2)


def finite_feature_counts(fg: np.ndarray) -> tuple[int, int, int]:
    b0, b1, b2 = betti_numbers(fg)
    return max(b0 - 1, 0), b1, b2


def octant_slices(shape: tuple[int, ...]):
    """The 2x2x2 octants; each axis cut in two, the first part taking the odd voxel."""
    cuts = [((0, (n + 1) // 2), ((n + 1) // 2, n)) for n in shape]
    for a in cuts[0]:
        for b in cuts[1]:
            for c in cuts[2]:
                yield tuple(slice(lo, hi) for lo, hi in (a, b, c))


def octant_counts(gt: np.ndarray, pred: np.ndarray):
    """``(octant slices, matched, predicted, label)`` per octant, each count a triple over dimensions 0..2."""
    workspace = Workspace()
    for sl in octant_slices(gt.shape):
        g = finite_feature_counts(gt[sl])
        p = finite_feature_counts(pred[sl])
        m = matched_counts(pred[sl], gt[sl], (p, g), workspace)
        yield sl, m, p, g


def topo_counts(gt: np.ndarray, pred: np.ndarray) -> TopoCounts:
    totals = np.zeros((3, 3), dtype=np.int64)
    for _, m, p, g in octant_counts(gt, pred):
        for k in range(3):
            totals[k] += (m[k], p[k], g[k])
    return TopoCounts(tuple(tuple(int(v) for v in row) for row in totals))
