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
  faces that can die (creators are cleared first). Long reductions leave copies of
  their working column that later ones, swept along the same path, add to skip
  ahead (see ``_reduce_taken``).

No library computes induced matchings of cubical image persistence, and the
reference needs a C++ build; these kernels are written for numba so that
``pip install`` is all the metric needs.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def _find(parent, i):
    """Root of i, halving the path on the way."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@njit(cache=True)
def matched_dim0(fp, fg, X, Y, Z):
    """Matched 0-dimensional intervals; fp/fg are flat uint8 foreground masks.

    Components are rooted at their oldest voxel in the comparison order (lowest
    value, then index), as the elder rule links them; per root the oldest voxel of
    each input is kept alongside.
    """
    n = X * Y * Z
    fu = fp | fg
    parent = np.arange(n, dtype=np.int32)
    key_p = np.empty(n, np.int32)
    key_g = np.empty(n, np.int32)
    for v in range(n):
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
                        if 1 - (fu[v] & fu[w]) != phase:
                            continue
                        a = _find(parent, v)
                        b = _find(parent, w)
                        if a == b:
                            continue
                        # order the roots: a elder (foreground first, then lower index)
                        if (1 - fu[a], a) > (1 - fu[b], b):
                            a, b = b, a
                        if phase == 1 and fu[b]:
                            # a comparison interval ends; matched when the younger
                            # component is born at 0 in both inputs too
                            if max(key_p[a], key_p[b]) < n and max(key_g[a], key_g[b]) < n:
                                matched += 1
                        parent[b] = a
                        key_p[a] = min(key_p[a], key_p[b])
                        key_g[a] = min(key_g[a], key_g[b])
    return matched


def _face_values(f: np.ndarray) -> np.ndarray:
    """Per face id (voxel index * 3 + type): 0 foreground, 1 background, 2 no such face."""
    X, Y, Z = f.shape
    out = np.full((X, Y, Z, 3), 2, np.uint8)
    out[:, :-1, :-1, 0] = 1 - (f[:, :-1, :-1] & f[:, 1:, :-1] & f[:, :-1, 1:] & f[:, 1:, 1:])
    out[:-1, :, :-1, 1] = 1 - (f[:-1, :, :-1] & f[1:, :, :-1] & f[:-1, :, 1:] & f[1:, :, 1:])
    out[:-1, :-1, :, 2] = 1 - (f[:-1, :-1, :] & f[1:, :-1, :] & f[:-1, 1:, :] & f[1:, 1:, :])
    return out.ravel()


def _cube_values(f: np.ndarray) -> np.ndarray:
    """Per voxel index of a cube's lowest corner: 0 foreground, 1 background (or no cube)."""
    X, Y, Z = f.shape
    out = np.ones((X, Y, Z), np.uint8)
    inner = f[:-1, :-1, :-1].copy()
    for dx in range(2):
        for dy in range(2):
            for dz in range(2):
                inner &= f[dx:X - 1 + dx, dy:Y - 1 + dy, dz:Z - 1 + dz]
    out[:-1, :-1, :-1] = 1 - inner
    return out.ravel()


def _edges_inside(f: np.ndarray) -> np.ndarray:
    """Per edge id (voxel index * 3 + direction): 1 when both voxels are foreground."""
    X, Y, Z = f.shape
    out = np.zeros((X, Y, Z, 3), np.uint8)
    out[:-1, :, :, 0] = f[:-1] & f[1:]
    out[:, :-1, :, 1] = f[:, :-1] & f[:, 1:]
    out[:, :, :-1, 2] = f[:, :, :-1] & f[:, :, 1:]
    return out.ravel()


@njit(cache=True)
def _elder(cube_value, a, b):
    """Whether 3-cell a is older than b in the dual filtration (higher value, then index)."""
    return cube_value[a] > cube_value[b] or (cube_value[a] == cube_value[b] and a > b)


