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


def euler_characteristic(fg: np.ndarray) -> int:
    """chi of the cubical complex whose vertices are the foreground voxels."""
    f = fg.astype(bool)
    vertices = int(f.sum())
    edges = int((f[1:] & f[:-1]).sum() + (f[:, 1:] & f[:, :-1]).sum() + (f[:, :, 1:] & f[:, :, :-1]).sum())
    sq_z = f[:, 1:, 1:] & f[:, 1:, :-1] & f[:, :-1, 1:] & f[:, :-1, :-1]
    sq_y = f[1:, :, 1:] & f[1:, :, :-1] & f[:-1, :, 1:] & f[:-1, :, :-1]
    sq_x = f[1:, 1:, :] & f[1:, :-1, :] & f[:-1, 1:, :] & f[:-1, :-1, :]
    squares = int(sq_z.sum() + sq_y.sum() + sq_x.sum())
    cubes = int((sq_z[1:] & sq_z[:-1]).sum())
    return vertices - edges + squares - cubes


def betti_numbers(fg: np.ndarray) -> tuple[int, int, int]:
    fg = np.ascontiguousarray(fg, dtype=bool)
    if not fg.any():
        return 0, 0, 0
    _, b0 = cc3d.connected_components(fg, connectivity=6, return_N=True)
    bg_labels, n_bg = cc3d.connected_components(~fg, connectivity=26, return_N=True)
    border = np.zeros(fg.shape, dtype=bool)
    border[[0, -1]] = True
    border[:, [0, -1]] = True
    border[:, :, [0, -1]] = True
    touching = np.unique(bg_labels[border])
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


def topo_counts(gt: np.ndarray, pred: np.ndarray) -> TopoCounts:
    totals = np.zeros((3, 3), dtype=np.int64)
    workspace = Workspace()
    for sl in octant_slices(gt.shape):
        g = finite_feature_counts(gt[sl])
        p = finite_feature_counts(pred[sl])
        m = matched_counts(pred[sl], gt[sl], (p, g), workspace)
        for k in range(3):
            totals[k] += (m[k], p[k], g[k])
    return TopoCounts(tuple(tuple(int(v) for v in row) for row in totals))
