import dataclasses
import math

import numpy as np
import pytest
import torch

from scrollseg.config import AugmentConfig
from scrollseg.constants import IGNORE_LABEL
from scrollseg.data.augment import (
    augment_batch,
    fit_scale,
    foreground_reach,
    gamma_correct,
    resample_patches,
    rotation_matrix,
    spatial_crop_size,
)
from scrollseg.data.sampler import PatchSampler
from scrollseg.data.volumes import ArrayVolume

# every transform off: the output is the normalised centre slice of the crop
OFF = AugmentConfig(rotation_prob=0, scale_prob=0, mirror_prob=0, noise_prob=0, blur_prob=0, brightness_prob=0, contrast_prob=0,
                    lowres_prob=0, inverted_gamma_prob=0, gamma_prob=0)
SPATIAL = dataclasses.replace(OFF, rotation_prob=1.0, scale_prob=1.0, rotation_deg=45.0, scale_range=[0.7, 1.4], crop_cap=4.0)


def with_(cfg: AugmentConfig = OFF, **changes) -> AugmentConfig:
    return dataclasses.replace(cfg, **changes)


def run(image, label, cfg, seed=0, patch=None, mean=0.0, std=1 / 255):
    """augment_batch with one set of statistics; by default the output is in the stored units (0..255)."""
    b = image.shape[0]
    return augment_batch(image, label, torch.full((b,), mean), torch.full((b,), std), cfg, torch.Generator().manual_seed(seed), patch)


def blocks(b=2, size=16, seed=0):
    """uint8 images whose labels mark the bright voxels (image = 20 + 200 * label)."""
    rng = np.random.default_rng(seed)
    label = torch.from_numpy((rng.random((b, size, size, size)) < 0.3).astype(np.uint8))
    return (label * 200 + 20).to(torch.uint8), label


def noise_images(b=2, size=16, seed=0):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (b, size, size, size), dtype=np.uint8)), torch.zeros(b, size, size, size, dtype=torch.uint8)


def roughness(x: torch.Tensor) -> float:
    """Mean squared difference of neighbours along every axis: the high-frequency content."""
    return sum(float((x.diff(dim=d) ** 2).mean()) for d in (2, 3, 4))


# --- spatial -------------------------------------------------------------------------------


@pytest.mark.parametrize("axis,dims", [(0, (1, 2)), (1, (2, 0)), (2, (0, 1))])
def test_a_quarter_turn_about_an_axis_is_rot90(axis, dims):
    image = torch.rand(2, 12, 12, 12) * 255
    label = torch.randint(0, 3, (2, 12, 12, 12), dtype=torch.uint8)
    angles = torch.zeros(2, 3, dtype=torch.float64)
    angles[:, axis] = math.pi / 2
    x, y = resample_patches(image, label, rotation_matrix(angles), (8, 8, 8))
    centre = (slice(None), slice(2, 10), slice(2, 10), slice(2, 10))
    assert torch.allclose(x[:, 0], torch.rot90(image, 1, [d + 1 for d in dims])[centre], atol=1e-2)
    assert torch.equal(y[:, 0], torch.rot90(label, 1, [d + 1 for d in dims])[centre])


def test_an_enlarged_crop_of_a_big_volume_gives_patches_without_padding():
    # the volume's label has no 2; foreground only in the middle, so every crop lies inside the volume
    size, patch = 96, (16, 16, 16)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (size,) * 3, dtype=np.uint8)
    label = np.zeros((size,) * 3, np.uint8)
    label[44:52, 44:52, 44:52] = rng.random((8, 8, 8)) < 0.5
    vol = ArrayVolume.of("big", image, label, 0.5, 0.25)
    sampler = PatchSampler([vol], patch, 8, 1.0, seed=0, augment=SPATIAL)
    crop = spatial_crop_size(patch, SPATIAL)
    assert crop == [40, 40, 40], "1.4 x the bounding box of 15 voxels turned by 45 degrees about every axis (x 1.73), plus margins"
    for step in range(4):
        batch = sampler.batch(step)
        assert batch["image"].shape == (8, *crop) and (batch["label"] != IGNORE_LABEL).all()
        x, y = run(torch.from_numpy(batch["image"]), torch.from_numpy(batch["label"]), SPATIAL, seed=step, patch=patch)
        assert x.shape == y.shape == (8, 1, *patch)
        assert set(torch.unique(y).tolist()) <= {0, 1}, "no voxel was read from outside the crop"


