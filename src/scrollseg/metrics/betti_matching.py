"""Matched feature counts of Betti matching for two binary 3D masks.

Betti matching (Stucki et al., ICML 2023; the 3D method of arXiv 2407.04683) pairs
persistence intervals of a prediction and a label through the comparison image
(their voxelwise min after inversion, i.e. the union of the foregrounds). The
filtration is the V-construction cubical complex of the inverted mask (foreground
0, background 1; a cell takes the max of its voxels), and ties between equal
values are broken by the cell's position (x, y, z, then the cell type), exactly as
the reference implementation orders its cells. With binary masks every finite
interval is [0, 1), so which intervals are matched is decided by those ties alone;
the kernels below follow the reference semantics dimension by dimension, using
what the binary case allows to skip:

- dimension 0: Kruskal over the comparison image's edges; at each merge that ends a
  comparison interval, the interval is matched when the younger component is
  foreground in both inputs (the elder rule, ages by value then voxel index);
- dimension 2: the same on the dual graph of 3-cells, faces taken from the top;
- dimension 1: a comparison interval ending at face d is matched to a prediction
  interval exactly when d kills a cycle of the prediction's foreground, i.e. when
  d is not a 2-cycle creator (dual union-find) but its boundary vanishes modulo
  the prediction's edges and earlier faces. That is one sparse GF(2) column
  reduction per input instead of the three of a general implementation, over the
  faces that can die (creators are cleared first).

No library computes induced matchings of cubical image persistence, and the
reference needs a C++ build; these kernels are written for numba so that
``pip install`` is all the metric needs.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def _find(parent, i):
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:
        nxt = parent[i]
        parent[i] = root
        i = nxt
    return root


@njit(cache=True)
def matched_dim0(fp, fg, X, Y, Z):
    """Matched 0-dimensional intervals; fp/fg are flat uint8 foreground masks."""
    n = X * Y * Z
    fu = fp | fg
    parent = np.arange(n)
    size = np.ones(n, np.int32)
    # per root: the oldest voxel (lowest value, then index) in each filtration
    key_c = np.empty(n, np.int64)
    key_p = np.empty(n, np.int64)
    key_g = np.empty(n, np.int64)
    for v in range(n):
        key_c[v] = (1 - fu[v]) * n + v
        key_p[v] = (1 - fp[v]) * n + v
        key_g[v] = (1 - fg[v]) * n + v
    strides = (Y * Z, Z, 1)
    matched = 0
    for phase in range(2):  # comparison edges of value 0, then of value 1, by index
        for x in range(X):
            for y in range(Y):
                for z in range(Z):
                    v = (x * Y + y) * Z + z
                    for t in range(3):
                        if (t == 0 and x + 1 >= X) or (t == 1 and y + 1 >= Y) or (t == 2 and z + 1 >= Z):
                            continue
                        w = v + strides[t]
                        value = 1 - (fu[v] & fu[w])
                        if value != phase:
                            continue
                        a = _find(parent, v)
                        b = _find(parent, w)
                        if a == b:
                            continue
                        if phase == 1 and max(key_c[a], key_c[b]) < n:
                            # a comparison interval ends; matched when the younger
                            # component is born at 0 in both inputs too
                            if max(key_p[a], key_p[b]) < n and max(key_g[a], key_g[b]) < n:
                                matched += 1
                        if size[a] < size[b]:
                            a, b = b, a
                        parent[b] = a
                        size[a] += size[b]
                        key_c[a] = min(key_c[a], key_c[b])
                        key_p[a] = min(key_p[a], key_p[b])
                        key_g[a] = min(key_g[a], key_g[b])
    return matched


@njit(cache=True)
def _cube_value(f, x, y, z, Y, Z):
    for dx in range(2):
        for dy in range(2):
            for dz in range(2):
                if f[((x + dx) * Y + y + dy) * Z + z + dz] == 0:
                    return 1
    return 0


@njit(cache=True)
def _face_cells(fid, X, Y, Z):
    """(valid, voxel corner x, y, z, type) of a face id = voxel index * 3 + type."""
    t = fid % 3
    v = fid // 3
    z = v % Z
    y = (v // Z) % Y
    x = v // (Y * Z)
    if t == 0:
        ok = y + 1 < Y and z + 1 < Z
    elif t == 1:
        ok = x + 1 < X and z + 1 < Z
    else:
        ok = x + 1 < X and y + 1 < Y
    return ok, x, y, z, t


@njit(cache=True)
def _face_value(f, x, y, z, t, Y, Z):
    """0 when all four voxels of the face are foreground."""
    v = (x * Y + y) * Z + z
    if t == 0:
        a, b, c = Z, 1, Z + 1
    elif t == 1:
        a, b, c = Y * Z, 1, Y * Z + 1
    else:
        a, b, c = Y * Z, Z, Y * Z + Z
    return 1 - (f[v] & f[v + a] & f[v + b] & f[v + c])


@njit(cache=True)
def _face_cubes(x, y, z, t, X, Y, Z, inf):
    """The two 3-cells on either side of a face (inf outside the volume)."""
    my, mz = Y - 1, Z - 1
    if t == 0:
        lo = ((x - 1) * my + y) * mz + z if x > 0 else inf
        hi = (x * my + y) * mz + z if x + 1 < X else inf
    elif t == 1:
        lo = (x * my + y - 1) * mz + z if y > 0 else inf
        hi = (x * my + y) * mz + z if y + 1 < Y else inf
    else:
        lo = (x * my + y) * mz + z - 1 if z > 0 else inf
        hi = (x * my + y) * mz + z if z + 1 < Z else inf
    return lo, hi


@njit(cache=True)
def _dual_pass(fa, fu, X, Y, Z, recorded, check0, check1, creators):
    """Union-find of 3-cells over the faces of mask ``fa`` from the top of its filtration.

    At each merge that ends a finite interval of ``fa`` the younger component's
    oldest 3-cell in the comparison order is ``recorded``. With ``check0``/``check1``
    given (the comparison pass), returns how many ended intervals were recorded by
    both inputs, and marks in ``creators`` the faces that create a 2-cycle.
    """
    mx, my, mz = X - 1, Y - 1, Z - 1
    nc = mx * my * mz
    inf = nc
    parent = np.arange(nc + 1)
    size = np.ones(nc + 1, np.int32)
    big = 2 * (nc + 1)
    key_a = np.empty(nc + 1, np.int64)  # eldest = largest (value, index)
    key_u = np.empty(nc + 1, np.int64)
    for x in range(mx):
        for y in range(my):
            for z in range(mz):
                c = (x * my + y) * mz + z
                key_a[c] = _cube_value(fa, x, y, z, Y, Z) * (nc + 1) + c
                key_u[c] = _cube_value(fu, x, y, z, Y, Z) * (nc + 1) + c
    key_a[inf] = big + inf
    key_u[inf] = big + inf
    matched = 0
    nf = 3 * X * Y * Z
    for phase in range(2):  # faces of value 1 then 0, each by decreasing index
        value_wanted = 1 - phase
        for fid in range(nf - 1, -1, -1):
            ok, x, y, z, t = _face_cells(fid, X, Y, Z)
            if not ok:
                continue
            value = _face_value(fa, x, y, z, t, Y, Z)
            if value != value_wanted:
                continue
            lo, hi = _face_cubes(x, y, z, t, X, Y, Z, inf)
            a = _find(parent, lo)
            b = _find(parent, hi)
            if a == b:
                continue
            younger_a = min(key_a[a], key_a[b])
            if value == 0 and younger_a >= nc + 1 and younger_a < big:
                dying = min(key_u[a], key_u[b]) % (nc + 1)
                if check0.shape[0] == 0:
                    recorded[dying] = 1
                elif check0[dying] and check1[dying]:
                    matched += 1
            if creators.shape[0] > 0:
                creators[fid] = 1
            if size[a] < size[b]:
                a, b = b, a
            parent[b] = a
            size[a] += size[b]
            key_a[a] = max(key_a[a], key_a[b])
            key_u[a] = max(key_u[a], key_u[b])
    return matched


def matched_dim2_and_creators(fp, fg, X, Y, Z, need_dim2: bool):
    """(matched 2-dim intervals, 2-cycle creators of the comparison filtration)."""
    nc = (X - 1) * (Y - 1) * (Z - 1)
    fu = fp | fg
    empty = np.zeros(0, np.uint8)
    creators = np.zeros(3 * X * Y * Z, np.uint8)
    if need_dim2:
        rec_p = np.zeros(nc + 1, np.uint8)
        rec_g = np.zeros(nc + 1, np.uint8)
        _dual_pass(fp, fu, X, Y, Z, rec_p, empty, empty, empty)
        _dual_pass(fg, fu, X, Y, Z, rec_g, empty, empty, empty)
    else:
        rec_p = rec_g = np.zeros(nc + 1, np.uint8)
    matched = _dual_pass(fu, fu, X, Y, Z, np.zeros(nc + 1, np.uint8), rec_p, rec_g, creators)
    return matched, creators


@njit(cache=True)
def _boundary_mod(fq, fid, X, Y, Z, out):
    """Sorted edge ids of a face's boundary, without the edges inside mask ``fq``."""
    t = fid % 3
    v = fid // 3
    sy, sx = Z, Y * Z
    if t == 0:  # spans y, z
        e0, e1, e2, e3 = v * 3 + 1, (v + 1) * 3 + 1, v * 3 + 2, (v + sy) * 3 + 2
        w0, w1, w2, w3 = (v, v + sy), (v + 1, v + 1 + sy), (v, v + 1), (v + sy, v + sy + 1)
    elif t == 1:  # spans x, z
        e0, e1, e2, e3 = v * 3, (v + 1) * 3, v * 3 + 2, (v + sx) * 3 + 2
        w0, w1, w2, w3 = (v, v + sx), (v + 1, v + 1 + sx), (v, v + 1), (v + sx, v + sx + 1)
    else:  # spans x, y
        e0, e1, e2, e3 = v * 3, (v + sy) * 3, v * 3 + 1, (v + sx) * 3 + 1
        w0, w1, w2, w3 = (v, v + sx), (v + sy, v + sy + sx), (v, v + sy), (v + sx, v + sx + sy)
    n = 0
    if not (fq[w0[0]] and fq[w0[1]]):
        out[n] = e0
        n += 1
    if not (fq[w1[0]] and fq[w1[1]]):
        out[n] = e1
        n += 1
    if not (fq[w2[0]] and fq[w2[1]]):
        out[n] = e2
        n += 1
    if not (fq[w3[0]] and fq[w3[1]]):
        out[n] = e3
        n += 1
    # insertion sort of at most four ids
    for i in range(1, n):
        key = out[i]
        j = i - 1
        while j >= 0 and out[j] > key:
            out[j + 1] = out[j]
            j -= 1
        out[j + 1] = key
    return n


