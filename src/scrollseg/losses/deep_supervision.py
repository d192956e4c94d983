"""Deep supervision: the weight of each output and the label at each output's resolution.

Weights follow nnU-Net: 1/2^i from the full-resolution output down, the coarsest output
weighted 0, normalised to sum 1.

Targets are pooled, not subsampled: a strided pick of every f-th voxel drops a
one-voxel-thick sheet whenever it falls between the picked planes, so the coarse heads
would learn that sheets vanish. Instead a cell of factor f is foreground (1) when any
voxel of its f^3 block is foreground (max-pool), ignored (2) when more than half the block
is ignored and none of it is foreground (average pool), else background (0). Both pools
run batched on the label's device and compose exactly (a max of maxima and a mean of
equal-sized means), so each scale is pooled from the previous one.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..constants import IGNORE_LABEL


def deep_supervision_weights(n: int) -> list[float]:
    """Weights of ``n`` outputs, full resolution first: 1/2^i, the coarsest 0 (when n > 1), normalised."""
    raw = [0.5**i for i in range(n)]
    if n > 1:
        raw[-1] = 0.0
    return [w / sum(raw) for w in raw]


def _pool_factors(shape: Sequence[int], target: Sequence[int]) -> tuple[int, ...]:
    if len(shape) != len(target) or any(t <= 0 or s % t for s, t in zip(shape, target)):
        raise ValueError(f"output shape {tuple(target)} does not divide the label shape {tuple(shape)}")
    return tuple(s // t for s, t in zip(shape, target))


def deep_supervision_targets(label: torch.Tensor, shapes: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """The label [B, 1, *S] pooled to each spatial shape in ``shapes`` (largest first, each dividing the previous)."""
    foreground = ignored = None  # made on first use: with one supervised output there is nothing to pool
    current = label
    targets = []
    for target_shape in shapes:
        factors = _pool_factors(current.shape[2:], target_shape)
        if any(f > 1 for f in factors):
            if foreground is None:
                foreground, ignored = (label == 1).float(), (label == IGNORE_LABEL).float()
            foreground = F.max_pool3d(foreground, factors, factors)
            ignored = F.avg_pool3d(ignored, factors, factors)
            current = torch.where(ignored > 0.5, IGNORE_LABEL, 0).to(label.dtype).masked_fill_(foreground > 0, 1)
        targets.append(current)
    return targets


def downsample_label(label: torch.Tensor, factor: int | Sequence[int]) -> torch.Tensor:
    """The label [B, 1, *S] at ``1/factor`` of its resolution (per axis when a sequence), by the rule above."""
    factors = (factor,) * 3 if isinstance(factor, int) else tuple(factor)
    if any(s % f for s, f in zip(label.shape[2:], factors)):
        raise ValueError(f"factor {factors} does not divide the label shape {tuple(label.shape[2:])}")
    return deep_supervision_targets(label, [tuple(s // f for s, f in zip(label.shape[2:], factors))])[0]
