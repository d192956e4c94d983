"""Batched augmentation and normalisation on the training device.

CPU workers only slice uint8 patches; flips, rot90, gamma, scale, shift and noise
run here on whole batches, on the GPU when there is one. Random parameters come
from a CPU generator seeded per step, so results do not depend on the device.
"""
from __future__ import annotations

import torch

from ..config import AugmentConfig


def normalise(image_u8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 [B, D, H, W] -> float [B, 1, D, H, W], z-scored with per-volume statistics."""
    x = image_u8.float().div_(255.0)
    shape = (-1,) + (1,) * (x.ndim - 1)
    return ((x - mean.view(shape)) / std.view(shape)).unsqueeze(1)


def augment_batch(
    image_u8: torch.Tensor,
    label: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    cfg: AugmentConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augmented, normalised images [B, 1, D, H, W] and labels [B, 1, D, H, W] (uint8)."""
    b = image_u8.shape[0]
    dev = image_u8.device
    shape = (-1, 1, 1, 1)
    x = image_u8.float().div_(255.0)
    if cfg.gamma > 0:
        gamma = 1.0 + (torch.rand(b, generator=generator) * 2 - 1) * cfg.gamma
        x = x.clamp_min(1e-6).pow(gamma.to(dev).view(shape))
    x = (x - mean.view(shape)) / std.view(shape)
    if cfg.intensity_scale > 0:
        scale = 1.0 + (torch.rand(b, generator=generator) * 2 - 1) * cfg.intensity_scale
        x = x * scale.to(dev).view(shape)
    if cfg.intensity_shift > 0:
        shift = (torch.rand(b, generator=generator) * 2 - 1) * cfg.intensity_shift
        x = x + shift.to(dev).view(shape)
    if cfg.noise_std > 0:
        sigma = torch.rand(b, generator=generator) * cfg.noise_std
        # drawn where the batch lives, from a generator seeded by the step's own
        noise_gen = torch.Generator(device=dev).manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        x = x.add_(torch.randn(x.shape, generator=noise_gen, device=dev).mul_(sigma.to(dev).view(shape)))
    y = label
    flips = torch.rand(b, 3, generator=generator) < 0.5 if cfg.flip else torch.zeros(b, 3, dtype=torch.bool)
    turns = torch.randint(0, 4, (b,), generator=generator) if cfg.rot90 else torch.zeros(b, dtype=torch.long)
    square_yx = x.shape[-1] == x.shape[-2]
    xs, ys = [], []
    for i in range(b):
        xi, yi = x[i], y[i]
        dims = [d for d in range(3) if flips[i, d]]
        if dims:
            xi, yi = xi.flip(dims), yi.flip(dims)
        if square_yx and turns[i]:
            k = int(turns[i])
            xi, yi = xi.rot90(k, (1, 2)), yi.rot90(k, (1, 2))
        xs.append(xi)
        ys.append(yi)
    return torch.stack(xs).unsqueeze(1).contiguous(), torch.stack(ys).unsqueeze(1).contiguous()
