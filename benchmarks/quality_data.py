"""Held-out evaluation datasets: scroll chunks unlike those `scrollseg synth` makes.

The training recipe is tuned on `scrollseg synth` data; these two generators measure
it on data it was not tuned on. Both write the competition layout exactly as
``scrollseg.data.synth.write_dataset`` does: ``train.csv``/``test.csv`` (``id,scroll_id``)
and ``{train,test}_{images,labels}/<id>.tif`` (uint8 LZW TIFF); labels are 0 background,
1 recto surface (the ~2-voxel layer on the sheet face toward the scroll's centre),
2 unlabelled. Between 30% and 90% of each volume is unlabelled: untraced sheets with a
margin around them, plus unlabelled regions.

``alt``  another synthetic family (96-112 voxels a side): windings around a roughly vertical
         axis, from nearly flat stacks (axis far away) to strong curvature (axis at the
         chunk's edge); wider pitch that varies from winding to winding;
         sheets of varying brightness with little contrast to the background; pores;
         photon (Poisson) noise, streak and ring artefacts in the slices across the axis.
``real`` sheets with real Scroll 1 shapes: 96^3 chunks cut from the three 256^3 sheet
         instance volumes in ``benchmarks/data/scroll1_sheets/`` (Vesuvius Challenge data,
         CC BY-NC 4.0), with CT-like intensity rendered from them; the test chunks come
         from another cube than the train chunks. See ``real_chunk`` for how the recto
         face is found.

In both, the papyrus texture carries the cue real papyrus has: the recto half of a sheet
has fibres along the winding (perpendicular to the scroll axis), the verso half fibres
along the scroll axis, rendered as anisotropic noise in the sheet's own coordinates. As in
the competition's chunks, the scroll axis is array axis 0 (z, tilted a little in ``alt``),
so "horizontal" and "vertical" fibres mean the same in every chunk; ``--any-axis`` puts it
along any array axis instead, which leaves recto and verso undecidable wherever the
sheets are too flat to show where the axis lies.

Difficulty, as on the competition's data: on 16 train + 6 test volumes (seed 11) the test
split scores 0.212 (alt) and 0.283 (real) for an empty prediction and 0.494 and 0.453 for
the intensity threshold tuned on the train split: the threshold finds whole sheets, not
their recto faces. (With ``--any-axis``, 12 + 4 volumes, seeds 0-2: empty 0.22-0.27,
threshold 0.44-0.52.)

Run: ``python benchmarks/quality_data.py {alt,real} OUT [--train N] [--test M] [--seed S] [--size D] [--any-axis] [--baselines]``;
``--baselines`` then prints the test score of an empty prediction and of a tuned threshold,
the face-blind ceilings (``face_blind_ceilings``) and the recto-face step's ceiling
(``recto_step_ceiling``).
"""
from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from scrollseg.data.io import read_volume, write_volume
from scrollseg.data.layout import list_volumes
from scrollseg.data.synth import smooth_field
from scrollseg.errors import DataError
from scrollseg.config import InferenceConfig
from scrollseg.inference.baseline import threshold_predict, tune_threshold
from scrollseg.inference.postprocess import postprocess
from scrollseg.metrics.leaderboard import score_volume

SCROLL1_SHEETS = Path(__file__).resolve().parent / "data" / "scroll1_sheets"
TEST_CUBE = "02256_02000_02000"
UNLABELLED = 2
RECTO_DEPTH = 2.0  # voxels of the recto face that carry label 1
UNLABELLED_FRACTION = (0.3, 0.9)
UNTRACED_MARGIN = 3  # voxels around an untraced sheet that stay unlabelled
FIBRE_LENGTH, FIBRE_WIDTH = 12.0, 2.0  # voxels: correlation length along and across a fibre


@dataclass
class Chunk:
    image: np.ndarray  # uint8 CT-like intensity
    label: np.ndarray  # uint8: 0 background, 1 recto face, 2 unlabelled
    sheets: np.ndarray  # int32: the sheet each voxel belongs to (0: none), as the label was drawn
    towards_centre: np.ndarray  # float32 unit vector(s) toward the scroll axis: (3,) or (3, *shape)


