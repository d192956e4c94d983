"""Sliding-window prediction over a whole volume with Gaussian blending.

Tile starts are spread evenly so the first tile starts at 0 and the last ends at
the border (as nnU-Net does); volumes smaller than a tile are padded. Tiles run in
batches on ``device``; the blended sum is kept on ``accumulate_device`` (the CPU
for volumes too large for the accelerator).

The Gaussian weight is a product of 1D Gaussians, each floored above zero, and the
tile starts are a product of 1D grids, so the sum of weights at each voxel is the
product of three 1D sums. Normalising with those costs three short vectors instead
of a second full-size volume: half the memory of the usual count map, and no
per-tile accumulation of it.
"""
from __future__ import annotations

import itertools
from functools import lru_cache
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..progress import Progress


def tile_starts(size: int, tile: int, overlap: float) -> list[int]:
    if size <= tile:
        return [0]
    step = max(1, int(tile * (1.0 - overlap)))
    n = int(np.ceil((size - tile) / step)) + 1
    return [int(round(i * (size - tile) / (n - 1))) for i in range(n)]


@lru_cache(maxsize=32)
def gaussian_1d(size: int, sigma_scale: float = 0.125) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * (size * sigma_scale) ** 2))
    g = g / g.max()
    return g.clamp_min(1e-3).float()  # no zero weights at the tile's edges


def gaussian_weights(tile: tuple[int, ...], device: torch.device | str = "cpu", sigma_scale: float = 0.125) -> torch.Tensor:
    """The full tile weight map (the outer product of the 1D weights), on ``device``."""
    return _gaussian_on(tuple(tile), str(device), sigma_scale)


@lru_cache(maxsize=8)
def _gaussian_on(tile: tuple[int, ...], device: str, sigma_scale: float) -> torch.Tensor:
    g = [gaussian_1d(t, sigma_scale) for t in tile]
    return (g[0][:, None, None] * g[1][None, :, None] * g[2][None, None, :]).to(device)


def _weight_sums(size: int, tile: int, starts: list[int]) -> torch.Tensor:
    total = torch.zeros(size, dtype=torch.float64)
    g = gaussian_1d(tile).double()
    for s in starts:
        total[s : s + tile] += g
    return total


@torch.inference_mode()
def sliding_window(
    volume: torch.Tensor,
    predictor: Callable[[torch.Tensor], torch.Tensor],
    tile: tuple[int, int, int],
    overlap: float = 0.5,
    batch_size: int = 4,
    device: torch.device | str = "cpu",
    accumulate_device: torch.device | str | None = None,
    accumulate_dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> torch.Tensor:
    """Blend ``predictor`` over ``volume`` [C, D, H, W]; returns [C_out, D, H, W] on ``accumulate_device``.

    ``predictor`` maps a batch [B, C, *tile] on ``device`` to [B, C_out, *tile]; ``progress``
    shows the tiles done.
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
    axis_starts = [tile_starts(s, t, overlap) for s, t in zip(padded, tile)]
    starts = list(itertools.product(*axis_starts))
    total = None
    tiles = Progress(total=len(starts), desc="tiles", unit="tile", enabled=progress, leave=False)
    for i in range(0, len(starts), batch_size):
        chunk = starts[i : i + batch_size]
        batch = torch.stack([volume[(slice(None),) + tuple(slice(s, s + t) for s, t in zip(st, tile))] for st in chunk]).to(device, non_blocking=True)
        out = predictor(batch)
        if total is None:
            total = torch.zeros((out.shape[1],) + padded, dtype=accumulate_dtype, device=acc_device)
        weighted = out.float().mul_(weights).to(acc_device, accumulate_dtype)
        for st, pred in zip(chunk, weighted):
            total[(slice(None),) + tuple(slice(s, s + t) for s, t in zip(st, tile))] += pred
        tiles.update(len(chunk))
    tiles.close()
    # divide by the separable weight sum, one axis at a time, in place
    for axis, (size, t, s) in enumerate(zip(padded, tile, axis_starts)):
        shape = [1] * (total.ndim)
        shape[axis + 1] = size
        total /= _weight_sums(size, t, s).to(acc_device, accumulate_dtype).view(shape)
    if any(pad):
        total = total[(slice(None),) + tuple(slice(p // 2, p // 2 + s) for p, s in zip(pad, spatial))]
    return total
