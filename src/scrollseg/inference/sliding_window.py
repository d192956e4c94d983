"""Sliding-window prediction over a whole volume with Gaussian blending.

Tile starts are spread evenly so the first tile starts at 0 and the last ends at
the border (as nnU-Net does); volumes smaller than a tile are padded. Tiles run in
batches on ``device``; the blended sum is kept on ``accumulate_device`` (the CPU
for volumes too large for the accelerator). The Gaussian map is built once per
tile size and device.
"""
from __future__ import annotations

import itertools
from functools import lru_cache
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F


def tile_starts(size: int, tile: int, overlap: float) -> list[int]:
    if size <= tile:
        return [0]
    step = max(1, int(tile * (1.0 - overlap)))
    n = int(np.ceil((size - tile) / step)) + 1
    return [int(round(i * (size - tile) / (n - 1))) for i in range(n)]


@lru_cache(maxsize=8)
def _gaussian_cpu(tile: tuple[int, ...], sigma_scale: float) -> torch.Tensor:
    grids = [torch.arange(t, dtype=torch.float64) - (t - 1) / 2 for t in tile]
    g = torch.ones(tile, dtype=torch.float64)
    for axis, coords in enumerate(grids):
        shape = [1] * len(tile)
        shape[axis] = -1
        g = g * torch.exp(-(coords**2) / (2 * (tile[axis] * sigma_scale) ** 2)).view(shape)
    g = g / g.max()
    return g.clamp_min(g[g > 0].min()).float()  # no zero weights at tile corners


def gaussian_weights(tile: tuple[int, ...], device: torch.device, sigma_scale: float = 0.125) -> torch.Tensor:
    return _gaussian_cpu(tuple(tile), sigma_scale).to(device)


def sliding_window(
    volume: torch.Tensor,
    predictor: Callable[[torch.Tensor], torch.Tensor],
    tile: tuple[int, int, int],
    overlap: float = 0.5,
    batch_size: int = 4,
    device: torch.device | str = "cpu",
    accumulate_device: torch.device | str | None = None,
    accumulate_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Blend ``predictor`` over ``volume`` [C, D, H, W]; returns [C_out, D, H, W] on ``accumulate_device``.

    ``predictor`` maps a batch [B, C, *tile] on ``device`` to [B, C_out, *tile].
    """
    device = torch.device(device)
    acc_device = torch.device(accumulate_device) if accumulate_device is not None else device
    spatial = tuple(volume.shape[1:])
    pad = [max(0, t - s) for t, s in zip(tile, spatial)]
    if any(pad):
        pads = []
        for p in reversed(pad):
            pads += [p // 2, p - p // 2]
        volume = F.pad(volume, pads)
    padded = tuple(volume.shape[1:])
    weights = gaussian_weights(tile, device)
    starts = list(itertools.product(*(tile_starts(s, t, overlap) for s, t in zip(padded, tile))))
    total = None
    norm = torch.zeros(padded, dtype=accumulate_dtype, device=acc_device)
    for i in range(0, len(starts), batch_size):
        chunk = starts[i : i + batch_size]
        batch = torch.stack([volume[(slice(None),) + tuple(slice(s, s + t) for s, t in zip(st, tile))] for st in chunk]).to(device, non_blocking=True)
        out = predictor(batch)
        if total is None:
            total = torch.zeros((out.shape[1],) + padded, dtype=accumulate_dtype, device=acc_device)
        weighted = (out.float() * weights).to(acc_device, accumulate_dtype)
        w_acc = weights.to(acc_device, accumulate_dtype)
        for st, pred in zip(chunk, weighted):
            region = tuple(slice(s, s + t) for s, t in zip(st, tile))
            total[(slice(None),) + region] += pred
            norm[region] += w_acc
    result = total / norm
    if any(pad):
        result = result[(slice(None),) + tuple(slice(p // 2, p // 2 + s) for p, s in zip(pad, spatial))]
    return result
