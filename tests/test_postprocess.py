import cc3d
import numpy as np
import pytest
from scipy import ndimage

from scrollseg.config import POSTPROCESS_STEPS, InferenceConfig, build_config
from scrollseg.errors import ConfigError
from scrollseg.inference.postprocess import (
    STEPS,
    _labels,
    _settle,
    close_sheets,
    fill_cavities,
    hysteresis,
    plug_holes,
    postprocess,
    remove_dust,
)
from scrollseg.metrics.topology import betti_numbers


def n_components(mask, connectivity=6):
    return cc3d.connected_components(np.asarray(mask, bool), connectivity=connectivity, return_N=True)[1]


def plane(shape, z, lo=2, hi=-2):
    mask = np.zeros(shape, bool)
    mask[z, lo:hi, lo:hi] = True
    return mask


def test_a_one_voxel_hole_is_plugged_to_the_betti_numbers_of_a_whole_sheet():
    whole = plane((12, 12, 12), 5)
    holed = whole.copy()
    holed[5, 5, 5] = False
    assert betti_numbers(holed) == (1, 1, 0)
    plugged = plug_holes(holed, hole_max=1)
    assert betti_numbers(plugged) == betti_numbers(whole) == (1, 0, 0)
    np.testing.assert_array_equal(plugged, whole)


def test_a_tunnel_through_a_thick_tilted_sheet_and_a_diagonal_pinhole_are_plugged():
    z, y, x = np.indices((20, 16, 24))
    whole = (np.abs(z - 0.5 * x - 4) < 1.6) & (y > 1) & (y < 14)  # staircase sheet, 3 voxels thick in z
    holed = whole.copy()
    holed[:, 7, 10] = False  # a 1-voxel tunnel through it along z
    holed[:, 10, 16] = holed[:, 11, 17] = False  # two holes meeting only at an edge: one 8-connected hole
    assert betti_numbers(holed) == (1, 2, 0)
    plugged = plug_holes(holed, hole_max=2)
    assert betti_numbers(plugged) == betti_numbers(whole) == (1, 0, 0)
    assert (plugged <= whole).all()  # where the tunnels meet the staircase's faces, pits may stay


def test_plugging_leaves_holes_above_hole_max_and_notches_in_the_edge():
    sheet = plane((12, 16, 16), 5)
    sheet[5, 5:10, 5:10] = False  # a 25-voxel hole
    sheet[5, 2, 8] = False  # a notch in the sheet's edge
    np.testing.assert_array_equal(plug_holes(sheet, hole_max=24), sheet)
    expected = sheet.copy()
    expected[5, 5:10, 5:10] = True
    np.testing.assert_array_equal(plug_holes(sheet, hole_max=25), expected)


def test_plugging_never_joins_a_fragment_sitting_in_the_hole():
    sheet = plane((12, 12, 12), 5)
    sheet[5, 5, 5] = False
    sheet[6, 5, 5] = True  # touches the sheet only diagonally: its own 6-component
    assert n_components(sheet) == 2
    np.testing.assert_array_equal(plug_holes(sheet, hole_max=4), sheet)


def test_parallel_sheets_three_voxels_apart_stay_two_after_plugging_and_closing():
    sheets = plane((14, 16, 16), 4) | plane((14, 16, 16), 8)  # background at z = 5, 6, 7
    sheets[4, 6, 6] = sheets[8, 9, 9] = False  # pinholes
    sheets[4, 10:12, 4:7] = False  # a 6-voxel hole
    assert n_components(ndimage.binary_closing(sheets, np.ones((5, 5, 5)))) == 1  # a plain closing bridges them
    out = close_sheets(plug_holes(sheets, hole_max=2), radius=(2, 2, 2))
    assert n_components(out, 6) == n_components(out, 26) == 2
    assert out[4, 6, 6] and out[8, 9, 9] and out[4, 10:12, 4:7].all()
    assert not out[5:8].any()


def test_each_sheet_is_closed_by_itself_even_beside_another():
    # A at z=4 with a 3x3 hole, B at z=7: a closing of radius 2 from A's side reaches B's,
    # yet the hole is two voxels from B and closes, and nothing grows into the gap
    shape = (12, 14, 14)
    a, b = np.zeros(shape, bool), np.zeros(shape, bool)
    a[4], b[7] = True, True
    holed = a | b
    holed[4, 5:8, 5:8] = False
    assert n_components(ndimage.binary_closing(holed, np.ones((5, 5, 5)))) == 1
    np.testing.assert_array_equal(close_sheets(holed, radius=(2, 2, 2)), a | b)


def reference_closing(mask, radius):
    """Each component closed alone by scipy (windows cut at the border: erosion sees 1
    outside), where fewer than three components' dilations meet; the owner where one closes."""
    labels, n = _labels(mask)
    box = np.ones([2 * r + 1 for r in radius], bool)
    dilations = [ndimage.binary_dilation(labels == k, box) for k in range(1, n + 1)]
    crowded = np.sum(dilations, axis=0) >= 3
    closings = [ndimage.binary_erosion(d & ~crowded, box, border_value=1) for d in dilations]
    claims = np.sum(closings, axis=0)
    owner = np.zeros(mask.shape, np.uint32)
    for k, closed in enumerate(closings, start=1):
        owner[closed & (claims == 1) & ~mask] = k
    return _settle(labels, owner)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_close_sheets_matches_closing_each_component_alone(seed):
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal((18, 22, 26)), 1.5)
    mask = field > 0.08
    mask &= rng.random(mask.shape) > 0.1  # pepper the blobs with holes
    radius = (1, 2, 1)
    out = close_sheets(mask, radius)
    assert n_components(mask) >= 5 and out.sum() > mask.sum()
    np.testing.assert_array_equal(out, reference_closing(mask, radius))
    assert n_components(out) == n_components(mask)
    assert (out >= mask).all()


