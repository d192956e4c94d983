"""The held-out dataset generators of benchmarks/quality_data.py: layout, label values, and the recto face."""
import csv
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from scrollseg.data.io import read_volume
from scrollseg.metrics.leaderboard import score_volume

_spec = importlib.util.spec_from_file_location("quality_data", Path(__file__).resolve().parents[1] / "benchmarks" / "quality_data.py")
quality_data = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = quality_data  # dataclasses look their module up there
_spec.loader.exec_module(quality_data)


@pytest.fixture(scope="module")
def cubes():
    return quality_data.load_cubes()


def face_sides(sheets: np.ndarray, towards: np.ndarray, radius: int = 3):
    """Masks over sheet voxels, by brute force over neighbour offsets:

    centre_side  a voxel of another sheet or background lies within ``radius`` on the centre side
    far_face     a 6-neighbour on the far side (away from the centre) is outside the sheet
    centre_face  a 6-neighbour on the centre side is outside the sheet
    """
    padded = np.pad(sheets, radius, constant_values=-1)  # -1: beyond the volume, not a face
    centre_side, far_face, centre_face = (np.zeros(sheets.shape, bool) for _ in range(3))
    rng = range(-radius, radius + 1)
    for o in ((a, b, c) for a in rng for b in rng for c in rng):
        length2 = sum(v * v for v in o)
        if length2 == 0 or length2 > radius * radius:
            continue
        window = tuple(slice(radius + v, radius + v + n) for v, n in zip(o, sheets.shape))
        other = padded[window]
        outside = (other != sheets) & (other != -1)
        dot = o[0] * towards[0] + o[1] * towards[1] + o[2] * towards[2]
        centre_side |= outside & (dot > 0)
        if length2 == 1:
            far_face |= outside & (dot < -0.5)
            centre_face |= outside & (dot > 0.5)
    inside = sheets > 0
    return centre_side & inside, far_face & inside, centre_face & inside


def check_recto_face(chunk, tolerance: float = 0.0) -> None:
    """Label 1 lies in the sheets, near their centre-side face and never on the far face alone.

    Voxels within 3 of the chunk's border are left out: their face may lie outside it.
    ``tolerance``: the fraction of label-1 voxels that may break the rules, for ragged real
    sheets whose face side comes from a normal smoothed over a few voxels."""
    label, sheets = chunk.label, chunk.sheets
    assert set(np.unique(label)) <= {0, 1, 2}
    assert np.all(sheets[label == 1] > 0), "label 1 outside the sheets"
    interior = np.zeros(label.shape, bool)
    interior[3:-3, 3:-3, 3:-3] = True
    recto = (label == 1) & interior
    centre_side, far_face, centre_face = (m & interior for m in face_sides(sheets, chunk.towards_centre))
    allowed = tolerance * recto.sum()
    assert recto.sum() > 500
    assert np.count_nonzero(recto & ~centre_side) <= allowed, "label 1 away from the sheet's centre-side face"
    verso_only = far_face & ~centre_side
    assert verso_only.sum() > 40, "no far face to check"
    assert np.count_nonzero(recto & verso_only) <= allowed, "label 1 on the face away from the centre"
    traced_face = centre_face & (label != 2)
    assert recto[traced_face].mean() > 0.9, "the traced centre-side faces are not labelled"


def check_layout(root: Path, n_train: int, n_test: int) -> None:
    for split, count in (("train", n_train), ("test", n_test)):
        with open(root / f"{split}.csv", newline="") as fh:
            rows = list(csv.reader(fh))
        assert rows[0] == ["id", "scroll_id"] and len(rows) == count + 1
        if split == "train":
            assert len({r[1] for r in rows[1:]}) >= 2, "a split by scroll needs two scroll ids"
        for vid, _ in rows[1:]:
            image = read_volume(root / f"{split}_images" / f"{vid}.tif")
            label = read_volume(root / f"{split}_labels" / f"{vid}.tif")
            assert image.dtype == label.dtype == np.uint8 and image.shape == label.shape
            assert set(np.unique(label)) <= {0, 1, 2} and np.any(label == 1)
            assert 0.3 <= np.mean(label == 2) <= 0.9


def test_alt_writes_the_competition_layout(tmp_path):
    test = quality_data.write_alt(tmp_path, n_train=2, n_test=1, seed=1, size=(40, 44, 48))
    check_layout(tmp_path, 2, 1)
    assert np.array_equal(test[0].label, read_volume(tmp_path / "test_labels" / "9000.tif")), "the returned test chunk is not the written one"


