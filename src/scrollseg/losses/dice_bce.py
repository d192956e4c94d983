"""Dice + binary cross-entropy of one output under the ignore mask.

Voxels labelled ``IGNORE_LABEL`` contribute nothing: they are left out of the BCE mean
and of the Dice sums, so their logits get no gradient. The Dice is a batch Dice (sums
over the whole batch), as nnU-Net uses for 3D patches.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..constants import IGNORE_LABEL


def split_label(label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float foreground (label 1) and valid (not ignored) masks of a label [B, 1, ...]."""
    return (label == 1).float(), (label != IGNORE_LABEL).float()


def masked_bce_dice(logits: torch.Tensor, label: torch.Tensor, bce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1e-5) -> torch.Tensor:
    """``bce_weight * BCE + dice_weight * (1 - Dice)``; ``logits`` float [B, 1, ...], ``label`` uint8 [B, 1, ...] with 0, 1, 2."""
    logits = logits.float()
    target, valid = split_label(label)
    # clamp instead of a branch: no host sync, and a fully ignored batch gives 0 with its graph kept (DDP)
    bce = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * valid).sum() / valid.sum().clamp(min=1.0)
    prob = torch.sigmoid(logits) * valid
    intersection = (prob * target).sum()
    dice = 1.0 - (2.0 * intersection + smooth) / (prob.sum() + target.sum() + smooth)
    return bce_weight * bce + dice_weight * dice
