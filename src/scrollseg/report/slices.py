"""Pictures of a volume: three orthogonal slices of the image, the label, the prediction
and its errors, and of the metric's error maps (see ``scrollseg.metrics.explain``).

Each slice goes through the voxel plane with the most foreground along its axis
(the label's surface, else the prediction, else the centre), so the picture shows data.
"""
from __future__ import annotations


import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..constants import IGNORE_LABEL
from ..metrics.explain import Explanation

SURFACE = (0.0, 0.8, 1.0)  # label 1
IGNORED = (0.75, 0.3, 0.9)  # label 2
PREDICTED = (1.0, 0.82, 0.0)
TRUE_POSITIVE = (0.1, 0.85, 0.3)
FALSE_POSITIVE = (1.0, 0.15, 0.15)
FALSE_NEGATIVE = (0.2, 0.4, 1.0)
SPLIT = (1.0, 0.55, 0.0)
MERGED = (0.95, 0.2, 0.85)
AXES = ("z", "y", "x")


def pick_slices(shape: tuple[int, ...], focus: np.ndarray | None) -> tuple[int, int, int]:
    """Per axis, the index whose plane holds the most ``focus`` voxels (the centre when none)."""
    if focus is None or not focus.any():
        return tuple(n // 2 for n in shape)
    return tuple(int(np.argmax(focus.sum(axis=tuple(a for a in range(3) if a != axis)))) for axis in range(3))


def _plane(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    return np.asarray(np.take(volume, index, axis=axis))


def _gray(image_plane: np.ndarray) -> np.ndarray:
    g = image_plane.astype(np.float32)
    lo, hi = np.percentile(g, (1, 99)) if g.size else (0.0, 1.0)
    g = np.clip((g - lo) / max(hi - lo, 1e-6), 0, 1)
    return np.repeat(g[..., None], 3, axis=2)


def _paint(rgb: np.ndarray, mask: np.ndarray, colour, alpha: float = 0.65) -> np.ndarray:
    rgb = rgb.copy()
    rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.asarray(colour, np.float32)
    return rgb


def _figure(rows: int, cols: int, title: str, header: float = 0.65) -> tuple[Figure, np.ndarray]:
    """Panels of 3 inches with fixed margins (a layout engine would double the drawing
    time); ``header`` inches above them hold the title and the column titles."""
    width, height = 3.0 * cols + 0.3, 3.0 * rows + header + 0.45
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
    fig.subplots_adjust(left=0.3 / width, right=1 - 0.05 / width, bottom=0.45 / height, top=1 - header / height, wspace=0.04, hspace=0.06)
    if title:
        fig.suptitle(title, fontsize=11, y=1 - 0.08 / (3.0 * rows + header + 0.45))
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def _legend(fig: Figure, entries: list[tuple[str, tuple]]) -> None:
    fig.legend(handles=[Patch(color=c, label=name) for name, c in entries], loc="lower center", ncol=len(entries), fontsize=8, frameon=False)


def volume_figure(image: np.ndarray, label: np.ndarray | None = None, pred: np.ndarray | None = None, title: str = "") -> Figure:
    """Rows: the three slices; columns: image, label (1 and 2), prediction, errors (with both)."""
    image = np.asarray(image)
    focus = (np.asarray(label) == 1) if label is not None else (np.asarray(pred) != 0) if pred is not None else None
    index = pick_slices(image.shape, focus)
    columns = ["image"] + (["label"] if label is not None else []) + (["prediction"] if pred is not None else [])
    columns += ["errors"] if label is not None and pred is not None else []
    fig, axes = _figure(3, len(columns), title)
    for axis in range(3):
        base = _gray(_plane(image, axis, index[axis]))
        lab = _plane(label, axis, index[axis]) if label is not None else None
        prd = _plane(pred, axis, index[axis]) != 0 if pred is not None else None
        panels = {"image": base}
        if lab is not None:
            panels["label"] = _paint(_paint(base, lab == 1, SURFACE), lab == IGNORE_LABEL, IGNORED, 0.35)
        if prd is not None:
            panels["prediction"] = _paint(base, prd, PREDICTED)
        if lab is not None and prd is not None:
            ignored = lab == IGNORE_LABEL
            err = _paint(base, ignored, IGNORED, 0.25)
            err = _paint(err, prd & (lab == 1), TRUE_POSITIVE, 0.5)
            err = _paint(err, prd & (lab == 0), FALSE_POSITIVE, 0.8)
            panels["errors"] = _paint(err, ~prd & (lab == 1), FALSE_NEGATIVE, 0.8)
        for col, name in enumerate(columns):
            axes[axis, col].imshow(np.clip(panels[name], 0, 1), interpolation="nearest")
            if axis == 0:
                axes[axis, col].set_title(name, fontsize=10)
            if col == 0:
                axes[axis, col].set_ylabel(f"{AXES[axis]} = {index[axis]}", fontsize=9)
    entries = [("surface (label 1)", SURFACE), ("unlabelled (2)", IGNORED)] if label is not None else []
    entries += [("prediction", PREDICTED)] if pred is not None else []
    if "errors" in columns:
        entries += [("true positive", TRUE_POSITIVE), ("false positive", FALSE_POSITIVE), ("false negative", FALSE_NEGATIVE)]
    if entries:
        _legend(fig, entries)
    return fig


def error_figure(image: np.ndarray | None, explanation: Explanation, title: str = "") -> Figure:
    """Rows: the three slices through the most errors; columns: surface Dice, VOI, Betti matching."""
    maps = explanation.maps()
    shape = maps["betti"].shape
    errors = (maps["surface_dice"] != 0) | (maps["voi"] != 0)
    index = pick_slices(shape, errors if errors.any() else explanation.voi.label_components > 0)
    background = np.asarray(image) if image is not None else (explanation.voi.label_components > 0).astype(np.uint8) * 80
    fig, axes = _figure(3, 3, title, header=0.95)
    peak = max(int(maps["betti"].max()), 1)
    for axis in range(3):
        k = index[axis]
        base = _gray(_plane(background, axis, k))
        surface, voi = _plane(maps["surface_dice"], axis, k), _plane(maps["voi"], axis, k)
        panels = [
            _paint(_paint(base, (surface & 1) != 0, FALSE_NEGATIVE, 0.85), (surface & 2) != 0, FALSE_POSITIVE, 0.85),
            _paint(_paint(base, (voi & 1) != 0, SPLIT, 0.7), (voi & 2) != 0, MERGED, 0.7),
        ]
        betti = _plane(maps["betti"], axis, k).astype(np.float32) / peak
        shade = 0.5 * betti[..., None]  # redder where the octant has more unmatched features
        panels.append(base * (1 - shade) + shade * np.asarray(FALSE_POSITIVE))
        for col, panel in enumerate(panels):
            axes[axis, col].imshow(np.clip(panel, 0, 1), interpolation="nearest")
        others = [a for a in range(3) if a != axis]
        for octant in explanation.betti.octants:
            lo, hi = octant["bounds"][axis]
            if lo <= k < hi and sum(octant["unmatched"]):
                (r0, r1), (c0, c1) = (octant["bounds"][a] for a in others)
                axes[axis, 2].text((c0 + c1) / 2, (r0 + r1) / 2, "/".join(str(u) for u in octant["unmatched"]), ha="center", va="center",
                                   fontsize=8, color="white", bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "lw": 0})
        axes[axis, 0].set_ylabel(f"{AXES[axis]} = {k}", fontsize=9)
    counts = explanation.counts()
    sd, voi = counts["surface_dice"], counts["voi"]
    axes[0, 0].set_title(f"surface Dice {explanation.surface.value:.3f}\nout of tolerance: {sd['missed_label_area'] + sd['extra_pred_area']:.0f}"
                         f" of {sd['label_area'] + sd['pred_area']:.0f} area", fontsize=9)
    axes[0, 1].set_title(f"VOI split {voi['split_bits']:.3f} / merge {voi['merge_bits']:.3f} bits\n"
                         f"{voi['split_label_components']} split, {voi['merged_pred_components']} merged components", fontsize=9)
    axes[0, 2].set_title("Betti: unmatched per octant (dim 0/1/2)\ntotal " + "/".join(str(u) for u in explanation.betti.unmatched), fontsize=9)
    _legend(fig, [("missed label surface", FALSE_NEGATIVE), ("extra predicted surface", FALSE_POSITIVE), ("split label component", SPLIT),
                  ("merged predicted component", MERGED)])
    return fig