@njit(cache=True)
def _symdiff(a, na, b, nb, out):
    i = j = k = 0
    while i < na and j < nb:
        if a[i] < b[j]:
            out[k] = a[i]
            i += 1
            k += 1
        elif a[i] > b[j]:
            out[k] = b[j]
            j += 1
            k += 1
        else:
            i += 1
            j += 1
    while i < na:
        out[k] = a[i]
        i += 1
        k += 1
    while j < nb:
        out[k] = b[j]
        j += 1
        k += 1
    return k


@njit(cache=True)
def killing_faces(fq, fu, X, Y, Z, creators):
    """Faces outside the comparison foreground at which a cycle of mask ``fq`` dies.

    Columns are the faces in the comparison order (foreground faces, then the rest,
    each by index), creators skipped; a column reducing to zero modulo the edges of
    ``fq`` kills a cycle of ``fq``.
    """
    nf = 3 * X * Y * Z
    owner = np.full(nf, -1, np.int64)
    owner_at = np.full(nf, -1, np.int64)
    owner_len = np.zeros(nf, np.int32)
    pool = np.empty(1 << 16, np.int64)
    used = 0
    cap = 1 << 12
    col = np.empty(cap, np.int64)
    other = np.empty(cap, np.int64)
    tmp = np.empty(cap, np.int64)
    kills = np.zeros(nf, np.uint8)
    for phase in range(2):
        for fid in range(nf):
            if creators[fid]:
                continue
            ok, x, y, z, t = _face_cells(fid, X, Y, Z)
            if not ok or _face_value(fu, x, y, z, t, Y, Z) != phase:
                continue
            n = _boundary_mod(fq, fid, X, Y, Z, col)
            reduced = False
            while n > 0:
                piv = col[n - 1]
                src = owner[piv]
                if src < 0:
                    break
                if owner_at[piv] < 0:
                    m = _boundary_mod(fq, src, X, Y, Z, other)
                else:
                    m = owner_len[piv]
                    if m > other.shape[0]:
                        other = np.empty(2 * m, np.int64)
                    other[:m] = pool[owner_at[piv]:owner_at[piv] + m]
                if n + m > tmp.shape[0]:
                    grown = np.empty(2 * (n + m), np.int64)
                    tmp = grown
                    keep = np.empty(2 * (n + m), np.int64)
                    keep[:n] = col[:n]
                    col = keep
                n = _symdiff(col, n, other, m, tmp)
                col, tmp = tmp, col
                reduced = True
            if n == 0:
                if phase == 1:
                    kills[fid] = 1
                continue
            piv = col[n - 1]
            owner[piv] = fid
            if reduced:
                if used + n > pool.shape[0]:
                    grown = np.empty(2 * (used + n), np.int64)
                    grown[:used] = pool[:used]
                    pool = grown
                pool[used:used + n] = col[:n]
                owner_at[piv] = used
                owner_len[piv] = n
                used += n
    return kills


