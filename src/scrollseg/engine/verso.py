"""Background that training ignores: label-0 voxels on the verso side of their sheet.

With ``inference.recto_context`` on, a prediction keeps only the voxels on the recto side
of each sheet (``inference.recto``), whatever the network said on the other side. A
network trained for minutes on the CPU finds the sheets but cannot yet tell their faces
apart (docs/quality.md); the loss on the verso face's background then pulls it between
marking both faces and marking neither. ``data.ignore_verso_background`` leaves those
voxels out of the loss, so the network learns the sheets' faces and the recto step, which
drops the verso side at inference anyway, chooses the face. Validation keeps its labels.

The side comes from the image alone, with the inference step's own function and context,
once per training volume; it is kept beside the volume's cache entry as a compressed
chunk file (``chunkstore``: a bool mask shrinks about 50x) and read patch by patch.
"""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from ..inference.recto import recto_side
from ..progress import Progress
from ..data.chunkstore import ChunkedArray, write_chunked
from ..data.volumes import ArrayRegion, CachedVolume

PARALLEL_FROM_VOLUMES = 4  # fewer are computed faster than worker processes start


def mask_path(volume: CachedVolume, context: float) -> Path:
    return volume.entry / f"verso-{context:g}.chunks"


def verso_mask(image: np.ndarray, context: float) -> np.ndarray:
    """uint8 1 on the voxels on the verso side of their sheet."""
    return (~recto_side(np.asarray(image), context)).view(np.uint8)


def _write_mask(volume: CachedVolume, context: float) -> None:
    write_chunked(mask_path(volume, context), verso_mask(volume.image, context))  # atomic: a killed build leaves no half mask


def ignore_verso_background(volumes: list[CachedVolume], context: float, workers: int = 1, progress: bool = True) -> None:
    """Make each volume's patch reads ignore its verso-side background: masks missing from
    the cache entries are computed (in ``workers`` processes), then attached. Volumes
    without an entry (in memory) get their mask in memory."""
    if context <= 0:
        raise ValueError("data.ignore_verso_background needs inference.recto_context > 0: it ignores what the recto step drops")
    on_disk = [v for v in volumes if v.entry != Path()]
    todo = [v for v in on_disk if not mask_path(v, context).exists()]
    bar = Progress(total=len(todo), desc="verso masks", unit="vol", enabled=progress and bool(todo), leave=False)
    try:
        if workers > 1 and len(todo) >= PARALLEL_FROM_VOLUMES:
            with ProcessPoolExecutor(min(workers, len(todo))) as pool:
                for future in [pool.submit(_write_mask, v, context) for v in todo]:
                    future.result()
                    bar.update()
        else:
            for v in todo:
                _write_mask(v, context)
                bar.update()
    finally:
        bar.close()
    for v in volumes:
        v.ignored = ChunkedArray(mask_path(v, context)) if v in on_disk else ArrayRegion(verso_mask(v.image, context))
