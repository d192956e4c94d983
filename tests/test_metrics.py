import json
from pathlib import Path

import numpy as np
import pytest

from scrollseg.metrics.leaderboard import score_volume
from scrollseg.metrics.surface_dice import surface_dice
from scrollseg.metrics.topology import betti_numbers, octant_slices
from scrollseg.metrics.voi import variation_of_information

DATA = Path(__file__).parent / "data"
CASES = json.loads((DATA / "metric_golden.json").read_text())


@pytest.fixture(scope="module")
def golden():
    return np.load(DATA / "metric_golden.npz")


def load_case(golden, name):
    info = golden[f"predinfo_{name}"]
    shape, fg_value = tuple(int(v) for v in info[:3]), int(info[3])
    pred = np.unpackbits(golden[f"pred_{name}"])[: np.prod(shape)].reshape(shape).astype(np.uint8) * max(fg_value, 1)
    return golden[f"label_{CASES[name]['label']}"], pred


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_official_scores(golden, name):
    label, pred = load_case(golden, name)
    expected = CASES[name]
    got = score_volume(label, pred)
    assert got.surface_dice == pytest.approx(expected["surface_dice"], abs=1e-9)
    assert got.voi_total == pytest.approx(expected["voi_total"], abs=1e-9)
    assert got.voi_score == pytest.approx(expected["voi_score"], abs=1e-9)
    for dim in range(3):
        assert list(got.topo_counts.counts[dim]) == expected["topo_counts_mpg_by_dim"][str(dim)], f"dimension {dim} m/p/g"
    assert got.topo == pytest.approx(expected["topo"], abs=1e-9)
    assert got.leaderboard == pytest.approx(expected["leaderboard"], abs=1e-9)


def test_ignore_label_is_background_in_both():
    label = np.zeros((20, 20, 20), np.uint8)
    label[5:15, 10, 5:15] = 1
    label[:, :, 15:] = 2
    pred = (label == 1).astype(np.uint8)
    pred[:, 3, 16:] = 1  # only inside the ignored region
    assert score_volume(label, pred).leaderboard == pytest.approx(1.0)
    pred[:, 3, :4] = 1  # outside it: a false surface
    assert score_volume(label, pred).leaderboard < 0.9


def test_surface_dice_tolerance():
    gt = np.zeros((30, 30, 30), bool)
    gt[5:25, 15, 5:25] = True
    near = np.roll(gt, 1, axis=1)
    far = np.roll(gt, 5, axis=1)
    assert surface_dice(gt, gt) == pytest.approx(1.0)
    assert surface_dice(gt, near) == pytest.approx(1.0)
    assert surface_dice(gt, far) < 0.2
    assert surface_dice(gt, np.zeros_like(gt)) == 0.0
    assert surface_dice(np.zeros_like(gt), np.zeros_like(gt)) == 1.0


def test_voi_split_and_merge():
    gt = np.zeros((10, 10, 10), bool)
    gt[1:9, 2, 1:9] = True
    split = gt.copy()
    split[:, :, 5] = False
    v = variation_of_information(gt, split)
    assert v.split > 0.5 and v.merge < 0.2
    assert variation_of_information(gt, gt).total == pytest.approx(0.0, abs=1e-12)


def test_betti_numbers_of_simple_shapes():
    ring = np.zeros((7, 7, 3), bool)
    ring[1:6, 1:6, 1] = True
    ring[2:5, 2:5, 1] = False
    assert betti_numbers(ring) == (1, 1, 0)
    shell = np.zeros((7, 7, 7), bool)
    shell[1:6, 1:6, 1:6] = True
    shell[2:5, 2:5, 2:5] = False
    assert betti_numbers(shell) == (1, 0, 1)
    two = np.zeros((5, 5, 5), bool)
    two[1, 1, 1] = two[3, 3, 3] = True  # diagonal neighbours are separate under 6-connectivity
    assert betti_numbers(two)[0] == 2


def test_octants_cover_odd_shapes_once():
    shape = (5, 6, 7)
    hits = np.zeros(shape, int)
    for sl in octant_slices(shape):
        hits[sl] += 1
    assert (hits == 1).all()
    first = next(iter(octant_slices(shape)))
    assert [s.stop for s in first] == [3, 3, 4]


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        score_volume(np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 5), np.uint8))


@pytest.mark.parametrize("tolerance", [1.0, 1.5, 2.0, 3.0])
def test_dilation_equals_distance_transform(tolerance):
    """The dilation shortcut gives exactly what thresholding distance transforms gives."""
    from scipy import ndimage

    from scrollseg.metrics import surface_dice as sd

    rng = np.random.default_rng(int(tolerance * 10))
    gt = ndimage.binary_dilation(rng.random((30, 34, 28)) < 0.01, iterations=2)
    pred = ndimage.binary_dilation(rng.random((30, 34, 28)) < 0.01, iterations=2) | np.roll(gt, 1, axis=0)
    coords = [np.flatnonzero((gt | pred).any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    lo, hi = np.array([c[0] for c in coords]), np.array([c[-1] for c in coords])
    cg, cp = sd._cell_codes(gt, lo, hi), sd._cell_codes(pred, lo, hi)
    bg, bp = (cg != 0) & (cg != 255), (cp != 0) & (cp != 255)
    dist_to_p, dist_to_g = ndimage.distance_transform_edt(~bp), ndimage.distance_transform_edt(~bg)
    ag, ap = sd._AREA_TABLE[cg[bg]], sd._AREA_TABLE[cp[bp]]
    expected = (ag[dist_to_p[bg] <= tolerance].sum() + ap[dist_to_g[bp] <= tolerance].sum()) / (ag.sum() + ap.sum())
    assert sd.surface_dice(gt, pred, tolerance) == pytest.approx(expected, abs=1e-12)
    assert 0.0 < expected < 1.0


@pytest.mark.parametrize("radius", [1.0, 1.8, 2.0, 2.2, 3.0])
def test_ball_dilation_equals_scipy(radius):
    from scipy import ndimage

    from scrollseg.metrics.surface_dice import _ball, dilate_ball

    mask = np.random.default_rng(4).random((13, 9, 11)) < 0.05
    assert np.array_equal(dilate_ball(mask, radius), ndimage.binary_dilation(mask, structure=_ball(radius)))
