"""Dice + binary cross-entropy under the ignore mask, with deep supervision.

Voxels labelled 2 contribute nothing: they are masked out of the BCE mean and of
the Dice sums. Deep-supervision outputs are weighted 1/2^i (normalised), each
against the label subsampled to its resolution.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .constants import IGNORE_LABEL


def masked_bce_dice(logits: torch.Tensor, label: torch.Tensor, bce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1e-5) -> torch.Tensor:
    """``logits`` float [B, 1, ...]; ``label`` uint8 [B, 1, ...] with 0, 1 and 2 (ignored)."""
    logits = logits.float()
    valid = (label != IGNORE_LABEL).float()
    target = (label == 1).float()
    n_valid = valid.sum()
    if n_valid == 0:
        return logits.sum() * 0.0  # keeps the graph for DDP when a batch is fully ignored
    bce = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * valid).sum() / n_valid
    prob = torch.sigmoid(logits) * valid
    intersection = (prob * target).sum()
    dice = 1.0 - (2.0 * intersection + smooth) / (prob.sum() + target.sum() + smooth)
    return bce_weight * bce + dice_weight * dice


def subsample_label(label: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    factors = [s // t for s, t in zip(label.shape[2:], shape)]
    return label[(slice(None), slice(None)) + tuple(slice(f // 2, None, f) for f in factors)]


def deep_supervision_weights(n: int) -> list[float]:
    raw = [0.5**i for i in range(n)]
    return [w / sum(raw) for w in raw]


def segmentation_loss(outputs: torch.Tensor | list[torch.Tensor], label: torch.Tensor, bce_weight: float = 1.0, dice_weight: float = 1.0) -> torch.Tensor:
    if isinstance(outputs, torch.Tensor):
        return masked_bce_dice(outputs, label, bce_weight, dice_weight)
    total = outputs[0].new_zeros((), dtype=torch.float32)
    for weight, out in zip(deep_supervision_weights(len(outputs)), outputs):
        total = total + weight * masked_bce_dice(out, subsample_label(label, out.shape[2:]), bce_weight, dice_weight)
    return total
