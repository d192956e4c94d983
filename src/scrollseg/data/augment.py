"""Batched augmentation and normalisation on the training device.

CPU workers only slice uint8 patches; everything else runs here on whole batches,
on the GPU when there is one:

- intensity: gamma, z-scoring with the volume's statistics, scale and shift are one
  function of the uint8 value, so they are applied as a 256-entry table per sample
  (one gather instead of five full-size float operations);
- noise: a random crop of a fixed Gaussian noise bank kept on the device, scaled per
  sample (drawing fresh normal noise costs more than the rest of the step's data work);
- flips on every axis and rot90 in the (H, W) plane when it is square;
- optionally (``spatial_prob``), an in-plane rotation and isotropic zoom resampled with
  ``grid_sample``: trilinear for the image, nearest for the label, with voxels from
  outside the patch labelled 2 (ignored).

Random parameters come from a CPU generator seeded per step, so a step's
augmentation is reproducible and independent of the number of workers.
"""
from __future__ import annotations

from functools import lru_cache

import math

import torch
import torch.nn.functional as F

from ..config import AugmentConfig

NOISE_MARGIN = 16


@lru_cache(maxsize=4)
def _noise_bank(shape: tuple[int, ...], device: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(tuple(s + NOISE_MARGIN for s in shape), generator=gen).to(device)


def intensity_tables(mean: torch.Tensor, std: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """[B, 256]: the augmented, normalised value of each uint8 level, per sample."""
    b = mean.shape[0]
    levels = torch.arange(256, dtype=torch.float32) / 255.0
    gamma = 1.0 + (torch.rand(b, generator=generator) * 2 - 1) * cfg.gamma
    scale = 1.0 + (torch.rand(b, generator=generator) * 2 - 1) * cfg.intensity_scale
    shift = (torch.rand(b, generator=generator) * 2 - 1) * cfg.intensity_shift
    curved = levels.clamp_min(1e-6)[None, :] ** gamma[:, None]
    return ((curved - mean.cpu()[:, None]) / std.cpu()[:, None]) * scale[:, None] + shift[:, None]


def augment_batch(
    image_u8: torch.Tensor,
    label: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    cfg: AugmentConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augmented, normalised images [B, 1, D, H, W] (float) and labels [B, 1, D, H, W] (uint8)."""
    b = image_u8.shape[0]
    dev = image_u8.device
    tables = intensity_tables(mean, std, cfg, generator).to(dev)
    # int32 indices: converting uint8 to int64 for take/gather would cost more than the lookup
    x = torch.stack([torch.index_select(tables[i], 0, image_u8[i].flatten().int()).view(image_u8.shape[1:]) for i in range(b)])
    if cfg.noise_std > 0:
        sigma = torch.rand(b, generator=generator) * cfg.noise_std
        offsets = torch.randint(0, NOISE_MARGIN + 1, (b, 3), generator=generator)
        bank = _noise_bank(tuple(x.shape[1:]), str(dev))
        for i in range(b):
            o = offsets[i].tolist()
            crop = bank[o[0] : o[0] + x.shape[1], o[1] : o[1] + x.shape[2], o[2] : o[2] + x.shape[3]]
            x[i].add_(crop, alpha=float(sigma[i]))
    flips = torch.rand(b, 3, generator=generator) < 0.5 if cfg.flip else torch.zeros(b, 3, dtype=torch.bool)
    turns = torch.randint(0, 4, (b,), generator=generator) if cfg.rot90 else torch.zeros(b, dtype=torch.long)
    square_yx = x.shape[-1] == x.shape[-2]
    xs, ys = [], []
    for i in range(b):
        xi, yi = x[i], label[i]
        dims = [d for d in range(3) if flips[i, d]]
        if dims:
            xi, yi = xi.flip(dims), yi.flip(dims)
        if square_yx and turns[i]:
            k = int(turns[i])
            xi, yi = xi.rot90(k, (1, 2)), yi.rot90(k, (1, 2))
        xs.append(xi)
        ys.append(yi)
    x, y = torch.stack(xs).unsqueeze(1), torch.stack(ys).unsqueeze(1)
    if cfg.spatial_prob > 0:
        x, y = rotate_and_zoom(x, y, cfg, generator)
    return x, y


def rotate_and_zoom(x: torch.Tensor, y: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample a random subset of the batch under an in-plane rotation and a zoom."""
    b = x.shape[0]
    chosen = torch.rand(b, generator=generator) < cfg.spatial_prob
    angle = (torch.rand(b, generator=generator) * 2 - 1) * math.radians(cfg.rotation_deg)
    zoom = 1.0 + (torch.rand(b, generator=generator) * 2 - 1) * cfg.scale_range
    if not chosen.any():
        return x, y
    idx = chosen.nonzero().flatten()
    cos, sin = torch.cos(angle[idx]) / zoom[idx], torch.sin(angle[idx]) / zoom[idx]
    theta = torch.zeros(len(idx), 3, 4)
    # affine_grid orders coordinates (x=W, y=H, z=D): rotate x-y, scale all three
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    theta[:, 2, 2] = 1.0 / zoom[idx]
    idx_dev = idx.to(x.device)
    grid = F.affine_grid(theta.to(x.device), [len(idx), 1, *x.shape[2:]], align_corners=False)
    x = x.clone()
    y = y.clone()
    x[idx_dev] = F.grid_sample(x[idx_dev], grid, mode="bilinear", padding_mode="border", align_corners=False)
    # labels shifted by one so that zero padding marks voxels from outside the patch
    moved = F.grid_sample(y[idx_dev].float() + 1, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    y[idx_dev] = torch.where(moved == 0, torch.full_like(moved, 2), moved - 1).to(y.dtype)
    return x, y
