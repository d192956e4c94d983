"""Choosing the recto face from the fibre direction (inference/recto.py), on flat sheets built by hand and on real CT."""
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from scrollseg.config import InferenceConfig
from scrollseg.data.io import read_volume
from scrollseg.data.synth import papyrus_fibres
from scrollseg.errors import ConfigError
from scrollseg.inference.postprocess import postprocess
from scrollseg.inference.recto import _gradient, _slab_gradient, fibre_contrast, keep_recto_face, recto_side

PITCH, THICKNESS = 12, 6
DATA = Path(__file__).parent / "data"


def flat_sheets(seed: int = 0, shape=(48, 72, 48)):
    """Sheets across array axis 1 (y), recto face at the low-y side: (image, depth from the recto face, sheet mask)."""
    rng = np.random.default_rng(seed)
    y = np.arange(shape[1])[None, :, None]
    depth = np.broadcast_to((y - 3) % PITCH, shape).astype(np.float32)
    sheet = depth < THICKNESS
    fibres = papyrus_fibres(depth < THICKNESS / 2, rng)
    density = np.where(sheet, 0.55 + 0.6 * fibres, 0.08).astype(np.float32)
    density = ndimage.gaussian_filter(density, 1.0) + rng.normal(0, 0.05, shape).astype(np.float32)
    return np.clip(density * 200 + 20, 0, 255).astype(np.uint8), depth, sheet


def test_fibre_contrast_is_higher_on_the_recto_half_than_on_the_verso_half():
    image, depth, sheet = flat_sheets()
    contrast = fibre_contrast(image)
    inner = (slice(6, -6), slice(6, -6), slice(6, -6))
    recto_half = (sheet & (depth < THICKNESS / 2))[inner]
    verso_half = (sheet & (depth >= THICKNESS / 2))[inner]
    recto, verso = contrast[inner][recto_half].mean(), contrast[inner][verso_half].mean()
    # a common offset cancels in the pooling (the halves' outward directions are opposite); the difference carries the cue
    assert recto > 0 > verso and recto - verso > 0.1


@pytest.mark.parametrize("flip", [False, True])
def test_recto_side_picks_the_face_whose_fibres_run_horizontally(flip):
    image, depth, sheet = flat_sheets(seed=1)
    recto_face, verso_face = sheet & (depth < 2), sheet & (depth >= THICKNESS - 2)
    if flip:  # the centre now lies toward high y: the choice must follow the fibres, not a fixed side
        image, recto_face, verso_face = image[:, ::-1], recto_face[:, ::-1], verso_face[:, ::-1]
    side = recto_side(np.ascontiguousarray(image), context=24.0)
    assert side[recto_face].mean() > 0.9
    assert side[verso_face].mean() < 0.1


def test_keep_recto_face_zeroes_the_verso_face_only():
    image, depth, sheet = flat_sheets(seed=2)
    both_faces = (sheet & ((depth < 2) | (depth >= THICKNESS - 2))).astype(np.float32) * 0.9
    kept = keep_recto_face(both_faces, image, context=24.0)
    assert kept.dtype == np.float32
    recto_face, verso_face = sheet & (depth < 2), sheet & (depth >= THICKNESS - 2)
    assert (kept[recto_face] == 0.9).mean() > 0.9 and (kept[verso_face] == 0).mean() > 0.9
    with pytest.raises(ValueError, match="shape"):
        keep_recto_face(both_faces, image[:-1], context=24.0)


def test_postprocess_applies_the_recto_choice_and_needs_the_image():
    image, depth, sheet = flat_sheets(seed=3)
    both_faces = (sheet & ((depth < 2) | (depth >= THICKNESS - 2))).astype(np.float32) * 0.9
    cfg = InferenceConfig(threshold=0.5, postprocess=[], recto_context=24.0)
    mask = postprocess(both_faces, cfg, image)
    assert mask[sheet & (depth < 2)].mean() > 0.9 and mask[sheet & (depth >= THICKNESS - 2)].mean() < 0.1
    with pytest.raises(ConfigError, match="image"):
        postprocess(both_faces, cfg)
    # off by default: both faces stay
    assert postprocess(both_faces, InferenceConfig(threshold=0.5, postprocess=[])).sum() == (both_faces > 0.5).sum()


def test_fibre_contrast_tells_horizontal_from_vertical_fibres_in_real_ct():
    # a real scroll CT crop with its fibre labels (1 horizontal, 2 vertical), scroll axis along z
    image, fibres = read_volume(DATA / "real_ct_crop_48.tif"), read_volume(DATA / "real_ct_fibres_48.tif")
    contrast = fibre_contrast(image)
    horizontal, vertical = contrast[fibres == 1].mean(), contrast[fibres == 2].mean()
    assert horizontal - vertical > 0.1, (horizontal, vertical)
    # with another array axis taken for the scroll axis the cue reverses: the step needs z along the axis
    for order in ((1, 0, 2), (2, 1, 0)):
        turned, fibres_turned = fibre_contrast(np.ascontiguousarray(image.transpose(order))), fibres.transpose(order)
        assert turned[fibres_turned == 1].mean() < turned[fibres_turned == 2].mean(), order


def test_fast_gradient_matches_numpy_and_a_slab_matches_the_whole():
    volume = np.random.default_rng(4).random((9, 7, 6), dtype=np.float32)
    whole = _gradient(volume)
    np.testing.assert_allclose(whole, np.stack(np.gradient(volume)), atol=1e-6)
    for start, stop in ((0, 2), (3, 7), (7, 9)):
        np.testing.assert_array_equal(_slab_gradient(volume, start, stop), whole[:, start:stop])


def test_recto_side_keeps_the_shape_of_a_volume_not_a_multiple_of_the_pooling():
    image, depth, sheet = flat_sheets(seed=5, shape=(45, 71, 46))
    side = recto_side(image, context=24.0)
    assert side.shape == image.shape and fibre_contrast(image).shape == image.shape
    assert side[sheet & (depth < 2)].mean() > 0.9 and side[sheet & (depth >= THICKNESS - 2)].mean() < 0.1
