"""Random training patches with foreground oversampling, as a pure function of the step.

Each optimizer step draws ``world x accumulation`` micro-batches, numbered
``slot = micro * world + rank``; slot ``k`` of step ``s`` comes from a generator
seeded with ``(seed, s, k)``. Resuming at a step therefore continues the exact
sequence with no sampler state to save, each rank draws different patches, and
N ranks see exactly the patches one process sees with N-fold accumulation, so the
two runs train the same model.

Without a cache (``data.cache_mode=none``) every volume a worker reads must be decoded
from its TIFF, so the draws are grouped: the steps are cut into windows, each window
draws from a pool of ``data.volumes_in_memory`` volumes (chosen by a generator seeded
with the seed and the window), and each worker keeps those volumes decoded. Each
volume then serves about ``data.patches_per_volume`` patches per window. Batches stay a
pure function of (seed, step, slot), with everything above intact; what the pool
relaxes is independence: patches of one window come from few volumes. Over many
windows every volume is drawn equally often.

With an augmentation config, each item is the enlarged crop that the spatial
augmentation resamples the patch from (``augment.spatial_crop_size``), centred on the
patch; an oversampled foreground voxel then lies within ``augment.foreground_reach``
of the patch centre, so that every rotation and scale keeps it inside the final patch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import AugmentConfig
from .augment import foreground_reach, spatial_crop_size
from .volumes import CachedVolume

POOL_STREAM = 0x706F6F6C  # keeps the pool generators apart from the per-slot ones


@dataclass(frozen=True)
class VolumePool:
    size: int  # volumes per window
    steps: int  # steps per window

    def members(self, seed: int, step: int, n_volumes: int) -> np.ndarray:
        rng = np.random.default_rng([seed, POOL_STREAM, step // self.steps])
        return rng.choice(n_volumes, min(self.size, n_volumes), replace=False)


def volume_pool(volumes_in_memory: int, patches_per_volume: int, global_batch: int) -> VolumePool:
    """Windows long enough that each pooled volume serves ``patches_per_volume`` patches."""
    return VolumePool(volumes_in_memory, max(1, round(volumes_in_memory * patches_per_volume / global_batch)))


class PatchSampler:
    def __init__(self, volumes: list[CachedVolume], patch_size, batch_size: int, foreground_fraction: float, seed: int, rank: int = 0,
                 world: int = 1, augment: AugmentConfig | None = None, pool: VolumePool | None = None):
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
        self.pool = pool

    def slot(self, micro: int) -> int:
        return micro * self.world + self.rank

    def _start(self, vol: CachedVolume, rng: np.random.Generator) -> np.ndarray:
        """Where the patch starts in the volume (the crop extends around it)."""
        shape = np.asarray(vol.shape)
        patch = np.asarray(self.patch)
        if vol.foreground_count and rng.random() < self.foreground_fraction:
            centre = vol.foreground_voxel(int(rng.integers(vol.foreground_count)))
            # jitter so the surface voxel is not always at the patch centre
            start = centre - rng.integers(self.fg_lo, self.fg_hi + 1)
            # stay inside the volume where the voxel's reach allows
            start = np.clip(start, np.minimum(0, shape - patch), np.maximum(shape - patch, 0))
            return np.clip(start, centre - self.fg_hi, centre - self.fg_lo)
        # volumes smaller than the patch are centred and padded
        high = np.maximum(shape - patch, 0)
        start = np.array([rng.integers(0, h + 1) for h in high])
        return np.where(shape < patch, (shape - patch) // 2, start)

    def draws(self, step: int, micro: int = 0) -> list[tuple[int, np.ndarray]]:
        """(volume index, patch start) of each sample of the micro-batch."""
        rng = np.random.default_rng([self.seed, step, self.slot(micro)])
        pool = self.pool.members(self.seed, step, len(self.volumes)) if self.pool else None
        out = []
        for _ in range(self.batch_size):
            index = int(rng.integers(len(self.volumes)) if pool is None else pool[rng.integers(len(pool))])
            out.append((index, self._start(self.volumes[index], rng)))
        return out

    def batch(self, step: int, micro: int = 0) -> dict[str, np.ndarray]:
        images, labels, means, stds = [], [], [], []
        margin = (np.asarray(self.crop) - self.patch) // 2
        for index, start in self.draws(step, micro):
            vol = self.volumes[index]
            image, label = vol.read(start - margin, self.crop)
            images.append(image)
            labels.append(label)
            means.append(vol.mean)
            stds.append(vol.std)
        return {
            "image": np.stack(images),
            "label": np.stack(labels),
            "mean": np.asarray(means, np.float32),
            "std": np.asarray(stds, np.float32),
        }
