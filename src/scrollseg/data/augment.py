"""Batched training augmentation and normalisation on the training device: nnU-Net v2's set.

CPU workers only slice uint8 crops (``data.sampler``); everything here runs on whole
batches, on the GPU when there is one, in nnU-Net's order:

1. spatial: rotation about all three axes and isotropic scaling, resampled with one
   ``affine_grid`` + ``grid_sample`` per batch (trilinear image, nearest label). The
   sampler delivers an enlarged crop (``spatial_crop_size``) around the patch, so the
   rotated and scaled patch reads voxels of the crop only. Samples drawn for neither are
   sliced from the crop's centre without interpolation. Mirroring (last in nnU-Net) and
   the optional in-plane rot90 ride on this step: folded into the resampling matrix, or
   flips of the slice. The later transforms treat both directions of an axis alike, so
   the distribution is nnU-Net's, at no extra pass;
2. normalisation with the volume's statistics, one multiply-add per voxel after the
   resampling (trilinear interpolation commutes with it);
3. intensity, each on the samples drawn for it: Gaussian noise, Gaussian blur (separable,
   one grouped convolution per axis for all samples), multiplicative brightness,
   contrast, low-resolution simulation, inverted gamma and gamma.

A 256-entry table from the stored uint8 value no longer holds the intensity chain: gamma
comes after noise and blur, so it is not a function of that value, and what comes before
the noise is affine, where a multiply-add is cheaper than the table's gather.

Random parameters come from the CPU generator passed in (seeded per step), all drawn in a
fixed order whatever the probabilities, so a step's augmentation is reproducible and
independent of the number of workers; the noise itself comes from a generator on the
batch's device seeded from it.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

from ..config import AugmentConfig
from ..constants import IGNORE_LABEL

# angles per axis when bounding the rotated patch; the maxima lie where the bound is flat,
# so the grid misses well under a voxel, which GRID_MARGIN covers
ANGLE_STEPS = 61
GRID_MARGIN = 1.0
EPS = 1e-7


def rotation_matrix(angles: torch.Tensor) -> torch.Tensor:
    """[..., 3] angles (radians) about axes 0, 1, 2 -> [..., 3, 3] sampling matrices.

    A sampling matrix maps output voxel coordinates to input ones (both about the centre,
    axes in (D, H, W) order). Turning by +90 degrees about axis ``a`` reproduces
    ``torch.rot90(x, 1, dims=((a + 1) % 3, (a + 2) % 3))`` on a [D, H, W] array.
    """
    batch = angles.shape[:-1]
    out = torch.eye(3, dtype=angles.dtype).expand(*batch, 3, 3)
    for axis in range(3):
        b, c = (axis + 1) % 3, (axis + 2) % 3
        cos, sin = torch.cos(angles[..., axis]), torch.sin(angles[..., axis])
        turn = torch.zeros(*batch, 3, 3, dtype=angles.dtype)
        turn[..., axis, axis] = 1.0
        turn[..., b, b], turn[..., b, c], turn[..., c, b], turn[..., c, c] = cos, sin, -sin, cos
        out = out @ turn
    return out


@lru_cache(maxsize=16)
def _rotated_extents(patch: tuple[int, ...], limit: float) -> tuple[list[float], list[float]]:
    """Over all rotations with angles in [-limit, limit]: the largest half-extent per axis of
    the rotated patch (rows), and of the patch seen from the rotated frame (columns)."""
    half = torch.tensor([(n - 1) / 2 for n in patch], dtype=torch.float64)
    if limit == 0:
        return half.tolist(), half.tolist()
    steps = torch.linspace(-limit, limit, ANGLE_STEPS, dtype=torch.float64)
    spread = rotation_matrix(torch.cartesian_prod(steps, steps, steps)).abs()
    return (spread @ half).amax(0).tolist(), (spread.transpose(-1, -2) @ half).amax(0).tolist()


def _rotation_limit(cfg: AugmentConfig) -> float:
    return math.radians(cfg.rotation_deg) if cfg.rotation_prob > 0 else 0.0


def _scale_bounds(cfg: AugmentConfig) -> tuple[float, float]:
    """The smallest and largest field-of-view factor a sample can get (unscaled samples: 1)."""
    if cfg.scale_prob == 0:
        return 1.0, 1.0
    return min(cfg.scale_range[0], 1.0), max(cfg.scale_range[1], 1.0)


def spatial_crop_size(patch, cfg: AugmentConfig) -> list[int]:
    """Crop size from which every allowed rotation and scale of ``patch`` is resampled.

    Large enough for the patch's bounding box under every rotation at the largest field of
    view, but at most ``cfg.crop_cap`` times the patch (never less than the smallest field
    of view needs): the rare samples that reach past a capped crop are scaled down to fit
    (``fit_scale``). The difference to the patch is even, so the patch sits at the centre.
    """
    patch = tuple(int(n) for n in patch)
    limit = _rotation_limit(cfg)
    rows, _ = _rotated_extents(patch, limit)
    margin = GRID_MARGIN if limit > 0 else 0.0
    smallest, largest = _scale_bounds(cfg)
    crop = []
    for n, extent in zip(patch, rows):
        def need(scale: float) -> int:
            return math.ceil(2 * (scale * extent + margin) + 1 - 1e-9)

        size = max(min(need(largest), math.floor(cfg.crop_cap * n)), need(smallest), n)
        crop.append(size + (size - n) % 2)
    return crop


def foreground_reach(patch, cfg: AugmentConfig) -> list[float]:
    """Per axis, how far from the patch centre a voxel may lie and stay inside the final patch
    under every allowed rotation, scale, mirror and turn (voxels).

    The sampler keeps an oversampled foreground voxel within this box around the centre
    of rotation. Without rotation or scaling it is the whole patch.
    """
    patch = tuple(int(n) for n in patch)
    limit = _rotation_limit(cfg)
    _, cols = _rotated_extents(patch, limit)
    smallest, _ = _scale_bounds(cfg)
    half = [(n - 1) / 2 for n in patch]
    shrink = smallest * min((h / c for h, c in zip(half, cols) if c > 0), default=1.0)
    margin = GRID_MARGIN if limit > 0 else 0.0
    return [max(0.0, shrink * h - margin) for h in half]


def _patch_offset(crop, patch) -> list[int]:
    return [(m - n) // 2 for m, n in zip(crop, patch)]


def _centre_shift(crop, patch) -> torch.Tensor:
    """Patch centre minus crop centre, in voxels (0, or -0.5 where the sizes differ by an odd number)."""
    return torch.tensor([o + (n - 1) / 2 - (m - 1) / 2 for o, m, n in zip(_patch_offset(crop, patch), crop, patch)], dtype=torch.float64)


def fit_scale(unit: torch.Tensor, patch, crop) -> torch.Tensor:
    """[k] the largest scale at which each scale-free sampling matrix [k, 3, 3] keeps the patch in the crop."""
    half = torch.tensor([(n - 1) / 2 for n in patch], dtype=torch.float64)
    room = torch.tensor([(m - 1) / 2 for m in crop], dtype=torch.float64) - _centre_shift(crop, patch).abs()
    extent = unit.abs() @ half
    return (room / extent.clamp_min(EPS)).amin(-1)


def resample_patches(image: torch.Tensor, label: torch.Tensor, matrices: torch.Tensor, patch) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``patch`` from the centre of each crop under a sampling matrix (``rotation_matrix`` times a scale).

    image [k, *crop] (any dtype), label [k, *crop] uint8, matrices [k, 3, 3] (CPU) ->
    float image [k, 1, *patch] (trilinear, in the input's units) and uint8 label
    [k, 1, *patch] (nearest). A label voxel read from outside the crop is ``IGNORE_LABEL``.
    """
    k, crop, dev = image.shape[0], tuple(image.shape[1:]), image.device
    in_xyz = torch.tensor(crop[::-1], dtype=torch.float64)
    out_xyz = torch.tensor(tuple(patch)[::-1], dtype=torch.float64)
    # affine_grid works in coordinates normalised to each tensor's extent, ordered (W, H, D)
    theta = torch.zeros(k, 3, 4, dtype=torch.float64)
    theta[:, :, :3] = (2 / in_xyz)[:, None] * matrices.to(torch.float64).flip(-1, -2) * (out_xyz / 2)
    theta[:, :, 3] = 2 * _centre_shift(crop, patch).flip(0) / in_xyz
    grid = F.affine_grid(theta.to(dev, torch.float32), [k, 1, *patch], align_corners=False)
    x = F.grid_sample(image.unsqueeze(1).float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    # labels shifted by one, so that the zero padding marks voxels from outside the crop
    moved = F.grid_sample(label.unsqueeze(1).float() + 1, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    y = torch.where(moved == 0, torch.full_like(moved, IGNORE_LABEL + 1), moved) - 1
    return x, y.to(torch.uint8)


def _slice_patches(image, label, chosen, flips, turns, patch, x, y) -> None:
    """Write the centre slices of the ``chosen`` crops, mirrored and turned, into x and y (per sample:
    each has its own flips and turn, and a uint8 slice costs less than resampling)."""
    lo = _patch_offset(image.shape[1:], patch)
    window = tuple(slice(o, o + n) for o, n in zip(lo, patch))
    for i in chosen.nonzero().flatten().tolist():
        xi, yi = image[i][window], label[i][window]
        dims = [d for d in range(3) if flips[i, d]]
        if dims:
            xi, yi = xi.flip(dims), yi.flip(dims)
        if turns[i]:
            xi, yi = xi.rot90(int(turns[i]), (1, 2)), yi.rot90(int(turns[i]), (1, 2))
        x[i, 0].copy_(xi)
        y[i, 0].copy_(yi)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x [k, 1, D, H, W] blurred with per-sample, per-axis sigmas [k, 3] (voxels); reflected borders.

    Each axis is a weighted sum of shifted views, one multiply-add per tap over the whole
    sub-batch: on the CPU, torch's grouped conv3d is several times slower at this.
    """
    radius = max(1, math.ceil(3 * float(sigma.max())))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (taps / sigma.to(torch.float64)[..., None]) ** 2)
    weights = (weights / weights.sum(-1, keepdim=True)).to(x.device, x.dtype)  # [k, 3, taps]
    out = x
    for axis in range(3):
        dim, size = 2 + axis, x.shape[2 + axis]
        pad = [0] * 6
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        padded = F.pad(out, pad, mode="reflect")
        out = padded.narrow(dim, 0, size) * _per_sample(weights[:, axis, 0], x)
        for t in range(1, 2 * radius + 1):
            out.addcmul_(padded.narrow(dim, t, size), _per_sample(weights[:, axis, t], x))
    return out


def simulate_low_resolution(x: torch.Tensor, zoom: torch.Tensor) -> torch.Tensor:
    """x [k, 1, *size] down to round(size * zoom) by nearest neighbour and back up trilinearly."""
    size = list(x.shape[2:])
    out = torch.empty_like(x)
    for i, z in enumerate(zoom.tolist()):  # each sample has its own coarse shape
        coarse = F.interpolate(x[i : i + 1], size=[max(1, round(n * z)) for n in size], mode="nearest-exact")
        out[i : i + 1] = F.interpolate(coarse, size=size, mode="trilinear", align_corners=False)
    return out


def _per_sample(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.to(like.device, like.dtype).view(-1, *[1] * (like.ndim - 1))


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Scale each sample about its mean by ``factor`` [k], clipped to its former range."""
    flat = x.flatten(1)
    mean = _per_sample(flat.mean(1), x)
    low, high = (_per_sample(v, x) for v in flat.aminmax(dim=1))
    return ((x - mean) * _per_sample(factor, x) + mean).clamp(low, high)


def gamma_correct(x: torch.Tensor, gamma: torch.Tensor, invert: bool) -> torch.Tensor:
    """Gamma [k] on each sample's own [min, max] range, keeping its mean and std; with ``invert``,
    on the negated image (which bends the bright end instead of the dark one)."""
    v = -x if invert else x
    flat = v.flatten(1)
    std, mean = (_per_sample(t, v) for t in torch.std_mean(flat, dim=1))
    low, high = (_per_sample(t, v) for t in flat.aminmax(dim=1))
    span = (high - low).clamp_min(EPS)
    v = ((v - low) / span).clamp_min(0) ** _per_sample(gamma, v) * span + low
    new_std, new_mean = (_per_sample(t, v) for t in torch.std_mean(v.flatten(1), dim=1))
    v = (v - new_mean) * (std / new_std.clamp_min(EPS)) + mean
    return -v if invert else v


def _draw(cfg: AugmentConfig, b: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Every random parameter for a batch of ``b``, drawn in one fixed order."""

    def uniform(bounds, *shape):
        low, high = bounds
        return low + (high - low) * torch.rand(*shape, generator=generator, dtype=torch.float64)

    def chosen(p: float) -> torch.Tensor:
        return torch.rand(b, generator=generator) < p

    def around_one(bounds) -> torch.Tensor:
        # nnU-Net's choice: below 1 or above 1 with equal odds, whatever the range's asymmetry
        low, high = bounds
        coin = torch.rand(b, generator=generator) < 0.5
        below = coin & (low < 1) if high > 1 else torch.ones(b, dtype=torch.bool)
        u = torch.rand(b, generator=generator, dtype=torch.float64)
        return torch.where(below, low + (min(high, 1) - low) * u, max(low, 1) + (high - max(low, 1)) * u)

    limit = math.radians(cfg.rotation_deg)
    return {
        "mirror": torch.rand(b, 3, generator=generator) < cfg.mirror_prob,
        "turns": torch.randint(0, 4, (b,), generator=generator),
        "rotate": chosen(cfg.rotation_prob), "angles": uniform((-limit, limit), b, 3),
        "scale": chosen(cfg.scale_prob), "factor": uniform(cfg.scale_range, b),
        "noise": chosen(cfg.noise_prob), "noise_std": uniform(cfg.noise_std, b),
        "blur": chosen(cfg.blur_prob), "sigma": uniform(cfg.blur_sigma, b, 3),
        "brightness": chosen(cfg.brightness_prob), "multiplier": around_one(cfg.brightness_range),
        "contrast": chosen(cfg.contrast_prob), "contrast_factor": around_one(cfg.contrast_range),
        "lowres": chosen(cfg.lowres_prob), "zoom": uniform(cfg.lowres_zoom, b),
        "inverted_gamma": chosen(cfg.inverted_gamma_prob), "inverted_gamma_value": around_one(cfg.gamma_range),
        "gamma": chosen(cfg.gamma_prob), "gamma_value": around_one(cfg.gamma_range),
        "noise_seed": torch.randint(0, 2**62, (1,), generator=generator),
    }


def _on_chosen(x: torch.Tensor, chosen: torch.Tensor, transform) -> None:
    """x[chosen] = transform(x[chosen], chosen indices), in place; nothing when none is chosen."""
    idx = chosen.nonzero().flatten()
    if len(idx):
        on_device = idx.to(x.device)
        x.index_copy_(0, on_device, transform(x.index_select(0, on_device), idx))


def augment_batch(
    image_u8: torch.Tensor,
    label: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    cfg: AugmentConfig,
    generator: torch.Generator,
    patch_size=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augmented, normalised images [B, 1, *patch] (float) and labels [B, 1, *patch] (uint8).

    ``image_u8`` and ``label`` are [B, *crop] uint8 crops centred on the patch, as the
    sampler cuts them (``spatial_crop_size``); ``mean`` and ``std`` [B] are the volumes'
    statistics on the [0, 1] scale. ``patch_size`` defaults to the crop itself.
    """
    b, crop, dev = image_u8.shape[0], tuple(image_u8.shape[1:]), image_u8.device
    patch = tuple(int(n) for n in (patch_size if patch_size is not None else crop))
    if any(m < n for m, n in zip(crop, patch)):
        raise ValueError(f"crop {list(crop)} is smaller than the patch {list(patch)}")
    d = _draw(cfg, b, generator)

    turns = d["turns"] if cfg.rot90 and patch[1] == patch[2] else torch.zeros(b, dtype=torch.long)
    spatial = d["rotate"] | d["scale"]
    x = torch.empty(b, 1, *patch, device=dev)
    y = torch.empty(b, 1, *patch, dtype=torch.uint8, device=dev)
    _slice_patches(image_u8, label, ~spatial, d["mirror"], turns, patch, x, y)
    if spatial.any():
        idx = spatial.nonzero().flatten()
        zero = torch.zeros(b, dtype=torch.float64)
        flips = torch.diag_embed(torch.where(d["mirror"], -1.0, 1.0).to(torch.float64))
        quarter = rotation_matrix(torch.stack([turns * (math.pi / 2), zero, zero], -1)).round()
        unit = (rotation_matrix(d["angles"] * d["rotate"][:, None]) @ flips @ quarter)[idx]
        scale = torch.where(d["scale"], d["factor"], 1.0)[idx]
        scale = torch.minimum(scale, fit_scale(unit, patch, crop))
        matrices = unit * scale[:, None, None]
        # only the centre of the crop that these samples read becomes float
        reach = (matrices.abs() @ torch.tensor([(n - 1) / 2 for n in patch], dtype=torch.float64)).amax(0)
        reach = reach + _centre_shift(crop, patch).abs()
        on_device = idx.to(dev)
        window = [on_device]
        for m, r in zip(crop, reach.tolist()):
            width = min(m, math.ceil(2 * r + 1 - 1e-9) + 1)  # half a voxel to spare on each side
            width += (m - width) % 2  # the centre stays where it was
            window.append(slice((m - width) // 2, (m + width) // 2))
        xs, ys = resample_patches(image_u8[tuple(window)], label[tuple(window)], matrices, patch)
        x.index_copy_(0, on_device, xs)
        y.index_copy_(0, on_device, ys)

    # normalise: (v / 255 - mean) / std, one multiply-add
    x.mul_(_per_sample(1.0 / (255.0 * std.float()), x)).add_(_per_sample(-mean.float() / std.float(), x))

    noise = torch.Generator(device=dev).manual_seed(int(d["noise_seed"]))
    _on_chosen(x, d["noise"], lambda v, i: v + _per_sample(d["noise_std"][i], v) * torch.randn(v.shape, generator=noise, device=dev))
    _on_chosen(x, d["blur"], lambda v, i: gaussian_blur(v, d["sigma"][i]))
    _on_chosen(x, d["brightness"], lambda v, i: v * _per_sample(d["multiplier"][i], v))
    _on_chosen(x, d["contrast"], lambda v, i: adjust_contrast(v, d["contrast_factor"][i]))
    _on_chosen(x, d["lowres"], lambda v, i: simulate_low_resolution(v, d["zoom"][i]))
    _on_chosen(x, d["inverted_gamma"], lambda v, i: gamma_correct(v, d["inverted_gamma_value"][i], invert=True))
    _on_chosen(x, d["gamma"], lambda v, i: gamma_correct(v, d["gamma_value"][i], invert=False))
    return x, y