@njit(cache=True)
def _dual_pass(face_value, cube_value, cube_key_value, X, Y, Z, recorded, check0, check1, face_class):
    """Union-find of 3-cells over the faces, from the top of the filtration.

    Faces are taken by decreasing (value, index); a 3-cell's age is its value in
    ``cube_value`` then its index, the outside counting as oldest. Components are
    rooted at their eldest cell in ``cube_key_value`` order. At each merge that ends
    a finite interval (a foreground face joining a background-born component), the
    younger root is recorded; with ``check0``/``check1`` given, returns how many ended
    intervals both inputs recorded, and sets the merging faces (2-cycle creators) to 2 in
    ``face_class``.
    """
    n = X * Y * Z
    inf = n
    parent = np.arange(n + 1, dtype=np.int32)
    eldest = np.arange(n + 1, dtype=np.int32)  # per root: eldest cell by cube_value
    cv = np.empty(n + 1, np.uint8)
    cv[:n] = cube_value
    cv[inf] = 2
    ckv = np.empty(n + 1, np.uint8)
    ckv[:n] = cube_key_value
    ckv[inf] = 2
    strides = (Y * Z, Z, 1)
    matched = 0
    comparing = check0.shape[0] > 0
    for phase in range(2):  # faces of value 1, then of value 0
        wanted = 1 - phase
        for x in range(X - 1, -1, -1):
            for y in range(Y - 1, -1, -1):
                for z in range(Z - 1, -1, -1):
                    v = (x * Y + y) * Z + z
                    for t in range(2, -1, -1):
                        fid = 3 * v + t
                        if face_value[fid] != wanted:
                            continue
                        coord = x if t == 0 else (y if t == 1 else z)
                        size = X if t == 0 else (Y if t == 1 else Z)
                        lo = v - strides[t] if coord > 0 else inf
                        hi = v if coord + 1 < size else inf
                        a = _find(parent, lo)
                        b = _find(parent, hi)
                        if a == b:
                            continue
                        if comparing:
                            face_class[fid] = 2
                        ea = eldest[a]
                        eb = eldest[b]
                        younger_a = eb if _elder(cv, ea, eb) else ea
                        if wanted == 0 and cv[younger_a] == 1:
                            # the younger root in the comparison order keys the interval
                            dying = b if _elder(ckv, a, b) else a
                            if comparing:
                                if check0[dying] and check1[dying]:
                                    matched += 1
                            else:
                                recorded[dying] = 1
                        if _elder(ckv, a, b):
                            parent[b] = a
                            eldest[a] = ea if _elder(cv, ea, eb) else eb
                        else:
                            parent[a] = b
                            eldest[b] = ea if _elder(cv, ea, eb) else eb
    return matched


def matched_dim2_and_face_class(fp, fg, fu, face_u, need_dim2: bool):
    """(matched 2-dim intervals, face classes of the comparison filtration).

    ``fu`` is the comparison image (``fp | fg``) and ``face_u`` its face values; the
    classes are those values (0 foreground, 1 background, 2 no such face) with the
    2-cycle creators set to 2, as the dimension-1 reduction wants its columns.
    """
    X, Y, Z = fp.shape
    n = fp.size
    empty = np.zeros(0, np.uint8)
    face_class = face_u.copy()
    cube_u = _cube_values(fu)
    if need_dim2:
        rec_p = np.zeros(n + 1, np.uint8)
        rec_g = np.zeros(n + 1, np.uint8)
        _dual_pass(_face_values(fp), _cube_values(fp), cube_u, X, Y, Z, rec_p, empty, empty, empty)
        _dual_pass(_face_values(fg), _cube_values(fg), cube_u, X, Y, Z, rec_g, empty, empty, empty)
    else:
        rec_p = rec_g = np.zeros(n + 1, np.uint8)
    matched = _dual_pass(face_u, cube_u, cube_u, X, Y, Z, empty, rec_p, rec_g, face_class)
    return matched, face_class


@njit(cache=True)
def _face_edges(v, t, sx, sy):
    """The four edge ids (voxel index * 3 + direction) of face (v, t), ascending."""
    if t == 0:  # spans y, z
        a, b, c, d = v * 3 + 1, v * 3 + 2, (v + 1) * 3 + 1, (v + sy) * 3 + 2
    elif t == 1:  # spans x, z
        a, b, c, d = v * 3, v * 3 + 2, (v + 1) * 3, (v + sx) * 3 + 2
    else:  # spans x, y
        a, b, c, d = v * 3, v * 3 + 1, (v + sy) * 3, (v + sx) * 3 + 1
    if c > d:
        c, d = d, c
    return a, b, c, d


@njit(cache=True)
def _outside(inside, bit, a, b, c, d, out):
    """Of the ascending edges a..d, those not inside the mask ``bit``, into out; their number."""
    n = 0
    for e in (a, b, c, d):
        if not inside[e] & bit:
            out[n] = e
            n += 1
    return n