def test_voxels_read_from_outside_the_crop_are_ignored():
    image, label = blocks(1, 8)
    zoomed_out = 2.0 * torch.eye(3, dtype=torch.float64)[None]
    _, y = resample_patches(image, label, zoomed_out, (8, 8, 8))
    assert (y[0, 0, 0] == IGNORE_LABEL).all() and (y[0, 0, 3:5, 3:5, 3:5] != IGNORE_LABEL).all()


def test_the_crop_covers_every_allowed_rotation_and_a_capped_crop_scales_down_instead():
    patch = (32, 32, 32)
    gen = torch.Generator().manual_seed(0)
    angles = (torch.rand(4000, 3, generator=gen, dtype=torch.float64) * 2 - 1) * math.radians(45)
    corners = torch.cartesian_prod(*[torch.tensor([-1.0, 1.0], dtype=torch.float64)] * 3) * math.radians(45)
    turns = rotation_matrix(torch.cat([angles, corners]))
    full = spatial_crop_size(patch, SPATIAL)
    assert (fit_scale(turns, patch, full) >= 1.4).all()
    capped = spatial_crop_size(patch, with_(SPATIAL, crop_cap=1.5))
    assert capped == [48, 48, 48]
    fit = fit_scale(turns, patch, capped)
    assert (fit < 1.4).any() and (fit >= 0.7).all(), "scaled down, never below the smallest allowed scale"
    image, label = noise_images(6, 48)
    _, y = run(image, label, with_(SPATIAL, crop_cap=1.5), patch=patch)
    assert (y != IGNORE_LABEL).all()


def test_without_spatial_transforms_the_crop_is_the_patch():
    assert spatial_crop_size((32, 48, 64), OFF) == [32, 48, 64]
    assert foreground_reach((32, 48, 64), OFF) == [15.5, 23.5, 31.5]
    # ceil(1.2 * 31 + 1) = 39, one more so that the patch sits exactly in the middle
    assert spatial_crop_size((32, 32, 32), with_(OFF, scale_prob=1.0, scale_range=[0.7, 1.2])) == [40, 40, 40]


def test_foreground_reach_stays_inside_the_patch_under_every_allowed_transform():
    patch = (16, 24, 24)
    reach = torch.tensor(foreground_reach(patch, SPATIAL), dtype=torch.float64)
    corners = torch.cartesian_prod(*[torch.tensor([-1.0, 1.0], dtype=torch.float64)] * 3) * reach
    gen = torch.Generator().manual_seed(1)
    turns = rotation_matrix((torch.rand(3000, 3, generator=gen, dtype=torch.float64) * 2 - 1) * math.radians(45))
    # a voxel at u in the crop appears at R^T u / s in the patch (sampling matrix s R is orthogonal times s)
    for scale in (0.7, 1.0, 1.4):
        seen = torch.einsum("kji,cj->kci", turns, corners) / scale
        assert (seen.abs() <= torch.tensor([7.5, 11.5, 11.5], dtype=torch.float64)).all()
    assert (reach > 1).all()


@pytest.mark.parametrize("where", [(32, 22, 42), (1, 62, 30)], ids=["inside", "at-the-border"])
def test_an_oversampled_foreground_voxel_lands_inside_the_rotated_patch(where):
    # one surface voxel in a bright 3^3 block on black: the block shows in the patch when the voxel does
    size, patch = 64, (16, 16, 16)
    image = np.zeros((size,) * 3, np.uint8)
    label = np.zeros((size,) * 3, np.uint8)
    image[tuple(slice(c - 1, c + 2) for c in where)] = 255
    label[where] = 1
    vol = ArrayVolume.of("one", image, label, 0.0, 1 / 255)
    cfg = with_(SPATIAL, rotation_deg=30.0, crop_cap=2.0, mirror_prob=0.5, rot90=True)
    sampler = PatchSampler([vol], patch, 32, 1.0, seed=0, augment=cfg)
    for step in range(3):
        batch = sampler.batch(step)
        x, _ = run(torch.from_numpy(batch["image"]), torch.from_numpy(batch["label"]), cfg, seed=step, patch=patch)
        assert (x.flatten(1).amax(1) > 1).all()


