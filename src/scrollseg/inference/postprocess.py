"""Probability map -> binary surface mask, in small steps that repair the topology the metric scores.

The leaderboard's TopoScore (``metrics/topology.py``) takes Betti numbers of the
foreground's cubical complex: components are 6-connected, cavities are 26-connected
background, and every ring of foreground around a missing voxel is a 1-cycle. So every
step here treats the foreground as 6-connected, the background as 26-connected (8 in a
slice), and adds voxels only under one rule: an added voxel belongs to one component and
has no other component among its 26 neighbours, so two sheets are never merged, neither
for TopoScore nor for the 26-connected VOI. Each step is a pure function of numpy arrays;
``postprocess`` runs the steps an ``InferenceConfig`` lists, in its order, after the
threshold; before it, with ``recto_context`` > 0, it drops the verso side of each sheet
(``recto.py``), which needs the image.

The closing is hand-written: scipy's morphology closes the whole mask at once and bridges
neighbouring sheets, and closing each component in its own bounding box costs about eight
times the volume on real chunks, whose curved sheets each span the whole box. The numba
kernels here close every component separately in one sweep, by carrying the set of
component labels each voxel's window reaches.
"""
from __future__ import annotations

from typing import Callable

import cc3d
import numpy as np
from numba import njit

from ..config import InferenceConfig
from ..errors import ConfigError
from .recto import keep_recto_face

FOREGROUND_CONNECTIVITY = 6  # the metric's: topology.betti_numbers labels foreground 6-connected

_MANY = np.uint32(np.iinfo(np.uint32).max)  # owner mark: more than one component claims the voxel