@njit(cache=True)
def _raw_column(inside, bit, src, sx, sy, out):
    """Face src's boundary without the edges inside the mask, ascending."""
    v = src // 3
    a, b, c, d = _face_edges(v, src - 3 * v, sx, sy)
    return _outside(inside, bit, a, b, c, d, out)


@njit(cache=True)
def _heap_push(heap, h, e):
    """Push e on the max-heap heap[:h] (which has room); returns the new size."""
    i = h
    while i > 0:
        parent = (i - 1) >> 1
        if heap[parent] >= e:
            break
        heap[i] = heap[parent]
        i = parent
    heap[i] = e
    return h + 1


@njit(cache=True)
def _heap_pop(heap, h):
    """Remove the top of the max-heap heap[:h]; returns the new size."""
    h -= 1
    e = heap[h]
    i = 0
    while True:
        child = 2 * i + 1
        if child >= h:
            break
        if child + 1 < h and heap[child + 1] > heap[child]:
            child += 1
        if heap[child] <= e:
            break
        heap[i] = heap[child]
        i = child
    if h > 0:
        heap[i] = e
    return h


@njit(cache=True)
def _add_entries(entries, lo, hi, bits, heap, h):
    """Add entries[lo:hi] to the working column (bits + heap); returns the heap size."""
    for j in range(lo, hi):
        e = entries[j]
        bits[e] ^= 1
        if bits[e]:
            h = _heap_push(heap, h, e)
    return h


@njit(cache=True)
def _earlier(face_u, f, d, d_fg):
    """Whether face f precedes face d in the comparison order (foreground faces first)."""
    fu = face_u[f]
    if fu == 2:
        return False
    if fu == 0:
        return (not d_fg) or f < d
    return (not d_fg) and f < d


# A long walk leaves a copy of its working column every SHORTCUT_EVERY steps, filed
# under the pivot it has then; see _reduce_taken. (Measured: 32 to 256 run alike.)
SHORTCUT_EVERY = 128


@njit(cache=True)
def _snapshot(bits, heap, h, cuts, at):
    """Copy the working column's entries to cuts[at] as (length, entries); returns the end."""
    count = 0
    for j in range(h):
        e = heap[j]
        if bits[e] == 1:
            bits[e] = 2  # stale duplicates in the heap are skipped
            cuts[at + 1 + count] = e
            count += 1
    for j in range(at + 1, at + 1 + count):
        bits[cuts[j]] = 1
    cuts[at] = count
    return at + 1 + count