def test_dust_is_removed_under_six_connectivity():
    chain = np.zeros((12, 12, 12), bool)
    for i in range(10):
        chain[i, i, i] = True  # one 26-component of 10 voxels, ten 6-components of 1
    line = np.zeros_like(chain)
    line[2, 9, 1:6] = True
    mask = chain | line
    assert cc3d.dust(mask, threshold=5, connectivity=26).sum() == 15
    np.testing.assert_array_equal(remove_dust(mask, 5), line)


def test_hysteresis_is_six_connected_and_needs_low_below_high():
    prob = np.zeros((8, 8, 8), np.float32)
    prob[3, 3, 3] = 0.9
    prob[3, 3, 4] = 0.6  # face neighbour of the strong voxel: kept
    prob[4, 4, 3] = 0.6  # edge neighbour only: its own 6-component, never strong
    out = hysteresis(prob, 0.5, 0.8)
    assert out.sum() == 2 and out[3, 3, 4] and not out[4, 4, 3]
    for low in (0.8, 0.85):
        with pytest.raises(ConfigError, match="hysteresis low"):
            hysteresis(prob, low, 0.8)
    with pytest.raises(ConfigError, match="hysteresis low"):
        postprocess(prob, InferenceConfig(threshold=0.5, hysteresis_low=0.5))


def test_cavities_enclosed_by_one_component_are_filled():
    mask = np.zeros((14, 14, 14), bool)
    mask[2:7, 2:7, 2:7] = True
    mask[3:6, 3:6, 3:6] = False  # a closed box: one 27-voxel cavity
    mask[8:13, 2:7, 2:7] = True
    mask[9:12, 3:6, 3:6] = False
    mask[10, 4, 4] = True  # a fragment inside the second box's cavity
    mask[0:5, 8:13, 8:13] = True
    mask[0:4, 9:12, 9:12] = False  # a cup open to the volume's border
    assert betti_numbers(mask)[2] == 2
    out = fill_cavities(mask)
    expected = mask.copy()
    expected[3:6, 3:6, 3:6] = True
    np.testing.assert_array_equal(out, expected)
    assert betti_numbers(out)[2] == 1 and n_components(out) == n_components(mask) == 4


def test_steps_run_in_the_configured_order():
    # a 7x7 sheet with nine pinholes: 40 voxels; closed, 49
    prob = np.zeros((12, 12, 12), np.float32)
    prob[5, 2:9, 2:9] = 0.9
    prob[5, 3:9:2, 3:9:2] = 0.1
    cfg = InferenceConfig(min_component=45, close_radius=[1, 1, 1])
    cfg.postprocess = ["remove_dust", "close_sheets"]
    assert postprocess(prob, cfg).sum() == 0
    cfg.postprocess = ["close_sheets", "remove_dust"]
    out = postprocess(prob, cfg)
    assert out.dtype == np.uint8 and out.sum() == 49 and out[5, 2:9, 2:9].all()


def test_default_config_keeps_threshold_and_dust():
    rng = np.random.default_rng(0)
    prob = ndimage.gaussian_filter(rng.random((20, 24, 28)), 1.0).astype(np.float32)
    prob = (prob - prob.min()) / (prob.max() - prob.min())
    cfg = InferenceConfig(min_component=8)
    out = postprocess(prob, cfg)
    np.testing.assert_array_equal(out, remove_dust(prob > 0.5, 8))
    assert 0 < out.sum() < (prob > 0.5).sum()


def test_step_names_and_config_checks():
    assert tuple(STEPS) == POSTPROCESS_STEPS
    cfg = build_config("tiny", ["inference.postprocess=[plug_holes,close_sheets,remove_dust]", "inference.close_radius=[1,2,2]"])
    assert cfg.inference.postprocess == ["plug_holes", "close_sheets", "remove_dust"] and cfg.inference.close_radius == [1, 2, 2]
    for override, message in [
        ("inference.postprocess=[plug_holes,smooth]", "unknown step"),
        ("inference.threshold=1.0", "threshold"),
        ("inference.hysteresis_low=0.5", "hysteresis_low"),
        ("inference.close_radius=[1,-1,1]", "close_radius"),
        ("inference.close_radius=[1,1]", "close_radius"),
        ("inference.hole_max=-1", "hole_max"),
    ]:
        with pytest.raises(ConfigError, match=message):
            build_config("tiny", [override])
    with pytest.raises(ConfigError, match="unknown inference.postprocess step"):
        postprocess(np.zeros((4, 4, 4), np.float32), InferenceConfig(postprocess=["smooth"]))


def test_closing_with_more_components_than_sixteen_bits_hold():
    mask = np.zeros((54, 54, 80), bool)
    z, y, x = np.indices((54, 54, 54))
    mask[:, :, :54] = (z + y + x) % 2 == 0  # a 3D checkerboard: 78,732 single-voxel components
    mask[10:40, 10:40, 70] = True  # a sheet beyond them, with a pinhole
    mask[25, 25, 70] = False
    assert n_components(mask) > 2**16
    expected = mask.copy()
    expected[25, 25, 70] = True
    np.testing.assert_array_equal(close_sheets(mask, (1, 1, 1)), expected)
