"""The leaderboard score of one volume: 0.30 TopoScore + 0.35 SurfaceDice@2 + 0.35 VOI score."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..constants import IGNORE_LABEL
from .surface_dice import surface_dice
from .topology import TopoCounts, topo_counts
from .voi import variation_of_information, voi_score

WEIGHTS = {"topo": 0.30, "surface_dice": 0.35, "voi_score": 0.35}
TOLERANCE = 2.0
VOI_ALPHA = 0.3


@dataclass(frozen=True)
class VolumeScore:
    leaderboard: float
    topo: float
    surface_dice: float
    voi_score: float
    voi_split: float
    voi_merge: float
    topo_counts: TopoCounts

    @property
    def voi_total(self) -> float:
        return self.voi_split + self.voi_merge

    def as_dict(self) -> dict:
        return {
            "leaderboard": self.leaderboard,
            "topo": self.topo,
            "surface_dice": self.surface_dice,
            "voi_score": self.voi_score,
            "voi_total": self.voi_total,
            "voi_split": self.voi_split,
            "voi_merge": self.voi_merge,
            "topo_f1": {str(k): self.topo_counts.f1(k) for k in range(3)},
            "topo_counts": {str(k): list(self.topo_counts.counts[k]) for k in range(3)},
        }


def prepare_masks(label: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (gt, pred) with the ignore label cleared in both; shapes must match."""
    if label.shape != pred.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from label shape {label.shape}")
    if label.ndim != 3:
        raise ValueError(f"expected 3D volumes, got shape {label.shape}")
    keep = label != IGNORE_LABEL
    return (label != 0) & keep, (pred != 0) & keep


def score_volume(label: np.ndarray, pred: np.ndarray) -> VolumeScore:
    gt, pr = prepare_masks(np.asarray(label), np.asarray(pred))
    counts = topo_counts(gt, pr)
    sd = surface_dice(gt, pr, TOLERANCE)
    voi = variation_of_information(gt, pr)
    vs = voi_score(voi.total, VOI_ALPHA)
    raw = WEIGHTS["topo"] * counts.score + WEIGHTS["surface_dice"] * sd + WEIGHTS["voi_score"] * vs
    return VolumeScore(
        leaderboard=float(min(max(raw, 0.0), 1.0)),
        topo=counts.score,
        surface_dice=sd,
        voi_score=vs,
        voi_split=voi.split,
        voi_merge=voi.merge,
        topo_counts=counts,
    )
