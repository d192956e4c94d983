"""Where a prediction loses points: the voxels behind each term of the leaderboard score.

- Surface Dice: the surfel cells of either surface that lie farther than the
  tolerance from the other surface. Their area over all surfel area is exactly
  1 - surface Dice; the maps mark the foreground voxels at those cells.
- VOI: the conditional entropies split into one share per cluster (each label
  component, or each predicted component, plus the background inside the union),
  summing exactly to the VOI split and merge. The maps mark label components
  that several predicted components share (split) and predicted components that
  cover several label components (merged).
- TopoScore: matched, predicted and label Betti counts per octant; the unmatched
  features p + g - 2m of the octants sum to those of the score.

The figures come from the same functions as the score, so they agree with it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cc3d
import numpy as np

from ..data.io import write_volume
from .leaderboard import TOLERANCE, VOI_ALPHA, WEIGHTS, prepare_masks
from .surface_dice import dilate_ball, foreground_box, surface_cells
from .topology import TopoCounts, octant_counts
from .voi import voi_score

LISTED_COMPONENTS = 50  # components named in counts.json, by share of the entropy


def _cell_voxels(cells: np.ndarray) -> np.ndarray:
    """Crop voxels that are corners of a marked cell (cell p spans crop voxels p - 1 and p)."""
    for axis in range(3):
        lo, hi = [slice(None)] * 3, [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        cells = cells[tuple(lo)] | cells[tuple(hi)]
    return cells


@dataclass
class SurfaceErrors:
    missed: np.ndarray  # label voxels at label surfels farther than the tolerance from the predicted surface
    extra: np.ndarray  # predicted voxels at predicted surfels farther than the tolerance from the label surface
    area_label: float
    area_pred: float
    area_missed: float
    area_extra: float
    cells_missed: int
    cells_extra: int

    @property
    def value(self) -> float:
        """The surface Dice these areas give."""
        total = self.area_label + self.area_pred
        if total == 0:
            return 1.0
        return float((self.area_label - self.area_missed + self.area_pred - self.area_extra) / total)


def surface_errors(gt: np.ndarray, pred: np.ndarray, tolerance: float = TOLERANCE) -> SurfaceErrors:
    missed, extra = np.zeros(gt.shape, bool), np.zeros(gt.shape, bool)
    if not gt.any() and not pred.any():
        return SurfaceErrors(missed, extra, 0.0, 0.0, 0.0, 0.0, 0, 0)
    lo, hi = foreground_box(gt, pred)
    border_gt, area_gt = surface_cells(gt, lo, hi)
    border_pred, area_pred = surface_cells(pred, lo, hi)
    far_gt = border_gt & ~dilate_ball(border_pred, tolerance)
    far_pred = border_pred & ~dilate_ball(border_gt, tolerance)
    crop = tuple(slice(a, b + 1) for a, b in zip(lo, hi))
    missed[crop] = _cell_voxels(far_gt) & gt[crop]
    extra[crop] = _cell_voxels(far_pred) & pred[crop]
    return SurfaceErrors(missed, extra, float(area_gt.sum()), float(area_pred.sum()), float(area_gt[far_gt[border_gt]].sum()),
                         float(area_pred[far_pred[border_pred]].sum()), int(far_gt.sum()), int(far_pred.sum()))


@dataclass
class VoiErrors:
    label_components: np.ndarray  # 26-connected components of the label, numbered from 1
    pred_components: np.ndarray
    split_bits: dict[int, float]  # label component (0: background inside the union) -> its share of H(pred | label)
    merge_bits: dict[int, float]  # predicted component (0: background inside the union) -> its share of H(label | pred)
    split_partners: dict[int, int]  # label component -> predicted components it overlaps
    merge_partners: dict[int, int]  # predicted component -> label components it overlaps

    @property
    def split(self) -> float:
        return float(sum(self.split_bits.values()))

    @property
    def merge(self) -> float:
        return float(sum(self.merge_bits.values()))

    @property
    def split_components(self) -> list[int]:
        """Label components that two or more predicted components share."""
        return sorted(c for c, n in self.split_partners.items() if n >= 2)

    @property
    def merged_components(self) -> list[int]:
        """Predicted components that cover two or more label components."""
        return sorted(c for c, n in self.merge_partners.items() if n >= 2)

    def map(self) -> np.ndarray:
        """uint8: 1 voxels of split label components, 2 of merged predicted ones, 3 both."""
        out = np.isin(self.label_components, self.split_components).astype(np.uint8)
        out |= np.isin(self.pred_components, self.merged_components).astype(np.uint8) << 1
        return out


def _shares(cluster: np.ndarray, other: np.ndarray, joint: np.ndarray, n: int) -> tuple[dict[int, float], dict[int, int]]:
    """Each cluster's share sum_j n_ij / n log2(n_i / n_ij) of the conditional entropy, and how
    many foreground clusters of the other side it meets."""
    ids, inverse = np.unique(cluster, return_inverse=True)
    size = np.bincount(inverse, weights=joint)
    bits = np.bincount(inverse, weights=joint / n * np.log2(size[inverse] / joint))
    partners = np.bincount(inverse, weights=(other > 0).astype(np.float64))
    return ({int(c): float(b) for c, b in zip(ids, bits)}, {int(c): int(p) for c, p in zip(ids, partners) if c > 0})


def voi_errors(gt: np.ndarray, pred: np.ndarray, connectivity: int = 26) -> VoiErrors:
    lab_gt = cc3d.connected_components(gt, connectivity=connectivity).astype(np.int64)
    lab_pred = cc3d.connected_components(pred, connectivity=connectivity).astype(np.int64)
    union = gt | pred
    n = int(union.sum())
    if n == 0:
        return VoiErrors(lab_gt, lab_pred, {}, {}, {}, {})
    in_gt, in_pred = lab_gt[union], lab_pred[union]
    width = int(in_pred.max()) + 1
    pairs, joint = np.unique(in_gt * width + in_pred, return_counts=True)
    g, p = pairs // width, pairs % width
    split_bits, split_partners = _shares(g, p, joint.astype(np.float64), n)
    merge_bits, merge_partners = _shares(p, g, joint.astype(np.float64), n)
    return VoiErrors(lab_gt, lab_pred, split_bits, merge_bits, split_partners, merge_partners)


@dataclass
class BettiErrors:
    shape: tuple[int, int, int]
    octants: list[dict]  # per octant: bounds [[lo, hi] x 3], matched, predicted, label (triples over dimensions 0..2)

    @property
    def counts(self) -> TopoCounts:
        """The score's matched / predicted / label totals per dimension."""
        total = np.zeros((3, 3), np.int64)
        for o in self.octants:
            total += np.array([o["matched"], o["predicted"], o["label"]], np.int64).T
        return TopoCounts(tuple(tuple(int(v) for v in row) for row in total))

    @property
    def unmatched(self) -> list[int]:
        """Unmatched features per dimension, p + g - 2m summed over the octants."""
        return [sum(o["unmatched"][k] for o in self.octants) for k in range(3)]

    def map(self) -> np.ndarray:
        """uint8: each voxel holds its octant's number of unmatched features (at most 255)."""
        out = np.zeros(self.shape, np.uint8)
        for o in self.octants:
            out[tuple(slice(lo, hi) for lo, hi in o["bounds"])] = min(sum(o["unmatched"]), 255)
        return out


