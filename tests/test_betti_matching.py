"""The fast Betti matching kernels against a literal reduction on cases the reference values never saw."""
import numpy as np
import pytest

from reference_betti_matching import reference_matched
from scrollseg.metrics import betti_matching
from scrollseg.metrics.betti_matching import matched_counts
from scrollseg.metrics.topology import finite_feature_counts, octant_slices, topo_counts


def random_pair(rng, shape, density):
    gt = rng.random(shape) < density
    if rng.random() < 0.5:  # a perturbed copy: most features correspond
        pred = gt.copy()
        flip = rng.random(shape) < rng.uniform(0.05, 0.3)
        pred[flip] = ~pred[flip]
    else:
        pred = rng.random(shape) < rng.uniform(density - 0.1, min(density + 0.1, 0.95))
    return pred, gt


@pytest.mark.parametrize("seed", range(6))
def test_kernels_equal_literal_reduction(seed):
    rng = np.random.default_rng(seed)
    totals = np.zeros(3, int)
    for _ in range(25):
        shape = tuple(int(n) for n in rng.integers(2, 12, size=3))
        # dense masks enclose background cavities (dimension 2); sparser ones make tunnels
        pred, gt = random_pair(rng, shape, rng.choice([rng.uniform(0.35, 0.75), rng.uniform(0.8, 0.93)]))
        expected = reference_matched(pred, gt)
        got = matched_counts(pred, gt, (finite_feature_counts(pred), finite_feature_counts(gt)))
        assert got == expected, f"shape {shape}"
        totals += expected
    assert totals[0] > 0 and totals[1] > 0, "the cases exercise matching in dimensions 0 and 1"


@pytest.mark.parametrize("every", [1, 3])
def test_shortcut_copies_leave_the_literal_result(every, monkeypatch):
    """Shortcut copies taken every step or three (by default only long walks make them)."""
    monkeypatch.setattr(betti_matching, "SHORTCUT_EVERY", every)
    rng = np.random.default_rng(20 + every)
    for _ in range(20):
        shape = tuple(int(n) for n in rng.integers(3, 12, size=3))
        pred, gt = random_pair(rng, shape, rng.uniform(0.35, 0.75))
        expected = reference_matched(pred, gt)
        assert matched_counts(pred, gt, (finite_feature_counts(pred), finite_feature_counts(gt))) == expected


def porous_sheets(rng, size, spacing, hole_fraction):
    sheets = np.zeros((size,) * 3, bool)
    sheets[::spacing] = True
    sheets[:, :, ::11] |= rng.random(sheets[:, :, ::11].shape) < 0.2  # bridges between sheets
    return sheets & (rng.random(sheets.shape) > hole_fraction)


def test_shortcuts_change_no_killing_face_on_porous_sheets():
    rng = np.random.default_rng(4)
    gt = porous_sheets(rng, 40, 4, 0.15)
    pred = np.roll(gt, 1, axis=1) & (rng.random(gt.shape) > 0.1)
    fp, fg = pred.astype(np.uint8), gt.astype(np.uint8)
    face_u = betti_matching._face_values(fp | fg)
    _, face_class = betti_matching.matched_dim2_and_face_class(fp, fg, fp | fg, face_u, False)
    without = betti_matching.killing_faces(fp, fg, face_class, face_u, shortcut_every=0)
    assert np.count_nonzero(without == 3) > 100
    for every in (1, 16):
        assert np.array_equal(betti_matching.killing_faces(fp, fg, face_class, face_u, shortcut_every=every), without)


def test_cavities_are_matched_like_the_literal_reduction():
    rng = np.random.default_rng(11)
    matched = 0
    for _ in range(12):
        gt = np.ones((9, 8, 10), bool)
        holes = rng.random(gt.shape) < 0.08
        holes[[0, -1]] = holes[:, [0, -1]] = holes[:, :, [0, -1]] = False
        gt[holes] = False  # enclosed background: 2-dimensional features
        pred = gt.copy()
        pred[holes & (rng.random(gt.shape) < 0.3)] = True  # fill some cavities
        pred[(rng.random(gt.shape) < 0.03)] = False  # open new ones
        expected = reference_matched(pred, gt)
        assert matched_counts(pred, gt, (finite_feature_counts(pred), finite_feature_counts(gt))) == expected
        matched += expected[2]
    assert matched > 0


def test_octants_of_an_odd_non_cubic_volume():
    rng = np.random.default_rng(5)
    pred, gt = random_pair(rng, (13, 10, 11), 0.6)
    counts = topo_counts(gt, pred)
    expected = np.zeros(3, int)
    for sl in octant_slices(gt.shape):
        expected += reference_matched(pred[sl], gt[sl])
    assert [c[0] for c in counts.counts] == list(expected)
    assert expected.sum() > 0


def test_identical_masks_match_every_feature():
    rng = np.random.default_rng(3)
    gt = rng.random((20, 18, 16)) < 0.6
    counts = topo_counts(gt, gt.copy())
    for m, p, g in counts.counts:
        assert m == p == g
    assert counts.score == 1.0

