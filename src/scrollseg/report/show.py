"""``scrollseg show``: the slice picture of any volume file, with its label and a prediction
(a .tif, a submission zip's member as ``submission.zip:ID``, or a zip holding the volume's id)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.io import read_volume
from ..errors import DataError
from ..metrics.evaluate import PredictionSource
from .plots import save_figure
from .slices import volume_figure


def read_prediction(spec: str, vid: str) -> np.ndarray:
    """A prediction from ``file.tif``, ``submission.zip:ID`` or ``submission.zip`` (member ``vid``)."""
    path, member = spec.rsplit(":", 1) if ".zip:" in spec else (spec, "")
    source_path = Path(path)
    if source_path.suffix.lower() != ".zip":
        return read_volume(source_path)
    source = PredictionSource(source_path)
    wanted = member or vid
    if wanted not in source.members:
        raise DataError(f"{source_path}: no member {wanted}.tif; name it as {source_path}:ID (holds {', '.join(source.ids()[:5])} ...)")
    return source.read(wanted)


def show_volume(volume: Path | str, label: Path | str | None = None, pred: str | None = None, out: Path | str | None = None) -> Path:
    """Draw the three-slice picture of ``volume`` into ``out`` (default ``<id>.png``); returns the path."""
    volume = Path(volume)
    image = read_volume(volume)
    parts = {"label": read_volume(label) if label else None, "prediction": read_prediction(str(pred), volume.stem) if pred else None}
    for name, arr in parts.items():
        if arr is not None and arr.shape != image.shape:
            raise DataError(f"{volume}: the {name} has shape {arr.shape}, the image {image.shape}; give the files of one volume")
    out = Path(out) if out else Path(f"{volume.stem}.png")
    return save_figure(volume_figure(image, parts["label"], parts["prediction"], volume.stem), out)
