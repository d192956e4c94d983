"""Skeleton losses for thin sheets: skeleton recall (Kirchhoff et al., ECCV 2024) and clDice (Shit et al., CVPR 2021).

Both run batched on the training device, after augmentation, with no per-sample CPU
work in the step: the prediction's soft skeleton by min/max pooling (differentiable),
the label's skeletons by boolean shifts (exact on 0/1 volumes, no gradients needed, a
few memory passes each).

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
reference. A thinning would need simple-point tests per voxel; this costs a few dozen
boolean passes over the label.

clDice compares soft skeletons of the prediction and of the label (iterative soft
erosion by a cross-shaped min-pool, dilation by a 3^3 max-pool, as in the paper):
``1 - 2 Tprec Tsens / (Tprec + Tsens)``.

Ignored voxels (label 2) count as background in every skeleton and the prediction is
zeroed there before skeletonising, so their logits change nothing.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .dice_bce import split_label

_AXIS_KERNELS = ((3, 1, 1), (1, 3, 1), (1, 1, 3))
_AXIS_PADDING = ((1, 0, 0), (0, 1, 0), (0, 0, 1))
_SPATIAL = (2, 3, 4)


def _erode_cross(x: torch.Tensor) -> torch.Tensor:
    """Soft erosion: min over each voxel and its six face neighbours (outside the volume does not erode)."""
    z, y, w = (-F.max_pool3d(-x, k, 1, p) for k, p in zip(_AXIS_KERNELS, _AXIS_PADDING))
    return torch.minimum(torch.minimum(z, y), w)


def _dilate_cube(x: torch.Tensor) -> torch.Tensor:
    """Soft dilation: max over the 3^3 neighbourhood."""
    return F.max_pool3d(x, 3, 1, 1)


def soft_skeleton(x: torch.Tensor, iterations: int) -> torch.Tensor:
    """clDice's differentiable soft skeleton of probabilities [B, 1, D, H, W].

    The loop is the paper's ``soft_skel`` with each erosion computed once (the reference
    erodes every level twice, once for the opening and once for the next level).
    """
    eroded = _erode_cross(x)
    skeleton = F.relu(x - _dilate_cube(eroded))
    for _ in range(iterations):
        x = eroded
        eroded = _erode_cross(x)
        delta = F.relu(x - _dilate_cube(eroded))
        skeleton = skeleton + F.relu(delta - skeleton * delta)  # soft union
    return skeleton


# Boolean morphology for targets: shifted in-place and/or, several times cheaper than pooling floats on a CPU.
def _combine_neighbours(x: torch.Tensor, dims: tuple[int, ...], op) -> torch.Tensor:
    """``x`` combined by ``op`` (in-place and/or) with its two neighbours along each of ``dims``; the outside is neutral."""
    out = x.clone()
    for d in dims:
        n = x.shape[d]
        op(out.narrow(d, 1, n - 1), x.narrow(d, 0, n - 1))
        op(out.narrow(d, 0, n - 1), x.narrow(d, 1, n - 1))
    return out


def _binary_erode_cross(x: torch.Tensor) -> torch.Tensor:
    return _combine_neighbours(x, _SPATIAL, torch.Tensor.bitwise_and_)


def _binary_dilate_cross(x: torch.Tensor) -> torch.Tensor:
    return _combine_neighbours(x, _SPATIAL, torch.Tensor.bitwise_or_)


def _binary_dilate_cube(x: torch.Tensor) -> torch.Tensor:
    for d in _SPATIAL:  # the cube is separable
        x = _combine_neighbours(x, (d,), torch.Tensor.bitwise_or_)
    return x


def binary_skeleton(x: torch.Tensor, iterations: int, dilate=_binary_dilate_cube) -> tuple[torch.Tensor, torch.Tensor]:
    """(skeleton, core) of a boolean volume: ``soft_skeleton``'s loop on 0/1 values, and the image eroded once more.

    With the default cube dilation the skeleton equals ``soft_skeleton`` of the same
    volume as floats; the tubed target passes the cross, which makes each opening a true
    opening (Lantuéjoul's skeleton).
    """
    eroded = _binary_erode_cross(x)
    skeleton = x & ~dilate(eroded)
    for _ in range(iterations):
        x = eroded
        eroded = _binary_erode_cross(x)
        skeleton |= x & ~dilate(eroded)
    return skeleton, eroded


def tubed_skeleton(foreground: torch.Tensor, levels: int = 3, tube: int = 2) -> torch.Tensor:
    """Skeleton-recall target (float 0/1) of a foreground [B, 1, D, H, W]: the cross skeleton and core, dilated ``tube`` times, inside the foreground."""
    foreground = foreground.bool()
    skeleton, core = binary_skeleton(foreground, levels, _binary_dilate_cross)
    target = skeleton | core
    for _ in range(tube):
        target = _binary_dilate_cross(target)
    return (target & foreground).float()


def skeleton_recall_loss(logits: torch.Tensor, label: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """``1 - soft recall`` of the label's tubed skeleton by the sigmoid of ``logits`` (batch sums).

    The skeleton lies inside the foreground, so ignored voxels are outside it and their
    logits carry no weight.
    """
    skeleton = tubed_skeleton(label == 1)
    prob = torch.sigmoid(logits.float())
    return 1.0 - ((prob * skeleton).sum() + smooth) / (skeleton.sum() + smooth)


def cldice_loss(logits: torch.Tensor, label: torch.Tensor, iterations: int = 3, smooth: float = 1.0) -> torch.Tensor:
    """``1 - clDice`` of the sigmoid of ``logits`` against the label (batch sums), under the ignore mask."""
    foreground, valid = split_label(label)
    prob = torch.sigmoid(logits.float()) * valid
    label_skeleton = binary_skeleton(label == 1, iterations)[0].float()
    prediction_skeleton = soft_skeleton(prob, iterations)  # zero where prob is zero, so where ignored
    precision = ((prediction_skeleton * foreground).sum() + smooth) / (prediction_skeleton.sum() + smooth)
    sensitivity = ((label_skeleton * prob).sum() + smooth) / (label_skeleton.sum() + smooth)
    return 1.0 - 2.0 * precision * sensitivity / (precision + sensitivity)
