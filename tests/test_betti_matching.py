"""The fast Betti matching kernels against a literal reduction on cases the reference values never saw."""
import numpy as np
import pytest

from reference_betti_matching import reference_matched
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

