"""Decode each volume once into uncompressed .npy files, memory-mapped afterwards.

Per volume the cache holds the image, the label, the flat indices of surface
voxels (for foreground oversampling) and the intensity statistics used to
normalise it. Entries are keyed by the source files' size and mtime, so an edited
TIFF is decoded again. Writes go to a temporary name and are renamed into place,
so a killed run never leaves a half-written entry behind.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from .io import read_volume
from .layout import VolumeRef

CACHE_VERSION = 1
VALID_LABELS = (0, 1, 2)


@dataclass
class CachedVolume:
    id: str
    image: np.ndarray  # uint8, memory-mapped
    label: np.ndarray | None  # uint8, memory-mapped
    foreground: np.ndarray  # int64 flat indices of label == 1, memory-mapped
    mean: float  # intensity statistics on the [0, 1] scale
    std: float
    entry: Path | None = None  # the cache folder it was opened from

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.image.shape)

    @classmethod
    def open(cls, entry: Path) -> "CachedVolume":
        meta = json.loads((entry / "meta.json").read_text())
        return cls(
            meta["id"],
            np.load(entry / "image.npy", mmap_mode="r"),
            np.load(entry / "label.npy", mmap_mode="r") if meta["has_label"] else None,
            np.load(entry / "foreground.npy", mmap_mode="r"),
            meta["mean"],
            meta["std"],
            entry,
        )

    def __reduce__(self):
        # DataLoader workers started by spawn or forkserver (macOS, Python >= 3.14) pickle
        # the dataset: send the folder and map the files again, never the voxels
        if self.entry is None:
            return super().__reduce__()
        return (CachedVolume.open, (self.entry,))


def intensity_stats(image: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of a volume on the [0, 1] scale, from a strided sample."""
    step = max(1, round((image.size / 2_000_000) ** (1 / 3)))
    sample = np.asarray(image[::step, ::step, ::step], dtype=np.float32) / 255.0
    return float(sample.mean()), float(max(sample.std(), 1e-3))


def check_label(label: np.ndarray, image_shape: tuple, path: Path) -> None:
    if label.shape != tuple(image_shape):
        raise DataError(f"{path}: label shape {label.shape} differs from its image {tuple(image_shape)}; re-export the pair")
    bad = np.setdiff1d(np.unique(label), VALID_LABELS)
    if bad.size:
        raise DataError(f"{path}: label values {bad[:5].tolist()} outside {{0, 1, 2}}; labels must be 0 background, 1 surface, 2 unlabelled")


def _key(ref: VolumeRef) -> str:
    parts = [ref.id, str(CACHE_VERSION)]
    for path in (ref.image, ref.label):
        if path is not None:
            st = path.stat()
            parts += [str(path.resolve()), str(st.st_size), str(st.st_mtime_ns)]
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]


def _save_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        np.save(fh, arr)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class VolumeCache:
    def __init__(self, folder: str | Path, max_voxels: int):
        self.folder = Path(folder)
        self.max_voxels = max_voxels

    def load(self, ref: VolumeRef) -> CachedVolume:
        entry = self.folder / f"{ref.id}-{_key(ref)}"
        meta_path = entry / "meta.json"
        if not meta_path.is_file():
            self._build(ref, entry)
        return CachedVolume.open(entry)

    def _build(self, ref: VolumeRef, entry: Path) -> None:
        image = read_volume(ref.image, self.max_voxels)
        label = None
        if ref.label is not None:
            label = read_volume(ref.label, self.max_voxels)
            check_label(label, image.shape, ref.label)
        try:
            entry.mkdir(parents=True, exist_ok=True)
            _save_npy(entry / "image.npy", np.ascontiguousarray(image))
            foreground = np.zeros(0, np.int64)
            if label is not None:
                _save_npy(entry / "label.npy", np.ascontiguousarray(label))
                foreground = np.flatnonzero(label == 1).astype(np.int64)
            _save_npy(entry / "foreground.npy", foreground)
            mean, std = intensity_stats(image)
            meta = {"id": ref.id, "shape": list(image.shape), "has_label": label is not None, "mean": mean, "std": std}
            tmp = entry / "meta.json.tmp"
            tmp.write_text(json.dumps(meta))
            os.replace(tmp, entry / "meta.json")  # written last: its presence marks a complete entry
        except OSError as exc:
            raise DataError(f"{entry}: cannot write the volume cache ({exc.strerror}); free disk space or set data.cache_dir") from exc