@njit(cache=True)
def _reduce_taken(inside, bit, pivots, pool, used, cuts, cuts_used, every, first, n, bits, heap, other, sx, sy, face_u, d, d_fg):
    """Reduce face d's column, whose pivot is taken; store it unless it becomes zero.

    The working column is a bit per edge plus a max-heap of its entries (stale
    entries are dropped when they surface), so adding a face costs O(log n).
    Any earlier face whose boundary has the current pivot as its largest edge may
    reduce it, as may the column stored under the pivot: their boundaries all lie
    in the span of earlier columns. Of the faces, the one cancelling most entries
    is added, which keeps the column local instead of sweeping it across the
    volume.

    Shortcuts: the costly columns are those that must be swept across much of the
    volume (an arc between two sheets pushed back slice by slice until it
    vanishes), and neighbouring columns are swept along the same way. So a long
    walk leaves copies of its working column in ``cuts`` (every ``every`` steps; 0:
    never), filed under their pivot. Each copy is the walked column plus earlier
    columns, so once that column is done it lies in the span of the processed
    columns and may be added to any later one. A later walk that reaches a filed
    pivot adds the copy when it cancels more than half of its entries, which jumps
    over the rest of the sweep. Returns (used, cuts_used, zero), used = -1 when
    ``heap`` or ``pool`` is too small (the caller then starts over with larger ones).
    """
    h = 0
    for j in range(n):
        bits[first[j]] = 1
        h = _heap_push(heap, h, first[j])
    zero = True
    steps = 0
    while True:
        while h > 0 and bits[heap[0]] == 0:
            h = _heap_pop(heap, h)
        if h == 0:
            break
        piv = heap[0]
        src = pivots[piv, 0]
        if src == -1:
            zero = False
            break
        steps += 1
        cut = pivots[piv, 1]
        if cut >= 0:
            length = cuts[cut]
            overlap = 0
            for j in range(cut + 1, cut + 1 + length):
                overlap += bits[cuts[j]]
            if 2 * overlap > length:
                if h + length > heap.shape[0]:
                    _clear(bits, heap, h)
                    return -1, cuts_used, False
                h = _add_entries(cuts, cut + 1, cut + 1 + length, bits, heap, h)
                continue
        elif every > 0 and steps % every == 0 and cuts_used + h + 1 <= cuts.shape[0]:
            pivots[piv, 1] = cuts_used
            cuts_used = _snapshot(bits, heap, h, cuts, cuts_used)
        w = piv // 3
        t = piv - 3 * w
        if t == 0:  # the faces containing the pivot edge
            f0, f1, f2, f3 = 3 * w + 1, 3 * (w - 1) + 1, 3 * w + 2, 3 * (w - sy) + 2
        elif t == 1:
            f0, f1, f2, f3 = 3 * w, 3 * (w - 1), 3 * w + 2, 3 * (w - sx) + 2
        else:
            f0, f1, f2, f3 = 3 * w, 3 * (w - sy), 3 * w + 1, 3 * (w - sx) + 1
        best = -1
        best_score = -1
        for f in (f0, f1, f2, f3):
            if f < 0 or not _earlier(face_u, f, d, d_fg):
                continue
            m = _raw_column(inside, bit, f, sx, sy, other)
            if m == 0 or other[m - 1] != piv:
                continue
            score = 0
            for j in range(m - 1):
                score += bits[other[j]]
            if score > best_score:
                best_score = score
                best = f
        if best < 0 and src >= 0:
            best = src
        if best >= 0:
            m = _raw_column(inside, bit, best, sx, sy, other)
            if h + m > heap.shape[0]:
                _clear(bits, heap, h)
                return -1, cuts_used, False
            h = _add_entries(other, 0, m, bits, heap, h)
        else:
            at = -src - 2
            if h + pool[at] > heap.shape[0]:
                _clear(bits, heap, h)
                return -1, cuts_used, False
            h = _add_entries(pool, at + 1, at + 1 + pool[at], bits, heap, h)
    if zero:
        return used, cuts_used, True
    # drain the heap: the entries, largest first, clearing their bits
    if used + h + 1 > pool.shape[0]:
        _clear(bits, heap, h)
        return -1, cuts_used, False
    count = 0
    while h > 0:
        e = heap[0]
        h = _heap_pop(heap, h)
        if bits[e]:
            bits[e] = 0
            pool[used + 1 + count] = e
            count += 1
    lo = used + 1
    hi = used + count
    while lo < hi:  # ascending order
        pool[lo], pool[hi] = pool[hi], pool[lo]
        lo += 1
        hi -= 1
    pool[used] = count
    pivots[pool[used + count], 0] = -(used + 2)
    return used + count + 1, cuts_used, False


@njit(cache=True)
def _clear(bits, heap, h):
    for j in range(h):
        bits[heap[j]] = 0


@njit(cache=True)
def _killing_faces(inside, face_class, face_u, sx, sy, kills, pivots, bits, pool, heap, cuts, every):
    """Mark the faces at which a cycle of the prediction (bit 1) or label (bit 2) dies.

    Columns are the faces in the comparison order: those of ``face_class`` 0
    (foreground), then those of class 1, each by index; class 2 (2-cycle creators,
    which reduce to zero, and missing faces) is skipped. For each mask the rows are
    the edges not inside it (bit 1 or 2 of ``inside``); a class-1 column that reduces
    to zero there kills a cycle of that mask. ``pivots[k, edge]`` holds, for mask k,
    the column whose pivot the edge is (-1 none; a face id, its boundary recomputed on
    use; or -(offset + 2) of a reduced column kept in ``pool``, shared by both masks,
    as (length, entries)) next to the edge's shortcut copy in ``cuts`` (-1 none), so
    that one cache line serves both lookups. ``bits`` is all zero on entry and exit.
    Returns False when ``pool`` or ``heap`` ran out.
    """
    nf = face_class.shape[0]
    used = 0
    cuts_used = 0
    first = np.empty(4, np.int32)
    other = np.empty(4, np.int32)
    for phase in range(2):
        for fid in range(nf):
            if face_class[fid] != phase:
                continue
            v = fid // 3
            a, b, c, d = _face_edges(v, fid - 3 * v, sx, sy)
            for k in range(2):
                bit = k + 1
                n = _outside(inside, bit, a, b, c, d, first)
                zero = n == 0
                if not zero:
                    pivot = first[n - 1]
                    # (full indexing: a row view here would cost reference counting per face)
                    if pivots[k, pivot, 0] == -1:  # most columns: the pivot is free, nothing to store
                        pivots[k, pivot, 0] = fid
                    else:
                        used, cuts_used, zero = _reduce_taken(
                            inside, bit, pivots[k], pool, used, cuts, cuts_used, every,
                            first, n, bits, heap, other, sx, sy, face_u, fid, phase == 0)
                        if used < 0:
                            return False
                if zero and phase == 1:
                    kills[fid] |= bit
    return True


