"""Synthetic scroll chunks in the competition layout.

Each chunk is a piece of a wound scroll: papyrus sheets on an Archimedean spiral
around a tilted axis, warped by smooth random fields, with varying thickness and
winding pitch, so neighbouring sheets sometimes touch. The label is the recto face
(the ~2-voxel layer on the side toward the scroll's centre), traced only on some
windings; all other voxels are 2 (unlabelled), as in the real annotations. The
image has fibre texture (horizontal on a sheet's recto half, vertical on its verso half,
as papyrus has), CT-like blur, a bias field, bright inclusions and noise.
To find the recto face a model has to use the fibre direction, the curvature and the
context, not the intensity alone: a threshold finds whole sheets, and merges touching ones.
"""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import DataError, ScrollsegError
from .io import write_volume

SHAPES = [(96, 96, 96), (80, 112, 96), (112, 96, 80), (96, 80, 112)]
# what a dataset folder holds; --force replaces only folders made of these
DATASET_ENTRIES = {f"{split}{part}" for split in ("train", "test") for part in (".csv", "_images", "_labels")}


def smooth_field(shape, rng: np.random.Generator, scale: float, coarse: int = 6) -> np.ndarray:
    """A smooth random field in about [-1, 1], varying over ``scale`` voxels."""
    grid = [max(2, int(np.ceil(s / scale)) + 1) for s in shape]
    noise = rng.standard_normal(grid).astype(np.float32)
    zoom = [s / g for s, g in zip(shape, grid)]
    field = ndimage.zoom(noise, zoom, order=1, mode="nearest")[: shape[0], : shape[1], : shape[2]]
    return field / (np.abs(field).max() + 1e-6)


def papyrus_fibres(recto_half: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fibre texture (zero mean, the same spread everywhere) with the scroll axis along z:
    horizontal fibres where ``recto_half``, vertical ones (along the axis) elsewhere."""
    shape = recto_half.shape
    horizontal = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), (0.6, 2.5, 2.5))
    vertical = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), (2.5, 0.6, 0.6))
    vertical *= horizontal.std() / vertical.std()
    return np.where(recto_half, horizontal, vertical)


def synth_chunk(shape, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8, label uint8) of one chunk."""
    d, h, w = shape
    z, y, x = np.meshgrid(*(np.arange(s, dtype=np.float32) for s in shape), indexing="ij", sparse=True)
    # scroll axis roughly along z, outside or near the edge of the chunk, slightly tilted
    angle = rng.uniform(0, 2 * np.pi)
    dist = rng.uniform(0.45, 1.1) * max(h, w)
    cy = h / 2 + dist * np.sin(angle) + rng.uniform(-0.15, 0.15) * (z - d / 2)
    cx = w / 2 + dist * np.cos(angle) + rng.uniform(-0.15, 0.15) * (z - d / 2)
    dy, dx = y - cy, x - cx
    radius = np.sqrt(dy * dy + dx * dx)
    theta = np.arctan2(dy, dx)
    pitch = rng.uniform(9.0, 13.0)
    warp = rng.uniform(2.0, 5.0) * smooth_field(shape, rng, 40) + 1.5 * smooth_field(shape, rng, 15)
    # compressed windings: the local pitch shrinks where this field is high, so sheets touch
    squeeze = np.clip(smooth_field(shape, rng, 30), 0, None) * rng.uniform(0.45, 0.7)
    phase = (radius + warp - pitch * theta / (2 * np.pi)) / pitch
    winding = np.floor(phase).astype(np.int32)
    depth = (phase - winding) * pitch * (1.0 - squeeze)  # voxels from the inner (recto) face
    thickness = rng.uniform(3.5, 5.0) + 1.2 * smooth_field(shape, rng, 25)
    sheet = depth < thickness
    recto = depth < 2.0

    # annotators trace some windings; the rest of the chunk is unlabelled
    windings = np.unique(winding)
    n_traced = max(1, round(rng.uniform(0.3, 0.45) * windings.size))
    traced = set(rng.permutation(windings)[:n_traced].tolist())
    # a traced winding stops a margin short of the next sheet when that one is untraced,
    # as real annotations leave a margin around sheets nobody traced
    next_untraced = ~np.isin(winding + 1, list(traced))
    annotated = np.isin(winding, list(traced)) & ~(next_untraced & (depth > pitch * (1.0 - squeeze) - 2.5))
    label = np.full(shape, 2, np.uint8)
    label[annotated] = 0
    label[annotated & sheet & recto] = 1

    fibres = papyrus_fibres(depth < np.maximum(thickness / 2, 2.0), rng)  # the recto half holds at least the labelled layer
    density = np.where(sheet, 0.55 + 0.6 * fibres, 0.08).astype(np.float32)
    blobs = ndimage.gaussian_filter((rng.random(shape) < 2e-4).astype(np.float32), 1.5) * 40
    density += blobs
    density = ndimage.gaussian_filter(density, rng.uniform(0.8, 1.3))
    bias = 1.0 + 0.25 * smooth_field(shape, rng, 60)
    density = density * bias + rng.normal(0, rng.uniform(0.04, 0.08), shape).astype(np.float32)
    image = np.clip(density * 200 + 20, 0, 255).astype(np.uint8)
    return image, label


def _clear_output(out: Path, force: bool) -> None:
    """Make sure ``out`` is new or empty: refuse, or with ``force`` remove, an existing dataset."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: a file is in the way; give a new folder")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not entries:
        return
    if not force:
        raise DataError(f"{out}: already holds {', '.join(entries[:4])}{' ...' if len(entries) > 4 else ''}; "
                        f"give a new folder, or add --force to replace it")
    foreign = [e for e in entries if e not in DATASET_ENTRIES]
    if foreign:
        raise DataError(f"{out}: holds {', '.join(foreign[:4])}, which no dataset holds; --force replaces only a dataset folder, "
                        f"so remove them yourself or give a new folder")
    shutil.rmtree(out)


def write_dataset(out: str | Path, n_train: int = 8, n_test: int = 2, size: tuple[int, int, int] | None = None, seed: int = 0,
                  force: bool = False) -> Path:
    """Write a dataset in the competition layout; test labels go to ``test_labels/`` for scoring.

    A folder that already holds files is refused, so existing data is never mixed with new
    volumes; ``force`` replaces it whole when it holds nothing but a dataset's files."""
    out = Path(out)
    if n_train < 0 or n_test < 0 or (size is not None and (len(size) != 3 or min(size) < 1)):
        raise ScrollsegError(f"synth: counts must be at least 0 and --size three positive sizes; got {n_train} train, {n_test} test, size {size}")
    _clear_output(out, force)
    rng = np.random.default_rng(seed)
    for split, count in (("train", n_train), ("test", n_test)):
        rows = []
        for i in range(count):
            vid = f"{1000 + i if split == 'train' else 9000 + i}"
            shape = tuple(size) if size else SHAPES[i % len(SHAPES)]
            image, label = synth_chunk(shape, rng)
            write_volume(out / f"{split}_images" / f"{vid}.tif", image)
            write_volume(out / f"{split}_labels" / f"{vid}.tif", label)
            rows.append((vid, f"synth{i % 2}"))
        with open(out / f"{split}.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["id", "scroll_id"])
            writer.writerows(rows)
    return out