def matched_counts(pred: np.ndarray, gt: np.ndarray, finite: tuple[tuple[int, int, int], tuple[int, int, int]]):
    """Matched counts (m0, m1, m2) for one octant; ``finite`` = (pred counts, label counts)."""
    X, Y, Z = pred.shape
    p_counts, g_counts = finite
    need = [p_counts[k] > 0 and g_counts[k] > 0 for k in range(3)]
    if not any(need):
        return 0, 0, 0
    if np.array_equal(pred, gt):
        return tuple(p_counts)
    fp = np.ascontiguousarray(pred, dtype=np.uint8).ravel()
    fg = np.ascontiguousarray(gt, dtype=np.uint8).ravel()
    m0 = matched_dim0(fp, fg, X, Y, Z) if need[0] else 0
    m1 = m2 = 0
    if (need[1] or need[2]) and min(X, Y, Z) >= 2:
        m2, creators = matched_dim2_and_creators(fp, fg, X, Y, Z, need[2])
        if need[1]:
            fu = fp | fg
            kp = killing_faces(fp, fu, X, Y, Z, creators)
            kg = killing_faces(fg, fu, X, Y, Z, creators)
            m1 = int(np.count_nonzero(kp & kg))
        if not need[2]:
            m2 = 0
    elif need[1]:
        # a slab one voxel thick: no 3-cells, so no face creates a 2-cycle
        fu = fp | fg
        creators = np.zeros(3 * X * Y * Z, np.uint8)
        kp = killing_faces(fp, fu, X, Y, Z, creators)
        kg = killing_faces(fg, fu, X, Y, Z, creators)
        m1 = int(np.count_nonzero(kp & kg))
    return int(m0), int(m1), int(m2)