@pytest.mark.parametrize("crop", [20, 21])
def test_an_identity_resampling_equals_the_sliced_path_with_the_same_mirrors_and_turns(crop):
    image, label = blocks(6, crop)
    sliced = with_(OFF, mirror_prob=0.5, rot90=True)
    resampled = with_(sliced, rotation_prob=1.0, rotation_deg=0.0)
    x0, y0 = run(image, label, sliced, seed=3, patch=(12, 12, 12))
    x1, y1 = run(image, label, resampled, seed=3, patch=(12, 12, 12))
    assert torch.equal(y0, y1) and torch.allclose(x0, x1, atol=1e-3)
    assert not torch.equal(y0[:, 0], label[:, 4:16, 4:16, 4:16]), "some sample was mirrored or turned"


def test_mirroring_flips_image_and_label_together():
    image, label = blocks(4, 12)
    x0, y0 = run(image, label, OFF)
    x, y = run(image, label, with_(OFF, mirror_prob=1.0))
    assert torch.equal(y, y0.flip(2, 3, 4)) and torch.equal(x, x0.flip(2, 3, 4))
    assert torch.equal(x > 100, y == 1)


def test_spatial_augmentation_keeps_image_and_label_aligned():
    image, label = blocks(6, 40)
    x, y = run(image, label, with_(SPATIAL, mirror_prob=0.5, rot90=True), patch=(16, 16, 16))
    # nearest label against trilinear image: they disagree only on a thin rim of the blocks
    agree = ((x > 120) == (y == 1)).float().mean()
    assert agree > 0.85 and set(torch.unique(y).tolist()) <= {0, 1}


def test_labels_stay_in_the_three_classes_under_the_whole_set():
    rng = np.random.default_rng(5)
    label = torch.from_numpy(rng.integers(0, 3, (4, 24, 24, 24), dtype=np.uint8))
    image = (label * 90).to(torch.uint8)
    everything = with_(SPATIAL, mirror_prob=0.5, rot90=True, noise_prob=1.0, blur_prob=1.0, brightness_prob=1.0, contrast_prob=1.0,
                       lowres_prob=1.0, inverted_gamma_prob=1.0, gamma_prob=1.0, crop_cap=1.5)
    _, y = run(image, label, everything, patch=(16, 16, 16))
    assert y.dtype == torch.uint8 and set(torch.unique(y).tolist()) == {0, 1, 2}