class Workspace:
    """Buffers of the dimension-1 reduction, reused from one octant to the next.

    The tables are large (about 20 bytes per edge) and mostly touched once, so
    fresh pages for every octant would cost more than filling them again.
    """

    def __init__(self):
        self._buffers: dict[str, np.ndarray] = {}

    def array(self, name: str, shape: tuple[int, ...], dtype, fill=None) -> np.ndarray:
        size = int(np.prod(shape))
        buffer = self._buffers.get(name)
        if buffer is None or buffer.size < size or buffer.dtype != dtype:
            buffer = self._buffers[name] = np.empty(size, dtype)
        view = buffer[:size].reshape(shape)
        if fill is not None:
            view.fill(fill)
        return view


def killing_faces(fp: np.ndarray, fg: np.ndarray, face_class: np.ndarray, face_u: np.ndarray,
                  workspace: Workspace | None = None, shortcut_every: int | None = None) -> np.ndarray:
    """Per face: bit 1 when it kills a prediction cycle, bit 2 when it kills a label cycle.

    ``shortcut_every``: steps between shortcut copies (default ``SHORTCUT_EVERY``; 0
    turns them off, the result is the same).
    """
    _, Y, Z = fp.shape
    ws = workspace or Workspace()
    nf = face_class.size
    every = SHORTCUT_EVERY if shortcut_every is None else shortcut_every
    inside = _edges_inside(fp) | (_edges_inside(fg) << 1)
    bits = ws.array("bits", (nf,), np.uint8, fill=0)
    cuts = ws.array("cuts", (1 << 22,), np.int32)  # shortcut copies; when full, no more are made
    pool_size, heap_size = 1 << 22, 1 << 16
    while True:
        kills = np.zeros(nf, np.uint8)
        pivots = ws.array("pivots", (2, nf, 2), np.int32, fill=-1)
        pool, heap = ws.array("pool", (pool_size,), np.int32), ws.array("heap", (heap_size,), np.int32)
        if _killing_faces(inside, face_class, face_u, Y * Z, Z, kills, pivots, bits, pool, heap, cuts, every):
            return kills
        if pool_size >= 2**31 // 2:
            raise MemoryError("Betti matching: the reduced columns outgrew a 2^31-entry pool")
        pool_size, heap_size = 2 * pool_size, 2 * heap_size


def matched_counts(pred: np.ndarray, gt: np.ndarray, finite, workspace: Workspace | None = None) -> tuple[int, int, int]:
    """Matched counts (m0, m1, m2) of one octant; ``finite`` = (pred counts, label counts).

    ``workspace`` lends buffers to reuse across calls (see ``Workspace``).
    """
    p_counts, g_counts = finite
    need = [p_counts[k] > 0 and g_counts[k] > 0 for k in range(3)]
    if not any(need):
        return 0, 0, 0
    if np.array_equal(pred, gt):
        return tuple(int(c) for c in p_counts)
    fp = np.ascontiguousarray(pred, dtype=np.uint8)
    fg = np.ascontiguousarray(gt, dtype=np.uint8)
    X, Y, Z = fp.shape
    m0 = matched_dim0(fp.ravel(), fg.ravel(), X, Y, Z) if need[0] else 0
    m1 = m2 = 0
    if need[1] or need[2]:
        fu = fp | fg
        face_u = _face_values(fu)
        m2, face_class = matched_dim2_and_face_class(fp, fg, fu, face_u, need[2])
        if need[1]:
            m1 = int(np.count_nonzero(killing_faces(fp, fg, face_class, face_u, workspace) == 3))
    return int(m0), int(m1), int(m2)
