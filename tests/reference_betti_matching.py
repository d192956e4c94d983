"""A literal, slow Betti matching for tiny volumes, to check the fast kernels against.

Every persistence pairing here is a plain GF(2) column reduction of a boundary
matrix (columns and rows as Python integers used as bit sets), with cells ordered
by (value, x, y, z, type) as the reference implementation orders them:

- input pairs: rows and columns in the input's order; finite when the values differ;
- comparison pairs: the same in the comparison image's order;
- image pairs: comparison-ordered columns, rows in the input's order;
- dimensions 0 and 1: a finite comparison pair (b, d) is matched when the image pivot
  of column d is the birth of a finite pair in each input;
- dimension 2: the reference's dual union-find, transcribed as it is specified.

Nothing is skipped or derived, so agreement with ``scrollseg.metrics.betti_matching``
tests the reasoning that lets the fast kernels skip work, not just their code.
"""
from __future__ import annotations

import itertools

import numpy as np

OFFSETS = {  # voxels of a cell at (x, y, z) by dimension and type
    0: {0: [(0, 0, 0)]},
    1: {0: [(0, 0, 0), (1, 0, 0)], 1: [(0, 0, 0), (0, 1, 0)], 2: [(0, 0, 0), (0, 0, 1)]},
    2: {
        0: [(0, 0, 0), (0, 1, 0), (0, 0, 1), (0, 1, 1)],
        1: [(0, 0, 0), (1, 0, 0), (0, 0, 1), (1, 0, 1)],
        2: [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0)],
    },
    3: {0: [d for d in itertools.product((0, 1), repeat=3)]},
}


def _cells(shape, dim):
    out = []
    for x, y, z in itertools.product(*(range(n) for n in shape)):
        for t, offs in OFFSETS[dim].items():
            if all(x + a < shape[0] and y + b < shape[1] and z + c < shape[2] for a, b, c in offs):
                out.append((x, y, z, t))
    return out


def _value(inv, cell, dim):
    x, y, z, t = cell
    return max(inv[x + a, y + b, z + c] for a, b, c in OFFSETS[dim][t])


def _boundary(cell, dim):
    """Faces of a cell, as (x, y, z, type) of dimension dim - 1."""
    x, y, z, t = cell
    if dim == 1:
        a, b, c = OFFSETS[1][t][1]
        return [(x, y, z, 0), (x + a, y + b, z + c, 0)]
    if dim == 2:
        # the two directions spanned, and the edges along each
        dirs = {0: (1, 2), 1: (0, 2), 2: (0, 1)}[t]
        out = []
        for d_along, d_shift in (dirs, dirs[::-1]):
            step = [0, 0, 0]
            step[d_shift] = 1
            out.append((x, y, z, d_along))
            out.append((x + step[0], y + step[1], z + step[2], d_along))
        return out
    raise ValueError(dim)


def _reduce(columns, rows, boundary):
    """Pivot row of every column after reduction (None when it reduces to zero)."""
    position = {r: i for i, r in enumerate(rows)}
    owner: dict[int, int] = {}
    reduced: list[int] = []
    pivots = []
    for col in columns:
        bits = 0
        for face in boundary(col):
            bits ^= 1 << position[face]
        while bits:
            low = bits.bit_length() - 1
            if low not in owner:
                break
            bits ^= reduced[owner[low]]
        reduced.append(bits)
        if bits:
            low = bits.bit_length() - 1
            owner[low] = len(reduced) - 1
            pivots.append(rows[low])
        else:
            pivots.append(None)
    return pivots


def _matched_by_reduction(inv0, inv1, comp, dim):
    rows_cells = _cells(inv0.shape, dim)
    cols_cells = _cells(inv0.shape, dim + 1)

    def order(inv, cells, d):
        return sorted(cells, key=lambda c: (_value(inv, c, d), c))

    def boundary(c):
        return _boundary(c, dim + 1)

    births = []
    for inv in (inv0, inv1):
        cols = order(inv, cols_cells, dim + 1)
        pivots = _reduce(cols, order(inv, rows_cells, dim), boundary)
        births.append({p for p, c in zip(pivots, cols) if p is not None and _value(inv, p, dim) != _value(inv, c, dim + 1)})
    comp_cols = order(comp, cols_cells, dim + 1)
    comp_pivots = _reduce(comp_cols, order(comp, rows_cells, dim), boundary)
    image = [dict(zip(comp_cols, _reduce(comp_cols, order(inv, rows_cells, dim), boundary))) for inv in (inv0, inv1)]
    matched = 0
    for p, c in zip(comp_pivots, comp_cols):
        if p is None or _value(comp, p, dim) == _value(comp, c, dim + 1):
            continue
        if image[0][c] in births[0] and image[1][c] in births[1]:
            matched += 1
    return matched


def _matched_dim2(inv0, inv1, comp):
    """The reference's top-dimension matching: dual union-find from the top."""
    shape = inv0.shape
    if min(shape) < 2:
        return 0
    cubes = _cells(shape, 3)
    cube_index = {c[:3]: i for i, c in enumerate(cubes)}  # lexicographic = reference index
    inf = len(cubes)
    faces = _cells(shape, 2)

    def neighbours(face):
        x, y, z, t = face
        lo = [x, y, z]
        lo[t] -= 1
        return cube_index.get(tuple(lo), inf), cube_index.get((x, y, z), inf)

    def birth(inv):
        return [_value(inv, c, 3) for c in cubes] + [np.inf]

    def link_younger(parent, born, a, b):
        # the elder (higher birth, then higher index) becomes the root
        if (born[a], a) < (born[b], b):
            parent[a] = b
            return a
        parent[b] = a
        return b

    def find(parent, i):
        while parent[i] != i:
            i = parent[i]
        return i

    comp_born = birth(comp)
    recorded = []
    for inv in (inv0, inv1):
        born = birth(inv)
        parent = list(range(inf + 1))
        parent_c = list(range(inf + 1))
        keys = set()
        for face in sorted(faces, key=lambda f: (_value(inv, f, 2), f), reverse=True):
            lo, hi = neighbours(face)
            a, b = find(parent, lo), find(parent, hi)
            if a == b:
                continue
            dying = link_younger(parent, born, a, b)
            dying_c = link_younger(parent_c, comp_born, find(parent_c, lo), find(parent_c, hi))
            if _value(inv, face, 2) != born[dying]:
                keys.add(dying_c)
        recorded.append(keys)
    parent = list(range(inf + 1))
    matched = 0
    for face in sorted(faces, key=lambda f: (_value(comp, f, 2), f), reverse=True):
        lo, hi = neighbours(face)
        a, b = find(parent, lo), find(parent, hi)
        if a == b:
            continue
        dying = link_younger(parent, comp_born, a, b)
        if _value(comp, face, 2) != comp_born[dying] and dying in recorded[0] and dying in recorded[1]:
            matched += 1
    return matched


def reference_matched(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int]:
    """(m0, m1, m2) for one block (no octant split), foreground = True."""
    inv0 = 1 - pred.astype(np.int64)
    inv1 = 1 - gt.astype(np.int64)
    comp = np.minimum(inv0, inv1)
    return (
        _matched_by_reduction(inv0, inv1, comp, 0),
        _matched_by_reduction(inv0, inv1, comp, 1),
        _matched_dim2(inv0, inv1, comp),
    )