# ---------------------------------------------------------------- shared pieces


def fibre_texture(along: np.ndarray, across: np.ndarray, normal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance noise stretched along ``along``: fibres, given each voxel's sheet coordinates in voxels."""
    lattice = ndimage.gaussian_filter(rng.standard_normal((64, 64, 64)).astype(np.float32), 1.0, mode="wrap")
    lattice /= lattice.std()
    coords = np.stack([along / FIBRE_LENGTH, across / FIBRE_WIDTH, normal / FIBRE_WIDTH])
    return ndimage.map_coordinates(lattice, coords, order=1, mode="grid-wrap")


def trace_sheets(ids: np.ndarray, annotate, unlabelled_target: float, rng: np.random.Generator) -> np.ndarray:
    """Trace sheets in random order until ``annotate(traced ids)`` covers ``1 - unlabelled_target`` of the volume."""
    traced = []
    for i in rng.permutation(len(ids)):
        traced.append(int(ids[i]))
        annotated = annotate(traced)
        if annotated.mean() >= 1.0 - unlabelled_target:
            break
    return annotated


def unlabel_regions(label: np.ndarray, target: float, rng: np.random.Generator) -> None:
    """Set smooth blobs of labelled voxels to 2 until ``target`` of the volume is unlabelled.

    At most half the labelled voxels go, so a volume keeps enough surface to score."""
    unlabelled = np.count_nonzero(label == UNLABELLED)
    need = min(int(np.ceil(target * label.size)) - unlabelled, (label.size - unlabelled) // 2)
    if need <= 0:
        return
    field = smooth_field(label.shape, rng, 24)
    labelled = label != UNLABELLED
    values = field[labelled]
    cut = np.partition(values, values.size - need)[values.size - need]
    label[labelled & (field >= cut)] = UNLABELLED


def pores(shape, rng: np.random.Generator, fraction: float) -> np.ndarray:
    """Small voids: the top ``fraction`` of lightly smoothed noise."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 1.0)
    return noise > np.quantile(noise[::3, ::3, ::3], 1.0 - fraction)


def to_uint8(density: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    low, span = rng.uniform(10, 40), rng.uniform(170, 230)
    return np.clip(low + span * density, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- alt: a second synthetic family


@dataclass(frozen=True)
class AltStyle:
    """What one synthetic scroll shares across its chunks."""

    pitch: float  # mean winding pitch, voxels
    pitch_spread: float  # log-normal spread of the pitch from winding to winding
    thickness: float
    contrast: float  # sheet density above the background
    background: float
    photons: float  # Poisson noise: expected counts at density 1
    artefacts: float  # probability of rings, and of streaks, in a chunk


def alt_style(rng: np.random.Generator) -> AltStyle:
    return AltStyle(
        pitch=rng.uniform(14.0, 22.0),
        pitch_spread=rng.uniform(0.15, 0.35),
        thickness=rng.uniform(4.5, 6.5),
        contrast=rng.uniform(0.25, 0.35),
        background=rng.uniform(0.22, 0.32),
        photons=rng.uniform(50.0, 100.0),
        artefacts=rng.uniform(0.3, 0.7),
    )


def _scroll_axis(rng: np.random.Generator, any_axis: bool) -> np.ndarray:
    """Along array axis 0 (z, as in the competition's chunks), tilted a little; ``any_axis``: along any array axis."""
    axis = np.zeros(3)
    axis[rng.integers(3) if any_axis else 0] = 1.0
    axis += rng.normal(0, 0.2 if any_axis else 0.1, 3)
    return axis / np.linalg.norm(axis)


def _perpendicular(v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    u = rng.standard_normal(3)
    u -= (u @ v) * v
    return u / np.linalg.norm(u)


def _slice_artefacts(shape, slice_axis: int, style: AltStyle, rng: np.random.Generator) -> np.ndarray:
    """Rings (around a rotation centre, the same in every slice) and streaks (lines, some slices) across ``slice_axis``."""
    plane_shape = [s for i, s in enumerate(shape) if i != slice_axis]
    py, px = np.meshgrid(*(np.arange(s, dtype=np.float32) for s in plane_shape), indexing="ij")
    out = np.zeros(shape, np.float32)
    moved = np.moveaxis(out, slice_axis, 0)  # a view: slices along axis 0
    if rng.random() < style.artefacts:
        cy, cx = (rng.uniform(-1.0, 2.0) * s for s in plane_shape)
        radius = np.hypot(py - cy, px - cx)
        rings = np.zeros_like(radius)
        for r in rng.uniform(radius.min(), radius.max(), rng.integers(4, 12)):
            rings += rng.choice([-1, 1]) * rng.uniform(0.06, 0.15) * np.exp(-0.5 * ((radius - r) / 0.8) ** 2)
        moved += rings
    if rng.random() < style.artefacts:
        for _ in range(rng.integers(2, 6)):
            angle, offset = rng.uniform(0, np.pi), rng.uniform(0, max(plane_shape))
            line = np.exp(-0.5 * ((np.cos(angle) * py + np.sin(angle) * px - offset) / 0.8) ** 2)
            strength = np.where(rng.random(moved.shape[0]) < 0.4, rng.uniform(0.1, 0.25, moved.shape[0]), 0.0)
            moved += strength[:, None, None].astype(np.float32) * line
    return out


def alt_chunk(shape, style: AltStyle, rng: np.random.Generator, any_axis: bool = False) -> Chunk:
    """One chunk of a scroll wound around a roughly vertical axis (``any_axis``: any direction), at any distance from the chunk."""
    shape = tuple(int(s) for s in shape)
    grid = np.stack(np.meshgrid(*(np.arange(s, dtype=np.float32) for s in shape), indexing="ij"))
    size = float(np.mean(shape))
    axis = _scroll_axis(rng, any_axis)
    away = _perpendicular(axis, rng)
    # log-uniform distance: the axis at the chunk's edge (strongly curved) to far away (nearly flat)
    distance = size * np.exp(rng.uniform(np.log(0.45), np.log(25.0)))
    origin = np.array(shape, np.float32) / 2 + distance * away
    rel = grid - origin[:, None, None, None]
    height = np.tensordot(axis.astype(np.float32), rel, axes=1)  # position along the scroll axis
    radial = rel - axis[:, None, None, None].astype(np.float32) * height
    r = np.sqrt((radial**2).sum(0))
    # angle around the axis, zero toward the chunk so the spiral's branch cut lies behind the axis
    e1, e2 = -away, np.cross(axis, -away)
    theta = np.arctan2(np.tensordot(e2.astype(np.float32), radial, axes=1), np.tensordot(e1.astype(np.float32), radial, axes=1))
    rho = r + rng.uniform(1.0, 4.0) * smooth_field(shape, rng, 40) + 1.0 * smooth_field(shape, rng, 14)

    # the pitch varies with radius; psi counts windings and rises by one per pitch
    knots = np.arange(rho.min() - 40.0, rho.max() + 40.0, 10.0)
    pitches = np.clip(style.pitch * np.exp(style.pitch_spread * rng.standard_normal(knots.size)), 9.0, 34.0)
    turns = np.concatenate([[0.0], np.cumsum(np.diff(knots) * 0.5 * (1 / pitches[1:] + 1 / pitches[:-1]))])
    psi = np.interp(rho, knots, turns) - theta / (2 * np.pi)
    winding = np.floor(psi).astype(np.int32)
    local_pitch = np.interp(rho, knots, pitches).astype(np.float32)
    depth = (psi - winding).astype(np.float32) * local_pitch  # voxels outward from the recto face
    winding -= winding.min() - 1
    ids = np.arange(1, winding.max() + 1)
    per_winding = rng.uniform(0.75, 1.25, ids.size + 1).astype(np.float32)
    thickness = style.thickness * per_winding[winding] + 0.8 * smooth_field(shape, rng, 25)
    sheet = depth < thickness
    sheets = np.where(sheet, winding, 0)

    unlabelled_target = rng.uniform(*UNLABELLED_FRACTION)
    before_next = depth > local_pitch - UNTRACED_MARGIN

    def annotate(traced):
        # a traced winding's region stops a margin short of the next sheet when that one is untraced
        is_traced = np.zeros(ids.size + 2, bool)
        is_traced[traced] = True
        return is_traced[winding] & ~(~is_traced[winding + 1] & before_next)

    annotated = trace_sheets(ids, annotate, unlabelled_target, rng)
    label = np.full(shape, UNLABELLED, np.uint8)
    label[annotated] = 0
    label[annotated & sheet & (depth < RECTO_DEPTH)] = 1
    unlabel_regions(label, unlabelled_target, rng)

    recto_half = sheet & (depth < thickness / 2)
    arc = r * theta
    texture = np.where(
        recto_half,
        fibre_texture(arc, height, rho, rng),  # recto: fibres along the winding
        fibre_texture(height, arc, rho, rng),  # verso: fibres along the scroll axis
    )
    brightness = rng.uniform(0.5, 1.1, ids.size + 1).astype(np.float32)[winding] * (1 + 0.15 * smooth_field(shape, rng, 30))
    papyrus = style.contrast * brightness * (1 + 0.35 * texture) * np.where(pores(shape, rng, 0.1), 0.3, 1.0)
    density = style.background * (1 + 0.1 * smooth_field(shape, rng, 20)) + np.where(sheet, papyrus, 0)
    density = ndimage.gaussian_filter(density, rng.uniform(0.9, 1.5))
    density *= 1 + 0.2 * smooth_field(shape, rng, 60)
    density += _slice_artefacts(shape, int(np.argmax(np.abs(axis))), style, rng)
    density = rng.poisson(np.clip(density, 0, None) * style.photons) / style.photons
    density = ndimage.gaussian_filter(density.astype(np.float32), 0.5)
    towards = -(radial / np.maximum(r, 1e-6)).astype(np.float32)
    return Chunk(to_uint8(density, rng), label, sheets.astype(np.int32), towards)


# ---------------------------------------------------------------- real: Scroll 1 sheet shapes


@dataclass
class SheetCube:
    """A 256^3 Scroll 1 sheet instance volume and its fitted orientation."""

    name: str
    sheets: np.ndarray  # uint8, 0 background, 1..N one sheet each
    towards_centre: np.ndarray  # unit vector toward the scroll's axis
    scroll_axis: np.ndarray  # unit vector along the scroll axis, perpendicular to towards_centre


def fit_towards_centre(sheets: np.ndarray, min_voxels: int = 2500) -> np.ndarray:
    """The direction to the scroll's centre: the side toward which the sheets are concave.

    Each sheet (on a 2x subsampled grid) gets its normal n from a PCA of its voxel
    coordinates (the axis of least spread) and a quadratic height fit h(u, v) along n over
    its two in-plane axes. The mean curvature k = (h_uu + h_vv) / 2 is positive when the
    sheet bends toward +n, i.e. when its centre of curvature, the scroll's side, is on +n.
    The direction is the sum of k * n over the sheets, weighted by their voxel counts, so
    large, clearly bent sheets decide it and small or wavy fragments barely count.
    """
    coarse = sheets[::2, ::2, ::2]
    total = np.zeros(3)
    for s in np.unique(coarse[coarse > 0]):
        pts = np.argwhere(coarse == s).astype(np.float64)
        if len(pts) < min_voxels:
            continue
        pts -= pts.mean(0)
        _, vecs = np.linalg.eigh(pts.T @ pts)
        normal, u, v = vecs[:, 0], pts @ vecs[:, 2], pts @ vecs[:, 1]
        design = np.stack([np.ones_like(u), u, v, u * u, u * v, v * v], 1)
        coef = np.linalg.lstsq(design, pts @ normal, rcond=None)[0]
        total += len(pts) * (coef[3] + coef[5]) * normal
    if not total.any():
        raise DataError("sheet volume holds no sheet large enough to fit its curvature; give a volume with whole sheets")
    return total / np.linalg.norm(total)


def load_cubes(folder: str | Path = SCROLL1_SHEETS) -> list[SheetCube]:
    """The ``scroll1_sheets_<z>_<y>_<x>.tif`` volumes of ``folder``, each with its fitted orientation.

    The volumes are stored as (x, y, z) arrays: the cube offset in z in the file name
    continues the volume along array axis 2, and the one in y along array axis 1 (see the
    folder's README), and the sheet normals lie across array axis 2. The scroll axis (z)
    is therefore taken as array axis 2, made perpendicular to the fitted centre direction.
    """
    paths = sorted(Path(folder).glob("scroll1_sheets_*.tif"))
    if len(paths) < 2:
        raise DataError(f"{folder}: needs at least two scroll1_sheets_*.tif volumes (one for test chunks); see benchmarks/data/scroll1_sheets/README.md")
    cubes = []
    for path in paths:
        sheets = read_volume(path)
        towards = fit_towards_centre(sheets)
        axis = np.array([0.0, 0.0, 1.0]) - towards[2] * towards
        cubes.append(SheetCube(path.stem.removeprefix("scroll1_sheets_"), sheets, towards, axis / np.linalg.norm(axis)))
    return cubes


def close_sheets(instances: np.ndarray) -> np.ndarray:
    """Each sheet with its pores and cracks up to ~4 voxels closed, claiming background voxels only."""
    closed = instances.astype(np.int32)
    ball = ndimage.generate_binary_structure(3, 1)
    for s, box in enumerate(ndimage.find_objects(closed), start=1):
        if box is None:
            continue
        box = tuple(slice(max(b.start - 2, 0), b.stop + 2) for b in box)
        mask = ndimage.binary_closing(closed[box] == s, ball, iterations=2)
        closed[box][mask & (closed[box] == 0)] = s
    return closed


def sheet_faces(sheets: np.ndarray, towards: np.ndarray, depth: float = RECTO_DEPTH) -> tuple[np.ndarray, np.ndarray]:
    """(recto face, recto half) masks of the sheet voxels, given the direction to the centre.

    The voxels just outside a sheet (background or another sheet) are split by the
    sheet's outward normal there, the gradient of the smoothed sheet mask: those it
    points toward the centre from lie beyond the recto face. The recto face is the sheet
    voxels within ``depth`` (Euclidean) of them, so a sheet thinner than that is recto all
    through; the recto half is the sheet voxels nearer them than the other face (by the
    taxicab distance, a tenth of the cost of the Euclidean one and good enough to split a
    sheet in two)."""
    face = np.zeros(sheets.shape, bool)
    half = np.zeros(sheets.shape, bool)
    ball = ndimage.generate_binary_structure(3, 1)
    r = int(depth)
    within_depth = np.sum(np.stack(np.meshgrid(*[np.arange(-r, r + 1)] * 3, indexing="ij")) ** 2, 0) <= depth**2
    for s, box in enumerate(ndimage.find_objects(sheets), start=1):
        if box is None:
            continue
        # room for the outside around the sheet, except where the volume itself ends (a cut, not a face)
        box = tuple(slice(max(b.start - 3, 0), min(b.stop + 3, n)) for b, n in zip(box, sheets.shape))
        inside = sheets[box] == s
        outside = np.nonzero(ndimage.binary_dilation(inside, ball) & ~inside)
        smooth = ndimage.gaussian_filter(inside.astype(np.float32), 1.5)
        outward = np.zeros(len(outside[0]), np.float32)
        for axis, n in enumerate(inside.shape):  # -gradient . towards, by central differences at those voxels
            ahead, behind = list(outside), list(outside)
            ahead[axis], behind[axis] = np.minimum(outside[axis] + 1, n - 1), np.maximum(outside[axis] - 1, 0)
            outward -= towards[axis] * (smooth[tuple(ahead)] - smooth[tuple(behind)])
        beyond_recto = np.zeros(inside.shape, bool)
        beyond_recto[tuple(o[outward > 0] for o in outside)] = True
        beyond_verso = np.zeros(inside.shape, bool)
        beyond_verso[tuple(o[outward <= 0] for o in outside)] = True
        face[box] |= inside & ndimage.binary_dilation(beyond_recto, within_depth)
        to_recto = ndimage.distance_transform_cdt(~beyond_recto, metric="taxicab")
        to_verso = ndimage.distance_transform_cdt(~beyond_verso, metric="taxicab")
        half[box] |= inside & (to_recto < to_verso)
    return face, half


def real_chunk(cube: SheetCube, rng: np.random.Generator, size: int = 96, margin: int = 4, any_axis: bool = False) -> Chunk:
    """A ``size``^3 chunk of ``cube`` at a random offset, rendered as CT, randomly flipped, with the scroll axis first.

    As in the competition's chunks, the scroll axis (z) is array axis 0 and the slices
    across it may come in either (y, x) order; ``any_axis`` transposes the chunk at random
    instead, which leaves recto and verso undecidable where the sheets are flat.

    The recto face of each sheet is its face toward the scroll's centre, whose direction
    ``fit_towards_centre`` finds from the sheets' curvature: in all three cubes it points
    toward increasing array axes 0 and 1 (x and y), which is where the centre of Scroll 1
    lies from the cubes' position near x, y = 2000 in its ~8000-voxel-wide slices. The
    sheets' pores are closed first (``close_sheets``) so the label follows the sheet's
    outer face as an annotator draws it; the image keeps the pores. Faces are found with
    ``margin`` voxels of context around the chunk, so a sheet cut by the chunk's border
    gets no face there.
    """
    full = cube.sheets.shape
    if size > min(full):
        raise DataError(f"chunk size {size} is larger than the sheet volume {full}; use --size {min(full)} or less")
    while True:  # a chunk with papyrus in it
        offset = np.array([rng.integers(0, n - size + 1) for n in full])
        if np.count_nonzero(cube.sheets[tuple(slice(o, o + size) for o in offset)]) > 0.05 * size**3:
            break
    lo, hi = np.maximum(offset - margin, 0), np.minimum(offset + size + margin, full)
    raw = cube.sheets[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    sheets = close_sheets(raw)
    face, recto_half = sheet_faces(sheets, cube.towards_centre)
    _, nearest = ndimage.distance_transform_edt(sheets == 0, return_indices=True)
    region = sheets[tuple(nearest)]  # each voxel belongs to its nearest sheet

    inner = tuple(slice(o - l, o - l + size) for o, l in zip(offset, lo))
    raw, sheets, face, recto_half, region = raw[inner], sheets[inner], face[inner], recto_half[inner], region[inner]
    shape = sheets.shape

    unlabelled_target = rng.uniform(*UNLABELLED_FRACTION)

    def annotate(traced):
        # the voxels nearest a traced sheet, but not within a margin of an untraced one
        untraced_sheet = (sheets > 0) & ~np.isin(sheets, traced)
        return np.isin(region, traced) & ~ndimage.binary_dilation(untraced_sheet, iterations=UNTRACED_MARGIN)

    annotated = trace_sheets(np.unique(region[region > 0]), annotate, unlabelled_target, rng)
    label = np.full(shape, UNLABELLED, np.uint8)
    label[annotated] = 0
    label[annotated & face] = 1
    unlabel_regions(label, unlabelled_target, rng)

    grid = np.stack(np.meshgrid(*(np.arange(s, dtype=np.float32) for s in shape), indexing="ij"))
    along_winding = np.cross(cube.scroll_axis, cube.towards_centre).astype(np.float32)
    arc, height, depth = (np.tensordot(v.astype(np.float32), grid, axes=1) for v in (along_winding, cube.scroll_axis, cube.towards_centre))
    texture = np.where(recto_half, fibre_texture(arc, height, depth, rng), fibre_texture(height, arc, depth, rng))
    brightness = rng.uniform(0.5, 1.1, int(sheets.max()) + 1).astype(np.float32)[sheets] * (1 + 0.15 * smooth_field(shape, rng, 30))
    contrast, background = rng.uniform(0.2, 0.3), rng.uniform(0.22, 0.32)
    papyrus = contrast * brightness * (1 + 0.35 * texture) * np.where(pores(shape, rng, 0.08), 0.3, 1.0)
    density = background * (1 + 0.1 * smooth_field(shape, rng, 20)) + np.where(raw > 0, papyrus, 0)
    density = ndimage.gaussian_filter(density, rng.uniform(0.9, 1.4))
    density *= 1 + 0.2 * smooth_field(shape, rng, 60)
    density += rng.normal(0, rng.uniform(0.05, 0.08), shape).astype(np.float32)
    density = ndimage.gaussian_filter(density, 0.5)
    image = to_uint8(density, rng)

    towards = cube.towards_centre.astype(np.float32).copy()
    volumes = [image, label, sheets]
    for ax in range(3):
        if rng.random() < 0.5:
            volumes = [np.flip(v, ax) for v in volumes]
            towards[ax] = -towards[ax]
    order = rng.permutation(3) if any_axis else np.concatenate([[2], rng.permutation(2)])  # the cubes are (x, y, z)
    volumes = [np.ascontiguousarray(v.transpose(order)) for v in volumes]
    return Chunk(volumes[0], volumes[1], volumes[2], towards[order])


# ---------------------------------------------------------------- writing datasets


def _write_split(out: Path, split: str, chunks: list[tuple[str, Chunk]]) -> None:
    rows = []
    for i, (scroll_id, chunk) in enumerate(chunks):
        vid = f"{1000 + i if split == 'train' else 9000 + i}"
        write_volume(out / f"{split}_images" / f"{vid}.tif", chunk.image)
        write_volume(out / f"{split}_labels" / f"{vid}.tif", chunk.label)
        rows.append((vid, scroll_id))
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{split}.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "scroll_id"])
        writer.writerows(rows)


def write_alt(out: str | Path, n_train: int = 12, n_test: int = 4, seed: int = 0, size: tuple[int, int, int] | None = None, any_axis: bool = False) -> list[Chunk]:
    """Train chunks from two synthetic scrolls (``alt0``, ``alt1``), test chunks from a third (``alt2``); returns the test chunks."""
    out, rng = Path(out), np.random.default_rng(seed)
    styles = [alt_style(rng) for _ in range(3)]

    def shape():
        return tuple(size) if size else tuple(int(s) for s in rng.integers(96, 113, 3))

    _write_split(out, "train", [(f"alt{i % 2}", alt_chunk(shape(), styles[i % 2], rng, any_axis)) for i in range(n_train)])
    test = [alt_chunk(shape(), styles[2], rng, any_axis) for _ in range(n_test)]
    _write_split(out, "test", [("alt2", chunk) for chunk in test])
    return test


def write_real(
    out: str | Path, n_train: int = 12, n_test: int = 4, seed: int = 0, size: int = 96, source: str | Path = SCROLL1_SHEETS, test_cube: str = TEST_CUBE, any_axis: bool = False
) -> list[Chunk]:
    """Train chunks from the other cubes in turn, test chunks from ``test_cube``; ``scroll_id`` names the cube. Returns the test chunks."""
    out, rng = Path(out), np.random.default_rng(seed)
    cubes = load_cubes(source)
    test = [c for c in cubes if c.name == test_cube]
    if not test:
        raise DataError(f"{source}: no scroll1_sheets_{test_cube}.tif for the test chunks; name one of {[c.name for c in cubes]}")
    train = [c for c in cubes if c.name != test_cube]
    _write_split(out, "train", [(f"scroll1_{train[i % len(train)].name}", real_chunk(train[i % len(train)], rng, size, any_axis=any_axis)) for i in range(n_train)])
    chunks = [real_chunk(test[0], rng, size, any_axis=any_axis) for _ in range(n_test)]
    _write_split(out, "test", [(f"scroll1_{test_cube}", chunk) for chunk in chunks])
    return chunks


def baseline_scores(root: str | Path) -> dict:
    """Mean leaderboard score on the test split of an empty prediction and of the
    intensity threshold (with dust removal) tuned on the train split: the floor and the
    yardstick a model's score on this dataset is read against."""

    def pairs(split):
        return [(read_volume(v.image), read_volume(v.label)) for v in list_volumes(root, split, require_labels=True)]

    train, test = pairs("train"), pairs("test")
    threshold, min_component, train_score = tune_threshold(train)
    return {
        "empty": float(np.mean([score_volume(label, np.zeros_like(label)).leaderboard for _, label in test])),
        "threshold": float(np.mean([score_volume(label, threshold_predict(image, threshold, min_component)).leaderboard for image, label in test])),
        "threshold_train": train_score,
        "threshold_value": threshold,
        "min_component": min_component,
    }


def face_blind_ceilings(chunks: list[Chunk]) -> dict[str, float]:
    """Mean leaderboard score of two exact predictions that do not choose the recto face:
    every sheet whole, and both faces of every sheet (its voxels within ``RECTO_DEPTH`` of
    its boundary). A model that finds every sheet but cannot tell recto from verso
    scores about as well as the better of the two, so a score above both needs the face."""
    def mean(predict):
        return float(np.mean([score_volume(c.label, predict(c).astype(np.uint8)).leaderboard for c in chunks]))

    return {
        "whole_sheets": mean(lambda c: c.sheets > 0),
        "both_faces": mean(lambda c: (c.sheets > 0) & (ndimage.distance_transform_edt(c.sheets > 0) <= RECTO_DEPTH)),
    }


def recto_step_ceiling(chunks: list[Chunk], context: float = 64.0, min_component: int = 32) -> float:
    """Mean leaderboard score of both exact faces of every sheet after the recto-face step
    (``inference.recto_context`` = ``context``) and dust removal, as a tuned prediction gets
    them: the most a model that finds both faces exactly can score with that step, so what
    the step's own errors (a few percent of the face voxels, near where it switches sides)
    leave of the score."""
    cfg = InferenceConfig(threshold=0.5, postprocess=["remove_dust"], min_component=min_component, recto_context=context)
    scores = []
    for c in chunks:
        faces = (c.sheets > 0) & (ndimage.distance_transform_edt(c.sheets > 0) <= RECTO_DEPTH)
        scores.append(score_volume(c.label, postprocess(faces.astype(np.float32), cfg, c.image)).leaderboard)
    return float(np.mean(scores))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=["alt", "real"])
    parser.add_argument("out")
    parser.add_argument("--train", type=int, default=12)
    parser.add_argument("--test", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=None, help="chunk edge in voxels (alt: 96-112 at random; real: 96)")
    parser.add_argument("--any-axis", action="store_true", help="scroll axis along any array axis, not axis 0 (z): recto and verso become undecidable where sheets are flat")
    parser.add_argument("--baselines", action="store_true", help="then score an empty prediction, a tuned threshold and the face-blind ceilings on the test split")
    args = parser.parse_args(argv)
    if args.kind == "alt":
        test = write_alt(args.out, args.train, args.test, args.seed, (args.size,) * 3 if args.size else None, args.any_axis)
    else:
        test = write_real(args.out, args.train, args.test, args.seed, args.size or 96, any_axis=args.any_axis)
    print(f"wrote {args.out}: {args.train} train + {args.test} test {args.kind} chunks")
    if args.baselines:
        scores = baseline_scores(args.out)
        print(
            f"test leaderboard: empty {scores['empty']:.4f}, threshold {scores['threshold']:.4f} "
            f"(tuned on train: {scores['threshold_value']}, dust < {scores['min_component']} voxels, train {scores['threshold_train']:.4f})"
        )
        ceilings = face_blind_ceilings(test)
        print(f"test leaderboard without the recto face: every sheet whole {ceilings['whole_sheets']:.4f}, both faces of every sheet {ceilings['both_faces']:.4f}")
        print(f"test leaderboard of both exact faces after the recto-face step (context 64) and dust removal: {recto_step_ceiling(test):.4f}")


if __name__ == "__main__":
    main()