def _labels(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """6-connected component labels (uint32) and their count."""
    return cc3d.connected_components(mask, connectivity=FOREGROUND_CONNECTIVITY, return_N=True, out_dtype=np.uint32)


@njit(cache=True)
def _kept_components(labels, keep):
    """``keep[label]`` per voxel, as a bool volume."""
    flat, out = labels.reshape(-1), np.empty(labels.size, np.bool_)
    for i in range(flat.size):
        out[i] = keep[flat[i]]
    return out.reshape(labels.shape)


@njit(cache=True)
def _components_above(labels, n, prob, high):
    reached = np.zeros(n + 1, np.bool_)
    flat, p = labels.reshape(-1), prob.reshape(-1)
    for i in range(flat.size):
        if p[i] > high:
            reached[flat[i]] = True
    reached[0] = False
    return reached


@njit(cache=True)
def _components_of_size(labels, n, min_size):
    size = np.zeros(n + 1, np.int64)
    flat = labels.reshape(-1)
    for i in range(flat.size):
        size[flat[i]] += 1
    large = size >= min_size
    large[0] = False
    return large


def hysteresis(prob: np.ndarray, low: float, high: float) -> np.ndarray:
    """Voxels above ``low`` in 6-connected components that exceed ``high`` somewhere."""
    if low >= high:
        raise ConfigError(f"hysteresis low {low} must lie below high {high}; lower inference.hysteresis_low or raise inference.threshold")
    prob = np.ascontiguousarray(prob)
    labels, n = _labels(prob > low)
    return _kept_components(labels, _components_above(labels, n, prob, high))


def remove_dust(mask: np.ndarray, min_size: int) -> np.ndarray:
    """``mask`` without its 6-connected components smaller than ``min_size`` voxels."""
    mask = np.asarray(mask, dtype=bool)
    if min_size <= 1 or not mask.any():
        return mask.copy()
    labels, n = _labels(mask)
    return _kept_components(labels, _components_of_size(labels, n, min_size))


# ---------------------------------------------------------------- adding voxels safely


@njit(cache=True)
def _attached_candidates(labels, owner, candidates):
    """Which candidates (flat indices of voxels with ``owner`` > 0) are safe to add; see ``_settle``."""
    Z, Y, X = labels.shape
    state = np.zeros(labels.shape, np.uint8)  # 1: safe, 2: safe and reached from its component
    queue = []
    for flat in candidates:
        z, rest = divmod(flat, Y * X)
        y, x = divmod(rest, X)
        own = owner[z, y, x]
        if own == _MANY or labels[z, y, x] != 0:
            continue
        safe = True
        for dz in range(max(z - 1, 0), min(z + 2, Z)):
            for dy in range(max(y - 1, 0), min(y + 2, Y)):
                for dx in range(max(x - 1, 0), min(x + 2, X)):
                    other = labels[dz, dy, dx]
                    if other == 0:
                        other = owner[dz, dy, dx]
                    if other != 0 and other != _MANY and other != own:
                        safe = False
        if not safe:
            continue
        state[z, y, x] = 1
        if (
            (z > 0 and labels[z - 1, y, x] != 0) or (z + 1 < Z and labels[z + 1, y, x] != 0)
            or (y > 0 and labels[z, y - 1, x] != 0) or (y + 1 < Y and labels[z, y + 1, x] != 0)
            or (x > 0 and labels[z, y, x - 1] != 0) or (x + 1 < X and labels[z, y, x + 1] != 0)
        ):
            queue.append(flat)
    # a neighbour that differs makes both voxels unsafe, so a safe voxel touches only its
    # own component: keep the safe voxels that reach it along 6-neighbours
    for flat in queue:
        state.flat[flat] = 2
    while len(queue) > 0:
        flat = queue.pop()
        z, rest = divmod(flat, Y * X)
        y, x = divmod(rest, X)
        for nz, ny, nx in ((z - 1, y, x), (z + 1, y, x), (z, y - 1, x), (z, y + 1, x), (z, y, x - 1), (z, y, x + 1)):
            if 0 <= nz < Z and 0 <= ny < Y and 0 <= nx < X and state[nz, ny, nx] == 1:
                state[nz, ny, nx] = 2
                queue.append((nz * Y + ny) * X + nx)
    keep = np.zeros(candidates.size, np.bool_)
    for i in range(candidates.size):
        keep[i] = state.flat[candidates[i]] == 2
    return keep


def _settle(labels: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """The foreground plus the proposed voxels (``owner``: the component each would join)
    that are safe: claimed by one component, with no other component or other claim among
    their 26 neighbours, and 6-connected to their component through safe voxels."""
    mask = labels != 0
    candidates = np.flatnonzero(owner)
    if candidates.size:
        mask.reshape(-1)[candidates[_attached_candidates(labels, owner, candidates)]] = True
    return mask


# ---------------------------------------------------------------- hole plugging


@njit(cache=True)
def _claim_slice_holes(holes, n, labels, hole_max, owner):
    """Mark in ``owner`` the slice's enclosed background regions (``holes``: their 8-connected
    labels 1..n) of at most ``hole_max`` voxels whose 4-neighbour rim is one component."""
    H, W = holes.shape
    size = np.zeros(n + 1, np.int64)
    for i in range(H):
        for j in range(W):
            size[holes[i, j]] += 1
    small = size <= hole_max
    for i in range(H):
        small[holes[i, 0]] = small[holes[i, W - 1]] = False
    for j in range(W):
        small[holes[0, j]] = small[holes[H - 1, j]] = False
    small[0] = False
    if not small.any():
        return
    lo = np.full(n + 1, _MANY, np.uint32)
    hi = np.zeros(n + 1, np.uint32)
    for i in range(1, H - 1):
        for j in range(1, W - 1):
            h = holes[i, j]
            if small[h]:
                for l in (labels[i - 1, j], labels[i + 1, j], labels[i, j - 1], labels[i, j + 1]):
                    if l != 0:
                        lo[h] = min(lo[h], l)
                        hi[h] = max(hi[h], l)
    for i in range(1, H - 1):
        for j in range(1, W - 1):
            h = holes[i, j]
            if not small[h] or lo[h] != hi[h]:
                continue
            if owner[i, j] == 0:
                owner[i, j] = hi[h]
            elif owner[i, j] != hi[h]:
                owner[i, j] = _MANY


def slice_regions(background: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected labels 1..n of a 2D slice's True pixels, and n.

    Labelled as a one-voxel-deep volume with 26-connectivity (the same neighbourhood):
    cc3d 4.1's 2D 8-connected path gives pixels outside ``background`` labels and a count
    below the largest label, which made ``plug_holes`` index past its tables."""
    labels, n = cc3d.connected_components(background[None], connectivity=26, return_N=True, out_dtype=np.uint32)
    return labels[0], int(n)


def plug_holes(mask: np.ndarray, hole_max: int = 16) -> np.ndarray:
    """Fill the small holes that make a sheet's 1-cycles (and small cavities), without joining sheets.

    A hole is a background region of one axis-aligned slice, 8-connected as the metric's
    background is, that does not reach the slice's border, has at most ``hole_max`` voxels
    and is ringed (4-neighbours in the slice) by one 6-connected component. Slices along
    all three axes are searched, so a sheet's holes show as enclosed regions in the slices
    most across it, whatever its orientation; a small enclosed cavity is enclosed in every
    slice through it. Slices, not a voxel-neighbourhood rule, because a tunnel is a matter
    of enclosure: a notch in a sheet's edge has foreground on opposite sides too, and a
    two-voxel diagonal hole has on no axis. Holes bigger than ``hole_max`` are left to
    ``close_sheets``, so that the space between two windings of one sheet (enclosed in
    some slices) is not filled. A voxel that would touch another component stays empty.
    """
    mask = np.asarray(mask, dtype=bool)
    labels, _ = _labels(mask)
    owner = np.zeros(mask.shape, np.uint32)
    for axis in range(3):
        background = np.ascontiguousarray(np.moveaxis(~mask, axis, 0))  # slices labelled fastest contiguous
        axis_labels, axis_owner = np.moveaxis(labels, axis, 0), np.moveaxis(owner, axis, 0)
        for i in range(len(background)):
            holes, n = slice_regions(background[i])
            if n:
                _claim_slice_holes(holes, n, axis_labels[i], hole_max, axis_owner[i])
    return _settle(labels, owner)


# ---------------------------------------------------------------- per-sheet closing
#
# A voxel's set of component labels is packed into one unsigned integer of 2 * shift bits,
# (a << shift) | b with a < b and 0 standing for "none": {} is 0, {k} is k, {j, k} is
# (j << shift) | k; three or more labels are all ones ("crowd"). Equal sets (the common
# case: one sheet's label) combine in one compare. uint32 sets hold labels below 2**16;
# the kernels compute in uint64 either way.

_EMPTY = np.uint64(0)


@njit(cache=True, inline="always")
def _union(s, t, shift, crowd):
    if s == t or t == 0:
        return s
    if s == 0:
        return t
    if s == crowd or t == crowd:
        return crowd
    low = crowd >> shift
    a, b = s >> shift, s & low
    for e in (t >> shift, t & low):
        if e == 0 or e == a or e == b:
            continue
        if a != 0:
            return crowd
        a = e
    return (min(a, b) << shift) | max(a, b)


@njit(cache=True, inline="always")
def _intersection(s, t, shift, crowd):
    if s == t or s == 0:
        return s
    if t == 0:
        return t
    low = crowd >> shift
    a, b, c, d = s >> shift, s & low, t >> shift, t & low
    a = a if a != 0 and (a == c or a == d) else _EMPTY
    b = b if b == c or b == d else _EMPTY
    return (a << shift) | b if a != 0 and b != 0 else a | b


@njit(cache=True, inline="always")
def _combine(s, t, grow, shift, crowd):
    return _union(s, t, shift, crowd) if grow else _intersection(s, t, shift, crowd)


@njit(cache=True)
def _window_sets(src, out, axis, r, grow, shift, crowd):
    """Into ``out``, the union (``grow``) or intersection of the label sets of ``src`` in each
    window of 2r+1 voxels along ``axis``; windows are cut at the volume's border."""
    Z, Y, X = src.shape
    if axis == 0:
        for z in range(Z):
            lo, hi = max(z - r, 0), min(z + r, Z - 1)
            out[z] = src[lo]
            for k in range(lo + 1, hi + 1):
                for y in range(Y):
                    for x in range(X):
                        out[z, y, x] = _combine(np.uint64(out[z, y, x]), np.uint64(src[k, y, x]), grow, shift, crowd)
    elif axis == 1:
        for z in range(Z):
            for y in range(Y):
                lo, hi = max(y - r, 0), min(y + r, Y - 1)
                out[z, y] = src[z, lo]
                for k in range(lo + 1, hi + 1):
                    for x in range(X):
                        out[z, y, x] = _combine(np.uint64(out[z, y, x]), np.uint64(src[z, k, x]), grow, shift, crowd)
    else:
        for z in range(Z):
            for y in range(Y):
                for x in range(X):
                    lo, hi = max(x - r, 0), min(x + r, X - 1)
                    acc = np.uint64(src[z, y, lo])
                    for k in range(lo + 1, hi + 1):
                        acc = _combine(acc, np.uint64(src[z, y, k]), grow, shift, crowd)
                    out[z, y, x] = acc


@njit(cache=True)
def _keep_owners(sets, labels, low):
    """In place: a background voxel's set becomes its owner where it holds one label, else 0."""
    flat_sets, flat_labels = sets.reshape(-1), labels.reshape(-1)
    for i in range(flat_sets.size):
        if np.uint64(flat_sets[i]) > low or flat_labels[i] != 0:
            flat_sets[i] = 0


def close_sheets(mask: np.ndarray, radius: tuple[int, int, int] = (1, 1, 1)) -> np.ndarray:
    """Close each 6-connected component by itself, with a (2rz+1, 2ry+1, 2rx+1) box.

    A background voxel joins component A when every box window around it reaches A
    (a binary closing of A alone); it is added only where no other component's closing
    claims it and no other component lies among its 26 neighbours. Every component is
    closed in the same sweep: each voxel carries the set of labels its window reaches
    (dilation: union), then the set every window around it shares (erosion: intersection).
    Where three or more components crowd into one window none is closed. Windows are cut
    at the volume's border, so a sheet is closed right up to it.
    """
    mask = np.asarray(mask, dtype=bool)
    if any(r < 0 for r in radius):
        raise ConfigError(f"closing radius {tuple(radius)} must be >= 0 on every axis")
    if not any(radius) or not mask.any():
        return mask.copy()
    labels, n = _labels(mask)
    dtype = np.uint32 if n < 2**16 - 1 else np.uint64
    shift, crowd = np.uint64(np.dtype(dtype).itemsize * 4), np.uint64(np.iinfo(dtype).max)
    sweeps = [(axis, int(r)) for axis, r in enumerate(radius) if r]
    sets, spare = labels.astype(dtype), np.empty(labels.shape, dtype)  # two buffers, reused: fresh pages are slow
    for grow in (True, False):
        if not grow:
            sets[sets == crowd] = 0  # where three components crowd into a window, none is closed
        for axis, r in sweeps:
            _window_sets(sets, spare, axis, r, grow, shift, crowd)
            sets, spare = spare, sets
    _keep_owners(sets, labels, crowd >> shift)
    return _settle(labels, sets)


# ---------------------------------------------------------------- cavities


@njit(cache=True)
def _cavity_rims(background, n, enclosed, labels):
    """Per background label, the lowest and highest foreground label among its 6-neighbours."""
    lo = np.full(n + 1, _MANY, np.uint32)
    hi = np.zeros(n + 1, np.uint32)
    Z, Y, X = labels.shape
    for z in range(1, Z - 1):
        for y in range(1, Y - 1):
            for x in range(1, X - 1):
                c = background[z, y, x]
                if not enclosed[c]:
                    continue
                for l in (labels[z - 1, y, x], labels[z + 1, y, x], labels[z, y - 1, x],
                          labels[z, y + 1, x], labels[z, y, x - 1], labels[z, y, x + 1]):
                    if l != 0:
                        lo[c] = min(lo[c], l)
                        hi[c] = max(hi[c], l)
    return lo, hi


def fill_cavities(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed background: 26-connected background components (the metric's cavities)
    that do not touch the volume's border and whose 6-neighbours all belong to one component.

    A cavity shared by two components, or holding a fragment, stays open: filling it would
    merge them. A component among a cavity's 26 neighbours is also among its 6-neighbours
    (the voxels between are foreground of it, or cavity), so this one check keeps components
    apart under both connectivities.
    """
    mask = np.asarray(mask, dtype=bool)
    background, n = cc3d.connected_components(~mask, connectivity=26, return_N=True, out_dtype=np.uint32)
    enclosed = np.ones(n + 1, dtype=bool)
    enclosed[0] = False
    for face in (background[[0, -1]], background[:, [0, -1]], background[:, :, [0, -1]]):
        enclosed[face.ravel()] = False
    if not enclosed.any():
        return mask.copy()
    lo, hi = _cavity_rims(background, n, enclosed, _labels(mask)[0])
    fill = enclosed & (lo == hi)
    return mask | fill[background]


# ---------------------------------------------------------------- composition

PostprocessStep = Callable[[np.ndarray, InferenceConfig], np.ndarray]

STEPS: dict[str, PostprocessStep] = {
    "remove_dust": lambda mask, cfg: remove_dust(mask, cfg.min_component),
    "plug_holes": lambda mask, cfg: plug_holes(mask, cfg.hole_max),
    "close_sheets": lambda mask, cfg: close_sheets(mask, tuple(cfg.close_radius)),
    "fill_cavities": lambda mask, cfg: fill_cavities(mask),
}


def foreground(prob: np.ndarray, threshold: float, hysteresis_low: float = 0.0) -> np.ndarray:
    """``prob > threshold``, or hysteresis from ``hysteresis_low`` to it when that is > 0."""
    if hysteresis_low > 0:
        return hysteresis(prob, hysteresis_low, threshold)
    return prob > threshold


def postprocess(prob: np.ndarray, cfg: InferenceConfig, image: np.ndarray | None = None) -> np.ndarray:
    """uint8 0/1 mask: ``prob`` thresholded as ``cfg`` says, then ``cfg.postprocess``'s steps in order.
    With ``cfg.recto_context`` > 0 the verso side of each sheet is dropped first, which needs
    the ``image`` the map was predicted from (``recto.keep_recto_face``)."""
    unknown = [name for name in cfg.postprocess if name not in STEPS]
    if unknown:
        raise ConfigError(f"unknown inference.postprocess step(s) {unknown}; known: {', '.join(STEPS)}")
    if cfg.recto_context > 0:
        if image is None:
            raise ConfigError("inference.recto_context > 0 needs the image beside the probability map")
        prob = keep_recto_face(prob, image, cfg.recto_context)
    mask = foreground(prob, cfg.threshold, cfg.hysteresis_low)
    for name in cfg.postprocess:
        mask = STEPS[name](mask, cfg)
    return mask.astype(np.uint8)
