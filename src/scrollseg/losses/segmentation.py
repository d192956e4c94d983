"""The training loss: Dice + BCE over the deep-supervision outputs, plus the skeleton terms at full resolution.

``loss = sum_i w_i * (bce_weight * BCE_i + dice_weight * Dice_i)
        + skeleton_recall_weight * SkeletonRecall_0 + cldice_weight * clDice_0``

with ``w_i`` the deep-supervision weights (they sum to 1) and index 0 the
full-resolution output. The skeleton terms are about connectivity at the resolution that
is predicted and scored; at coarse scales the pooled targets already keep every sheet,
and a skeleton per scale would multiply their cost for little gain, so they are taken at
full resolution only, with the label's skeleton computed once.
"""
from __future__ import annotations

import torch

from ..config import LossConfig
from .deep_supervision import deep_supervision_targets, deep_supervision_weights
from .dice_bce import masked_bce_dice
from .skeleton import cldice_loss, skeleton_recall_loss


def segmentation_loss(outputs: torch.Tensor | list[torch.Tensor], label: torch.Tensor, cfg: LossConfig | None = None) -> torch.Tensor:
    """Loss of logits ``outputs`` ([B, 1, ...], or such a list full resolution first) against ``label`` (uint8 0/1/2)."""
    cfg = cfg or LossConfig()
    outputs = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
    weights = deep_supervision_weights(len(outputs))
    used = [(w, out) for w, out in zip(weights, outputs) if w > 0]
    targets = deep_supervision_targets(label, [out.shape[2:] for _, out in used])
    total = sum(w * masked_bce_dice(out, target, cfg.bce_weight, cfg.dice_weight) for (w, out), target in zip(used, targets))
    # outputs weighted 0 still join the graph so DDP sees a (zero) gradient for their heads
    total = total + sum(out.float().sum() * 0.0 for w, out in zip(weights, outputs) if w == 0)
    if cfg.skeleton_recall_weight > 0:
        total = total + cfg.skeleton_recall_weight * skeleton_recall_loss(outputs[0], label)
    if cfg.cldice_weight > 0:
        total = total + cfg.cldice_weight * cldice_loss(outputs[0], label, cfg.cldice_iterations)
    return total