def betti_errors(gt: np.ndarray, pred: np.ndarray) -> BettiErrors:
    octants = []
    for sl, m, p, g in octant_counts(gt, pred):
        octants.append({"bounds": [[s.start, s.stop] for s in sl], "matched": list(m), "predicted": list(p), "label": list(g),
                        "unmatched": [p[k] + g[k] - 2 * m[k] for k in range(3)]})
    return BettiErrors(tuple(gt.shape), octants)


@dataclass
class Explanation:
    surface: SurfaceErrors
    voi: VoiErrors
    betti: BettiErrors

    def scores(self) -> dict:
        """The leaderboard score and its parts, computed from the explanation's own figures."""
        topo = self.betti.counts.score
        vs = voi_score(self.voi.split + self.voi.merge, VOI_ALPHA)
        raw = WEIGHTS["topo"] * topo + WEIGHTS["surface_dice"] * self.surface.value + WEIGHTS["voi_score"] * vs
        return {"leaderboard": float(min(max(raw, 0.0), 1.0)), "topo": topo, "surface_dice": self.surface.value, "voi_score": vs,
                "voi_split": self.voi.split, "voi_merge": self.voi.merge}

    def counts(self) -> dict:
        s, v, b = self.surface, self.voi, self.betti

        def listed(bits: dict[int, float], partners: dict[int, int], labels: np.ndarray) -> list[dict]:
            top = sorted((c for c in bits if c > 0 and bits[c] > 0), key=lambda c: -bits[c])[:LISTED_COMPONENTS]
            sizes = np.bincount(labels.ravel())
            return [{"component": c, "voxels": int(sizes[c]), "bits": bits[c], "overlaps": partners[c]} for c in top]

        return {
            "scores": self.scores(),
            "surface_dice": {"label_area": s.area_label, "pred_area": s.area_pred, "missed_label_area": s.area_missed,
                             "extra_pred_area": s.area_extra, "missed_label_cells": s.cells_missed, "extra_pred_cells": s.cells_extra,
                             "missed_label_voxels": int(s.missed.sum()), "extra_pred_voxels": int(s.extra.sum())},
            "voi": {"split_bits": v.split, "merge_bits": v.merge,
                    "split_bits_background": v.split_bits.get(0, 0.0), "merge_bits_background": v.merge_bits.get(0, 0.0),
                    "split_label_components": len(v.split_components), "merged_pred_components": len(v.merged_components),
                    "label_components": int(v.label_components.max()), "pred_components": int(v.pred_components.max()),
                    "split_by_component": listed(v.split_bits, v.split_partners, v.label_components),
                    "merge_by_component": listed(v.merge_bits, v.merge_partners, v.pred_components)},
            "betti": {"matched_predicted_label": [list(t) for t in b.counts.counts], "unmatched": b.unmatched,
                      "octants": b.octants},
        }

    def maps(self) -> dict[str, np.ndarray]:
        """uint8 volumes: surface_dice (1 missed label surface, 2 extra predicted surface), voi
        (1 split label component, 2 merged predicted component), betti (unmatched features of the octant)."""
        return {"surface_dice": self.surface.missed.astype(np.uint8) | (self.surface.extra.astype(np.uint8) << 1),
                "voi": self.voi.map(), "betti": self.betti.map()}


def explain_volume(label: np.ndarray, pred: np.ndarray) -> Explanation:
    """The explanation of ``score_volume(label, pred)``; label 2 is ignored in both."""
    gt, pr = prepare_masks(np.asarray(label), np.asarray(pred))
    return Explanation(surface_errors(gt, pr), voi_errors(gt, pr), betti_errors(gt, pr))


def write_explanation(folder: Path | str, explanation: Explanation) -> dict:
    """``counts.json`` and the maps (``surface_dice.tif``, ``voi.tif``, ``betti.tif``) into ``folder``; returns the counts."""
    folder = Path(folder)
    counts = explanation.counts()
    folder.mkdir(parents=True, exist_ok=True)
    for name, volume in explanation.maps().items():
        write_volume(folder / f"{name}.tif", volume)
    (folder / "counts.json").write_text(json.dumps(counts, indent=1))
    return counts
