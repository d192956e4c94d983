"""Skeleton losses for thin sheets: skeleton recall (Kirchhoff et al., ECCV 2024) and clDice (Shit et al., CVPR 2021).

Both are built from min/max pooling so they run batched on the training device, after
augmentation, with no per-sample CPU work in the step.

Skeleton recall scores how much of the label's *tubed skeleton* the predicted
probability covers: ``1 - sum(p * S) / sum(S)``. The reference implementation
skeletonises each label on the CPU (scikit-image), dilates the skeleton twice with the
6-neighbour cross and keeps it inside the label. Here the skeleton is the morphological
(Lantuéjoul) skeleton, ``union_k erode^k(X) minus open(erode^k(X))`` with the 6-neighbour
cross, plus the core left after the last erosion so that a region thicker than the
levels reach keeps a target; then the same tube. It is not homotopy-preserving like a
thinning, but the tube makes that moot for our labels: a surface sheet is about two
voxels thick, so a two-voxel tube around any medial layer inside it, kept inside the
label, is the whole sheet. Only thick regions (touching sheets, blobs) shrink, to a
five-voxel band around their middle layer (up to 9 voxels thick with the default 3
levels; thicker ones keep their core plus the tube), as the tube does in the
reference. A thinning would need simple-point tests per voxel; this costs a few pooling
passes on the label, without gradients.

clDice compares soft skeletons of the prediction and of the label (iterative soft
erosion by a cross-shaped min-pool, dilation by a 3^3 max-pool, as in the paper):
``1 - 2 Tprec Tsens / (Tprec + Tsens)``.

Ignored voxels (label 2) count as background in every skeleton and the prediction is
zeroed there before skeletonising, so their logits change nothing.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .dice_bce import split_label

_AXIS_KERNELS = ((3, 1, 1), (1, 3, 1), (1, 1, 3))
_AXIS_PADDING = ((1, 0, 0), (0, 1, 0), (0, 0, 1))


def _dilate_cross(x: torch.Tensor) -> torch.Tensor:
    """Max over each voxel and its six face neighbours."""
    z, y, w = (F.max_pool3d(x, k, 1, p) for k, p in zip(_AXIS_KERNELS, _AXIS_PADDING))
    return torch.maximum(torch.maximum(z, y), w)


def _erode_cross(x: torch.Tensor) -> torch.Tensor:
    """Min over each voxel and its six face neighbours (outside the volume does not erode)."""
    return -_dilate_cross(-x)


def _dilate_cube(x: torch.Tensor) -> torch.Tensor:
    """Max over the 3^3 neighbourhood."""
    return F.max_pool3d(x, 3, 1, 1)


def _skeleton(x: torch.Tensor, iterations: int, dilate: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(skeleton, core): the (soft) skeleton over ``iterations + 1`` erosion levels and the image eroded once more.

    The loop is clDice's ``soft_skel`` with each erosion computed once (the reference
    erodes every level twice, once for the opening and once for the next level).
    """
    eroded = _erode_cross(x)
    skeleton = F.relu(x - dilate(eroded))
    for _ in range(iterations):
        x = eroded
        eroded = _erode_cross(x)
        delta = F.relu(x - dilate(eroded))
        skeleton = skeleton + F.relu(delta - skeleton * delta)  # soft union
    return skeleton, eroded


def soft_skeleton(x: torch.Tensor, iterations: int) -> torch.Tensor:
    """clDice's differentiable soft skeleton of probabilities [B, 1, D, H, W]; exact on 0/1 input."""
    return _skeleton(x, iterations, _dilate_cube)[0]


@torch.no_grad()
def tubed_skeleton(foreground: torch.Tensor, levels: int = 3, tube: int = 2) -> torch.Tensor:
    """Skeleton-recall target of a 0/1 float foreground [B, 1, D, H, W]: the cross skeleton, dilated ``tube`` times, inside the foreground."""
    skeleton, core = _skeleton(foreground, levels, _dilate_cross)
    target = torch.maximum(skeleton, core)
    for _ in range(tube):
        target = _dilate_cross(target)
    return target * foreground


def skeleton_recall_loss(logits: torch.Tensor, label: torch.Tensor, skeleton: torch.Tensor | None = None, smooth: float = 1e-5) -> torch.Tensor:
    """``1 - soft recall`` of the label's tubed skeleton (batch sums); pass ``skeleton`` to reuse a computed target.

    The skeleton lies inside the foreground, so ignored voxels are outside it and their
    logits carry no weight.
    """
    if skeleton is None:
        skeleton = tubed_skeleton(split_label(label)[0])
    prob = torch.sigmoid(logits.float())
    return 1.0 - ((prob * skeleton).sum() + smooth) / (skeleton.sum() + smooth)


def cldice_loss(logits: torch.Tensor, label: torch.Tensor, iterations: int = 3, smooth: float = 1.0) -> torch.Tensor:
    """``1 - clDice`` of the sigmoid of ``logits`` against the label (batch sums), under the ignore mask."""
    foreground, valid = split_label(label)
    prob = torch.sigmoid(logits.float()) * valid
    with torch.no_grad():
        label_skeleton = soft_skeleton(foreground, iterations)
    prediction_skeleton = soft_skeleton(prob, iterations)  # zero where prob is zero, so where ignored
    precision = ((prediction_skeleton * foreground).sum() + smooth) / (prediction_skeleton.sum() + smooth)
    sensitivity = ((label_skeleton * prob).sum() + smooth) / (label_skeleton.sum() + smooth)
    return 1.0 - 2.0 * precision * sensitivity / (precision + sensitivity)
