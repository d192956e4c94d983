"""Training losses: Dice + BCE under the ignore mask, skeleton recall, clDice, deep supervision."""
from .deep_supervision import deep_supervision_targets, deep_supervision_weights, downsample_label
from .dice_bce import masked_bce_dice
from .segmentation import segmentation_loss
from .skeleton import cldice_loss, skeleton_recall_loss, soft_skeleton, tubed_skeleton

__all__ = [
    "cldice_loss",
    "deep_supervision_targets",
    "deep_supervision_weights",
    "downsample_label",
    "masked_bce_dice",
    "segmentation_loss",
    "skeleton_recall_loss",
    "soft_skeleton",
    "tubed_skeleton",
]
