"""Cost of the training augmentation: nnU-Net's full set against flips only, per batch.

For each batch shape it times ``augment_batch`` on random uint8 crops in three settings:

- flips:    mirroring only (p 0.5 per axis), the crop is the patch;
- nnU-Net:  the default ``AugmentConfig`` (nnU-Net v2's probabilities) on the enlarged crop
            that the sampler cuts (``spatial_crop_size``), averaged over steps;
- all p=1:  every transform on every sample: the most a batch can cost.

and the sampler's slicing of one enlarged crop against one patch-sized crop from a 320^3
volume (the CPU workers' share). Each step uses its own seed, as training does.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_augment.py [--device cpu|cuda] [--json F]``
(one CPU thread unless ``--threads`` says otherwise).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time

import numpy as np
import torch

from scrollseg.config import AugmentConfig
from scrollseg.data.augment import augment_batch, spatial_crop_size
from scrollseg.data.volumes import ArrayVolume

CASES = [(4, 32, 200), (4, 64, 40), (2, 128, 20)]  # batch, patch edge, timed steps
FLIPS = AugmentConfig(rotation_prob=0, scale_prob=0, noise_prob=0, blur_prob=0, brightness_prob=0, contrast_prob=0, lowres_prob=0,
                      inverted_gamma_prob=0, gamma_prob=0)
EVERYTHING = dataclasses.replace(AugmentConfig(), **{f"{n}_prob": 1.0 for n in ("rotation", "scale", "noise", "blur", "brightness", "contrast",
                                                                                  "lowres", "inverted_gamma", "gamma")})


def time_augment(batch: int, edge: int, steps: int, cfg: AugmentConfig, device: torch.device, repeats: int = 3) -> float:
    """Milliseconds per batch over ``steps`` seeded steps, after a warm-up step; the best of
    ``repeats`` runs of the same steps (other processes only ever add time)."""
    patch = [edge] * 3
    crop = spatial_crop_size(patch, cfg)
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.integers(0, 256, (batch, *crop), dtype=np.uint8)).to(device)
    label = torch.from_numpy(rng.integers(0, 3, (batch, *crop), dtype=np.uint8)).to(device)
    mean, std = torch.full((batch,), 0.45, device=device), torch.full((batch,), 0.2, device=device)

    def step(seed: int) -> None:
        augment_batch(image, label, mean, std, cfg, torch.Generator().manual_seed(seed), patch)

    step(steps)  # warm-up, with a seed the timed steps do not use
    best = math.inf
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for seed in range(steps):
            step(seed)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) / steps * 1e3)
    return best


def time_crop(volume: np.ndarray, crop_edge: int, repeats: int = 5) -> float:
    """Milliseconds to read one image and label crop from the volume's middle, as a sampler worker does (best of ``repeats``)."""
    source = ArrayVolume.of("bench", volume, volume, 0.5, 0.2)
    start = np.array([s // 2 - crop_edge // 2 for s in volume.shape])
    source.read(start, (crop_edge,) * 3)  # warm-up
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        source.read(start, (crop_edge,) * 3)
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    print(f"augment_batch on {device} ({args.threads} thread{'s' if args.threads > 1 else ''}), ms per batch")
    print(f"{'batch':<12} {'crop':>5} {'flips':>9} {'nnU-Net':>9} {'all p=1':>9} {'nnU-Net/flips':>14}")
    for batch, edge, steps in CASES:
        flips = time_augment(batch, edge, steps, FLIPS, device)
        nnunet = time_augment(batch, edge, steps, AugmentConfig(), device)
        everything = time_augment(batch, edge, max(4, steps // 4), EVERYTHING, device)
        crop = spatial_crop_size([edge] * 3, AugmentConfig())[0]
        rows.append({"batch": batch, "patch": edge, "crop": crop, "flips_ms": flips, "nnunet_ms": nnunet, "all_ms": everything})
        print(f"{batch} x {edge}^3{'':<{7 - len(str(edge))}} {crop:>5} {flips:>9.2f} {nnunet:>9.2f} {everything:>9.2f} {nnunet / flips:>13.1f}x")
    print("sampler slicing (image + label) from a 320^3 volume, ms per sample")
    volume = np.random.default_rng(0).integers(0, 256, (320, 320, 320), dtype=np.uint8)
    for edge in (32, 64, 128):
        crop = spatial_crop_size([edge] * 3, AugmentConfig())[0]
        patch_ms, crop_ms = time_crop(volume, edge), time_crop(volume, crop)
        rows.append({"patch": edge, "crop": crop, "slice_patch_ms": patch_ms, "slice_crop_ms": crop_ms})
        print(f"{edge}^3 patch {patch_ms:8.2f}   {crop}^3 crop {crop_ms:8.2f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"device": str(device), "threads": args.threads, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
