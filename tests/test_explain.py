"""The error maps and counts of ``score --explain`` reproduce the score's own figures."""
import numpy as np
import pytest

from scrollseg.metrics.explain import explain_volume, surface_errors, voi_errors
from scrollseg.metrics.surface_dice import surface_dice
from scrollseg.metrics.voi import variation_of_information

from test_metrics import CASES, DATA, load_case

@pytest.fixture(scope="module")
def golden():
    return np.load(DATA / "metric_golden.npz")


@pytest.mark.parametrize("name", sorted(CASES))
def test_counts_reproduce_the_official_figures(golden, name):
    label, pred = load_case(golden, name)
    expected = CASES[name]
    e = explain_volume(label, pred)
    scores = e.scores()
    # surface points outside the tolerance, by area, give the surface Dice
    assert scores["surface_dice"] == pytest.approx(expected["surface_dice"], abs=1e-9)
    # per-component shares of the conditional entropies sum to the VOI
    assert scores["voi_split"] + scores["voi_merge"] == pytest.approx(expected["voi_total"], abs=1e-9)
    for dim in range(3):
        m, p, g = expected["topo_counts_mpg_by_dim"][str(dim)]
        assert list(e.betti.counts.counts[dim]) == [m, p, g]
        assert e.betti.unmatched[dim] == p + g - 2 * m
    assert scores["leaderboard"] == pytest.approx(expected["leaderboard"], abs=1e-9)

    maps = e.maps()
    gt, pr = (label != 0) & (label != 2), (pred != 0) & (label != 2)
    assert not (maps["surface_dice"] & 1)[~gt].any() and not (maps["surface_dice"] & 2)[~pr].any()
    assert bool(e.surface.missed.any()) == (e.surface.area_missed > 0)
    assert bool(e.surface.extra.any()) == (e.surface.area_extra > 0)
    for octant in e.betti.octants:
        box = maps["betti"][tuple(slice(lo, hi) for lo, hi in octant["bounds"])]
        assert (box == min(sum(octant["unmatched"]), 255)).all()


def sheets(*depths, shape=(16, 24, 24)):
    vol = np.zeros(shape, bool)
    for z in depths:
        vol[z, 4:20, 4:20] = True
    return vol


def test_a_bridge_merges_two_label_sheets():
    gt = sheets(4, 10)
    pred = gt.copy()
    pred[4:11, 12, 12] = True  # one column joins the sheets: one predicted component
    v = voi_errors(gt, pred)
    assert v.merged_components == [1] and v.split_components == []
    assert v.merge == pytest.approx(variation_of_information(gt, pred).merge, abs=1e-12) and v.merge > 0
    assert v.split == pytest.approx(variation_of_information(gt, pred).split, abs=1e-12)
    assert (v.map()[pred] == 2).all() and not v.map()[~pred].any()


def test_a_gap_splits_one_label_sheet():
    gt = sheets(8)
    pred = gt.copy()
    pred[:, :, 11:13] = False  # cut in two
    v = voi_errors(gt, pred)
    assert v.split_components == [1] and v.merged_components == []
    assert v.split_partners[1] == 2
    assert v.split == pytest.approx(variation_of_information(gt, pred).split, abs=1e-12)
    assert (v.map()[gt] == 1).all()


def test_far_surface_is_marked_and_costs_its_area():
    gt = sheets(4, shape=(20, 24, 24))
    pred = gt.copy()
    pred[15, 2:8, 2:8] = True  # 11 voxels away: beyond the tolerance of 2
    s = surface_errors(gt, pred)
    assert not s.missed.any()
    assert s.extra.any() and not s.extra[:12].any() and s.extra[15, 2:8, 2:8].all()
    assert s.value == pytest.approx(surface_dice(gt, pred), abs=1e-12)
    assert s.value == pytest.approx(1 - s.area_extra / (s.area_label + s.area_pred), abs=1e-12) and s.value < 1
