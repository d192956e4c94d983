"""``scrollseg score --explain``: per volume, the metric's error maps, their counts and a
picture of them (see ``scrollseg.metrics.explain``), in ``OUT/<id>/``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.io import read_volume
from ..metrics.explain import explain_volume, write_explanation
from .plots import save_figure
from .slices import error_figure


@dataclass(frozen=True)
class ExplainInto:
    """Called with ``(id, label, pred)`` for each scored volume (picklable, for scoring workers)."""

    folder: Path
    images: Path | None = None  # folder of <id>.tif images drawn under the maps

    @classmethod
    def beside_labels(cls, folder: Path | str, labels: Path | str) -> "ExplainInto":
        """Images from the labels' sibling folder (train_labels -> train_images) where there is one."""
        labels = Path(labels)
        images = labels.with_name(labels.name.replace("labels", "images"))
        return cls(Path(folder), images if images != labels and images.is_dir() else None)

    def __call__(self, vid: str, label: np.ndarray, pred: np.ndarray) -> None:
        out = self.folder / vid
        explanation = explain_volume(label, pred)
        write_explanation(out, explanation)
        image_path = self.images / f"{vid}.tif" if self.images else None
        image = read_volume(image_path) if image_path is not None and image_path.is_file() else None
        if image is not None and image.shape != label.shape:
            image = None
        save_figure(error_figure(image, explanation, f"{vid}: where the score loses points"), out / "errors.png")