def test_the_same_seed_gives_the_same_batch():
    image, label = noise_images(4, 24)
    cfg = with_(AugmentConfig(), rotation_prob=0.5, scale_prob=0.5, noise_prob=0.5, blur_prob=0.5, lowres_prob=0.5, rot90=True)
    a, b, c = (run(image, label, cfg, seed=s, patch=(16, 16, 16)) for s in (7, 7, 8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_a_crop_smaller_than_the_patch_is_refused():
    image, label = blocks(1, 8)
    with pytest.raises(ValueError, match="smaller than the patch"):
        run(image, label, OFF, patch=(16, 16, 16))


# --- intensity -------------------------------------------------------------------------------


def test_noise_raises_the_spread_of_a_flat_image():
    image = torch.full((3, 16, 16, 16), 100, dtype=torch.uint8)
    label = torch.zeros_like(image)
    x, _ = run(image, label, with_(OFF, noise_prob=1.0, noise_std=[0.05, 0.1]))
    spread = x.flatten(1).std(1)
    assert ((spread > 0.045) & (spread < 0.11)).all()


def test_blur_lowers_the_variance_of_noise():
    image, label = noise_images(3)
    x0, _ = run(image, label, OFF, mean=0.5, std=0.3)
    x, _ = run(image, label, with_(OFF, blur_prob=1.0), mean=0.5, std=0.3)
    assert (x.flatten(1).var(1) < 0.6 * x0.flatten(1).var(1)).all()
    assert torch.allclose(x.mean((1, 2, 3, 4)), x0.mean((1, 2, 3, 4)), atol=0.05), "a normalised kernel keeps the mean"


def test_brightness_multiplies_each_sample_by_one_factor_in_range():
    image, label = noise_images(4)
    x0, _ = run(image, label, OFF, mean=0.5, std=0.3)
    x, _ = run(image, label, with_(OFF, brightness_prob=1.0), mean=0.5, std=0.3)
    ratio = (x / x0).flatten(1)
    factor = ratio.median(1).values
    assert torch.allclose(ratio, factor[:, None], rtol=1e-4)
    assert ((factor >= 0.75) & (factor <= 1.25) & ((factor - 1).abs() > 1e-4)).all()


def test_contrast_changes_the_spread_within_the_former_range():
    image, label = noise_images(4)
    x0, _ = run(image, label, OFF, mean=0.5, std=0.3)
    x, _ = run(image, label, with_(OFF, contrast_prob=1.0), mean=0.5, std=0.3)
    assert (x.flatten(1).amin(1) >= x0.flatten(1).amin(1) - 1e-5).all() and (x.flatten(1).amax(1) <= x0.flatten(1).amax(1) + 1e-5).all()
    assert ((x.flatten(1).std(1) - x0.flatten(1).std(1)).abs() > 1e-3).all()


def test_low_resolution_removes_high_frequencies():
    image, label = noise_images(3)
    x0, _ = run(image, label, OFF, mean=0.5, std=0.3)
    x, _ = run(image, label, with_(OFF, lowres_prob=1.0, lowres_zoom=[0.5, 0.6]), mean=0.5, std=0.3)
    assert roughness(x) < 0.5 * roughness(x0)


def test_gamma_keeps_mean_and_std_and_inverted_gamma_bends_the_other_end():
    ramp = torch.linspace(-1.0, 2.0, 4096).view(1, 1, 16, 16, 16)

    def skew(v):
        z = (v - v.mean()) / v.std()
        return float((z**3).mean())

    gamma = torch.tensor([1.5])
    plain, inverted = gamma_correct(ramp, gamma, invert=False), gamma_correct(ramp, gamma, invert=True)
    for out in (plain, inverted):
        assert abs(float(out.mean() - ramp.mean())) < 1e-4 and abs(float(out.std() - ramp.std())) < 1e-4
    # gamma > 1 compresses the dark end (mass piles up low: skewed right); inverted, the bright end
    assert abs(skew(ramp)) < 1e-4 and skew(plain) > 0.2 and skew(inverted) < -0.2


def test_gamma_transforms_through_augment_batch_change_the_image_but_not_its_stats():
    image, label = noise_images(4)
    x0, _ = run(image, label, OFF, mean=0.5, std=0.3)
    for cfg in (with_(OFF, gamma_prob=1.0), with_(OFF, inverted_gamma_prob=1.0)):
        x, _ = run(image, label, cfg, mean=0.5, std=0.3)
        assert (x - x0).abs().amax() > 0.05
        assert torch.allclose(x.mean((1, 2, 3, 4)), x0.mean((1, 2, 3, 4)), atol=1e-3)
        assert torch.allclose(x.flatten(1).std(1), x0.flatten(1).std(1), atol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_match_the_cpu_ones_without_noise():
    image, label = noise_images(4, 40)
    cfg = with_(SPATIAL, mirror_prob=0.5, blur_prob=0.5, contrast_prob=0.5, lowres_prob=0.5, gamma_prob=0.5, rot90=True)
    cpu = run(image, label, cfg, seed=2, patch=(16, 16, 16))
    gpu = run(image.cuda(), label.cuda(), cfg, seed=2, patch=(16, 16, 16))
    assert torch.allclose(cpu[0], gpu[0].cpu(), atol=1e-3) and (cpu[1] != gpu[1].cpu()).float().mean() < 1e-3


# --- configuration -------------------------------------------------------------------------


def test_presets_take_nnunet_defaults_and_bad_ranges_are_refused():
    from scrollseg.config import build_config
    from scrollseg.errors import ConfigError

    for preset in ("default", "kaggle_2xT4", "tiny"):
        assert build_config(preset).augment == AugmentConfig()
    assert AugmentConfig().scale_range == [0.7, 1.4] and AugmentConfig().gamma_range == [0.7, 1.5]
    with pytest.raises(ConfigError, match="augment.scale_range"):
        build_config("tiny", ["augment.scale_range=[1.4,0.7]"])
    with pytest.raises(ConfigError, match="augment.lowres_zoom"):
        build_config("tiny", ["augment.lowres_zoom=[0.5,1.5]"])
    with pytest.raises(ConfigError, match="augment.gamma_prob"):
        build_config("tiny", ["augment.gamma_prob=1.5"])
    with pytest.raises(ConfigError, match="unknown config key 'augment.spatial_prob'"):
        build_config("tiny", ["augment.spatial_prob=0.2"])