def test_face_blind_ceilings_lie_between_empty_and_exact():
    rng = np.random.default_rng(3)
    chunk = quality_data.alt_chunk((48, 48, 48), quality_data.alt_style(rng), rng)
    empty = score_volume(chunk.label, np.zeros_like(chunk.label)).leaderboard
    exact = score_volume(chunk.label, (chunk.label == 1).astype(np.uint8)).leaderboard
    ceilings = quality_data.face_blind_ceilings([chunk])
    assert exact == pytest.approx(1.0)
    for name, value in ceilings.items():
        assert empty + 0.1 < value < exact - 0.1, f"{name}: {value} (empty {empty})"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recto_step_ceiling_beats_the_face_blind_ones(seed):
    # 64^3: the step pools the fibre cue over 64 voxels, and smaller chunks can hold too little of it
    rng = np.random.default_rng(seed)
    chunk = quality_data.alt_chunk((64, 64, 64), quality_data.alt_style(rng), rng)
    ceiling = quality_data.recto_step_ceiling([chunk])
    assert max(quality_data.face_blind_ceilings([chunk]).values()) + 0.05 < ceiling < 1.0


def test_real_writes_the_competition_layout(tmp_path):
    quality_data.write_real(tmp_path, n_train=2, n_test=1, seed=1, size=40)
    check_layout(tmp_path, 2, 1)
    with open(tmp_path / "test.csv", newline="") as fh:
        assert [r[1] for r in csv.reader(fh)][1:] == [f"scroll1_{quality_data.TEST_CUBE}"]


@pytest.mark.parametrize("seed", [0, 1])
def test_alt_label_is_the_centre_side_face(seed):
    rng = np.random.default_rng(seed)
    check_recto_face(quality_data.alt_chunk((48, 48, 48), quality_data.alt_style(rng), rng))


@pytest.mark.parametrize("seed", [0, 1])
def test_real_label_is_the_centre_side_face(cubes, seed):
    rng = np.random.default_rng(seed)
    check_recto_face(quality_data.real_chunk(cubes[seed], rng, size=48), tolerance=0.005)


def test_scroll_axis_is_array_axis_0_unless_any_axis(cubes):
    # the centre direction lies across the scroll axis, so along axis 0 it is small
    for seed in range(3):
        rng = np.random.default_rng(seed)
        towards = quality_data.alt_chunk((32, 32, 32), quality_data.alt_style(rng), rng).towards_centre
        assert np.abs(towards[0]).mean() < 0.3
        towards = quality_data.real_chunk(cubes[seed], np.random.default_rng(seed), size=32).towards_centre
        assert abs(towards[0]) < 0.45 and min(abs(towards[1]), abs(towards[2])) > 0.25
    moved = [quality_data.real_chunk(cubes[0], np.random.default_rng(s), size=32, any_axis=True).towards_centre for s in range(12)]
    assert any(abs(t[0]) > 0.4 for t in moved), "--any-axis never moved the scroll axis"


def test_fitted_centre_direction_points_into_scroll1(cubes):
    # the cubes lie near x, y = 2000 of Scroll 1's ~8000-voxel-wide slices, stored (x, y, z):
    # its centre is toward increasing array axes 0 and 1, across the scroll axis (array axis 2)
    for cube in cubes:
        assert cube.towards_centre[0] > 0.4 and cube.towards_centre[1] > 0.25 and abs(cube.towards_centre[2]) < 0.45
        assert abs(cube.scroll_axis @ cube.towards_centre) < 1e-6


def test_recto_face_of_a_bent_sheet_is_on_its_concave_side():
    # a cylindrical shell of radius 20-26 around an axis along array axis 2 through (0, 16, .):
    # it bends toward -axis 0, so the centre lies toward axis 0 = 0
    z, y, x = np.meshgrid(np.arange(32), np.arange(32), np.arange(16), indexing="ij")
    radius = np.hypot(z - 0.0, y - 16.0)
    sheets = ((radius >= 20) & (radius < 26)).astype(np.uint8)
    towards = quality_data.fit_towards_centre(np.pad(sheets, 8), min_voxels=100)
    assert towards[0] < -0.9
    face, half = quality_data.sheet_faces(sheets.astype(np.int32), towards)
    # within the slab facing the centre: radius 20 and 21 (depth <= 2 along the normal), never the outer 24-25
    assert face[(radius >= 20) & (radius < 21.5) & (np.abs(y - 16) < 6)].all()
    assert not face[radius >= 22.5].any()
    assert half[(radius >= 20) & (radius < 22.5) & (np.abs(y - 16) < 6)].all() and not half[(radius >= 23.5) & (np.abs(y - 16) < 6)].any()
