"""MONAI's side of the loader comparison: the pipeline a MONAI user writes for this task.

A ``CacheDataset`` holds each volume read, z-scored and with its surface and background
voxel indices (``FgBgToIndicesd``, so that cropping does not search the label every time);
per item, ``RandCropByPosNegLabeld`` cuts the patch (surface-centred with the comparison's
share), then MONAI's counterparts of nnU-Net's augmentation with its probabilities:
``RandAffined`` (rotation up to 30 degrees about each axis and scaling; applied with
probability 0.36 = 1 - 0.8^2, nnU-Net's chance of rotation or scaling), Gaussian noise,
Gaussian smoothing, ``RandScaleIntensityd`` (brightness), ``RandScaleIntensityFixedMeand``
(contrast about the mean), ``RandSimulateLowResolutiond``, inverted gamma and gamma
(``RandAdjustContrastd``) and a flip per axis. Metadata tracking is off, as MONAI's
fast-training guide advises; MONAI's ``DataLoader`` runs the items in worker processes and
collates them. Reading and caching the volumes is not timed.

Run with the peers venv's python (``scripts/peers.sh``); prints one JSON line.
"""
from __future__ import annotations

import math
from importlib.metadata import version

import numpy as np
import tifffile
import torch

from loader_common import device, parse_args, report, time_batches, training_pairs


def read_tiff(path) -> np.ndarray:
    return tifffile.imread(path)[None]


def surface_of(label: np.ndarray) -> np.ndarray:
    return label == 1


def transforms(patch, foreground: float):
    from monai import transforms as T

    keys = ("image", "label")
    cached = [
        T.Lambdad(keys, read_tiff),
        T.NormalizeIntensityd("image"),
        T.CopyItemsd("label", names="surface"),
        T.Lambdad("surface", surface_of),
        T.FgBgToIndicesd("surface"),
        T.DeleteItemsd("surface"),
    ]
    gamma = (0.7, 1.5)
    random = [
        T.RandCropByPosNegLabeld(keys, "label", patch, pos=foreground, neg=1 - foreground, num_samples=1,
                                 fg_indices_key="surface_fg_indices", bg_indices_key="surface_bg_indices"),
        T.DeleteItemsd(("surface_fg_indices", "surface_bg_indices")),
        T.RandAffined(keys, spatial_size=patch, prob=1 - 0.8**2, rotate_range=(math.radians(30),) * 3,
                      scale_range=((-0.3, 0.4),) * 3, mode=("bilinear", "nearest"), padding_mode="zeros", cache_grid=True),
        T.RandGaussianNoised("image", prob=0.1, std=0.1),
        T.RandGaussianSmoothd("image", sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0), prob=0.1),
        T.RandScaleIntensityd("image", factors=0.25, prob=0.15),
        T.RandScaleIntensityFixedMeand("image", factors=0.25, fixed_mean=True, preserve_range=True, prob=0.15),
        T.RandSimulateLowResolutiond("image", prob=0.125, zoom_range=(0.5, 1.0)),
        T.RandAdjustContrastd("image", prob=0.1, gamma=gamma, invert_image=True, retain_stats=True),
        T.RandAdjustContrastd("image", prob=0.3, gamma=gamma, retain_stats=True),
        *[T.RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in range(3)],
    ]
    return T.Compose(cached + random)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    from monai.data import CacheDataset, DataLoader, set_track_meta

    set_track_meta(False)
    items = [{"image": str(image), "label": str(label)} for image, label in training_pairs(args.data)]
    dataset = CacheDataset(items, transforms(tuple(args.patch), args.foreground), progress=False)
    dev = device()
    total = (args.warmup + args.batches) * args.batch
    # a few volumes and many patches: draw volumes with replacement for as long as the run lasts
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=total)
    loader = DataLoader(dataset, batch_size=args.batch, sampler=sampler, num_workers=args.workers, pin_memory=dev.type == "cuda")

    def batches():
        for batch in loader:
            yield batch["image"].to(dev, non_blocking=True), batch["label"].to(dev, non_blocking=True)

    result = time_batches(batches(), args.warmup, args.batches, args.windows)
    result.update(version=version("monai"))
    report(result)


if __name__ == "__main__":
    main()
