"""nnU-Net v2's side of the loader comparison: its own data loader and default training augmentation.

As ``nnUNetTrainer.get_dataloaders`` builds them for a 3D full-resolution configuration:
``nnUNetDataLoader`` over the blosc2 dataset (foreground oversampling from the class
locations its preprocessor samples, crops of the enlarged initial patch size), the
transforms of ``nnUNetTrainer.get_training_transforms`` (rotation and scaling, noise, blur,
brightness, contrast, low resolution, inverted gamma, gamma, mirroring, label -1 to 0,
deep-supervision targets), run in worker processes by batchgenerators'
``NonDetMultiThreadedAugmenter``. The volumes are first written in nnU-Net's preprocessed
form by its own functions; that conversion is not timed.

Run with the peers venv's python (``scripts/peers.sh``); prints one JSON line.
"""
from __future__ import annotations

from importlib.metadata import version

import numpy as np
import tifffile
import torch

from loader_common import device, parse_args, report, time_batches, training_pairs

LABELS = {"background": 0, "surface": 1, "ignore": 2}  # nnU-Net's ignore label must be the highest
STAGES = 6  # the default preset's network: deep-supervision targets at 1, 1/2, ..., 1/16


def write_preprocessed(pairs, folder, patch, label_manager) -> None:
    """The volumes as nnU-Net's preprocessor leaves them (1 mm spacing, nothing to crop or
    resample): z-scored float32 data and int8 segmentation in blosc2 files chunked for the
    patch, properties holding the sampled class locations."""
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import ZScoreNormalization
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2

    folder.mkdir(parents=True, exist_ok=True)
    # what DefaultPreprocessor.run_case_npy collects with an ignore label
    collect = list(label_manager.foreground_labels) + [[-1] + label_manager.all_labels]
    for image_path, label_path in pairs:
        seg = tifffile.imread(label_path).astype(np.int8)[None]
        data = ZScoreNormalization(use_mask_for_norm=False, intensityproperties={}).run(tifffile.imread(image_path)[None], seg)
        properties = {
            "spacing": [1.0, 1.0, 1.0],
            "shape_before_cropping": data.shape[1:],
            "class_locations": DefaultPreprocessor._sample_foreground_locations(seg, collect),
        }
        blocks, chunks = comp_blosc2_params(data.shape, tuple(patch), data.itemsize)
        blocks_seg, chunks_seg = comp_blosc2_params(seg.shape, tuple(patch), seg.itemsize)
        nnUNetDatasetBlosc2.save_case(data, seg, properties, str(folder / image_path.stem),
                                      chunks=chunks, blocks=blocks, chunks_seg=chunks_seg, blocks_seg=blocks_seg)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
    from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
    from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    patch = tuple(args.patch)
    labels = LabelManager(LABELS, regions_class_order=None)
    folder = args.work / "nnUNetPlans_3d_fullres"
    write_preprocessed(training_pairs(args.data), folder, patch, labels)

    # nnUNetTrainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size for an isotropic 3D patch
    rotation = (-30.0 / 360 * 2.0 * np.pi, 30.0 / 360 * 2.0 * np.pi)
    initial_patch = get_patch_size(patch, rotation, rotation, rotation, (0.85, 1.25))
    # nnUNetTrainer._get_deep_supervision_scales with pooling by 2 after every stage but the first
    pooling = [[1, 1, 1]] + [[2, 2, 2]] * (STAGES - 1)
    scales = list(list(s) for s in 1 / np.cumprod(np.vstack(pooling), axis=0))[:-1]
    transforms = nnUNetTrainer.get_training_transforms(
        patch, rotation, scales, (0, 1, 2), False, use_mask_for_norm=[False],
        foreground_labels=labels.foreground_labels, regions=None, ignore_label=labels.ignore_label)
    loader = nnUNetDataLoader(nnUNetDatasetBlosc2(str(folder)), args.batch, initial_patch, patch, labels,
                              oversample_foreground_percent=args.foreground, sampling_probabilities=None,
                              pad_sides=None, transforms=transforms, probabilistic_oversampling=False)
    dev = device()
    if args.workers == 0:
        augmenter = SingleThreadedAugmenter(loader, None)
    else:  # as nnUNetTrainer.get_dataloaders, with the comparison's worker count
        augmenter = NonDetMultiThreadedAugmenter(data_loader=loader, transform=None, num_processes=args.workers,
                                                 num_cached=max(6, args.workers // 2), seeds=None,
                                                 pin_memory=dev.type == "cuda", wait_time=0.002)

    def batches():
        while True:
            batch = next(augmenter)
            yield (batch["data"].to(dev, non_blocking=True), [t.to(dev, non_blocking=True) for t in batch["target"]])

    try:
        result = time_batches(batches(), args.warmup, args.batches, args.windows)
    finally:
        if hasattr(augmenter, "_finish"):
            augmenter._finish()
    result.update(version=version("nnunetv2"), initial_patch=[int(n) for n in initial_patch])
    report(result)


if __name__ == "__main__":
    main()
