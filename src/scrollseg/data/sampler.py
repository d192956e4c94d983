"""Random training patches with foreground oversampling, as a pure function of the step.

Each optimizer step draws ``world x accumulation`` micro-batches, numbered
``slot = micro * world + rank``; slot ``k`` of step ``s`` comes from a generator
seeded with ``(seed, s, k)``. Resuming at a step therefore continues the exact
sequence with no sampler state to save, each rank draws different patches, and
N ranks see exactly the patches one process sees with N-fold accumulation, so the
two runs train the same model.

With an augmentation config, each item is the enlarged crop that the spatial
augmentation resamples the patch from (``augment.spatial_crop_size``), centred on the
patch; an oversampled foreground voxel then lies within ``augment.foreground_reach``
of the patch centre, so that every rotation and scale keeps it inside the final patch.
"""
from __future__ import annotations

import numpy as np

from ..config import AugmentConfig
from ..constants import IGNORE_LABEL
from .augment import foreground_reach, spatial_crop_size
from .cache import CachedVolume


def crop_padded(arr: np.ndarray, start: np.ndarray, size: tuple[int, ...], fill: int) -> np.ndarray:
    """``arr[start:start+size]`` where out-of-volume voxels take ``fill``."""
    out = np.full(size, fill, dtype=arr.dtype)
    src_lo = np.maximum(start, 0)
    src_hi = np.minimum(start + np.asarray(size), arr.shape)
    if np.any(src_hi <= src_lo):
        return out
    dst_lo = src_lo - start
    dst_hi = dst_lo + (src_hi - src_lo)
    out[tuple(slice(a, b) for a, b in zip(dst_lo, dst_hi))] = arr[tuple(slice(a, b) for a, b in zip(src_lo, src_hi))]
    return out


class PatchSampler:
    def __init__(self, volumes: list[CachedVolume], patch_size, batch_size: int, foreground_fraction: float, seed: int, rank: int = 0, world: int = 1,
                 augment: AugmentConfig | None = None):
        if not volumes:
            raise ValueError("PatchSampler needs at least one volume")
        self.volumes = volumes
        self.patch = tuple(int(p) for p in patch_size)
        self.crop = tuple(spatial_crop_size(self.patch, augment)) if augment else self.patch
        # positions of a foreground voxel inside the patch that keep it within reach of the centre
        reach = np.asarray(foreground_reach(self.patch, augment)) if augment else np.asarray(self.patch) / 2.0
        middle = (np.asarray(self.patch) - 1) / 2
        self.fg_lo = np.maximum(np.ceil(middle - reach), 0).astype(np.int64)
        self.fg_hi = np.minimum(np.floor(middle + reach), np.asarray(self.patch) - 1).astype(np.int64)
        self.batch_size = batch_size
        self.foreground_fraction = foreground_fraction
        self.seed = seed
        self.rank = rank
        self.world = world

    def slot(self, micro: int) -> int:
        return micro * self.world + self.rank

    def _start(self, vol: CachedVolume, rng: np.random.Generator) -> np.ndarray:
        """Where the patch starts in the volume (the crop extends around it)."""
        shape = np.asarray(vol.shape)
        patch = np.asarray(self.patch)
        if vol.foreground.size and rng.random() < self.foreground_fraction:
            centre = np.asarray(np.unravel_index(vol.foreground[rng.integers(vol.foreground.size)], vol.shape))
            # jitter so the surface voxel is not always at the patch centre
            start = centre - rng.integers(self.fg_lo, self.fg_hi + 1)
            # stay inside the volume where the voxel's reach allows
            start = np.clip(start, np.minimum(0, shape - patch), np.maximum(shape - patch, 0))
            return np.clip(start, centre - self.fg_hi, centre - self.fg_lo)
        # volumes smaller than the patch are centred and padded
        high = np.maximum(shape - patch, 0)
        start = np.array([rng.integers(0, h + 1) for h in high])
        return np.where(shape < patch, (shape - patch) // 2, start)

    def batch(self, step: int, micro: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, step, self.slot(micro)])
        images, labels, means, stds = [], [], [], []
        for _ in range(self.batch_size):
            vol = self.volumes[rng.integers(len(self.volumes))]
            start = self._start(vol, rng) - (np.asarray(self.crop) - self.patch) // 2
            images.append(crop_padded(vol.image, start, self.crop, 0))
            labels.append(crop_padded(vol.label, start, self.crop, IGNORE_LABEL))
            means.append(vol.mean)
            stds.append(vol.std)
        return {
            "image": np.stack(images),
            "label": np.stack(labels),
            "mean": np.asarray(means, np.float32),
            "std": np.asarray(stds, np.float32),
        }
