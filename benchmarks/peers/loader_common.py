"""What every side of the loader comparison shares: its arguments, the dataset it reads and
how batches are timed. No scrollseg import, so a peer's process loads only its own tool.

Each side is handed the same synthetic dataset in the competition layout (uint8 TIFFs in
``train_images/`` and ``train_labels/``, labels 0 background, 1 surface, 2 unlabelled), the
same patch, batch, worker count and share of foreground-centred patches, and reports the
augmented patches per second delivered as torch tensors on the training device.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Iterable

import torch


def parse_args(description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", required=True, type=Path, help="dataset root in the competition layout")
    p.add_argument("--work", required=True, type=Path, help="a folder for the tool's own copy of the data")
    p.add_argument("--patch", required=True, type=int, nargs=3)
    p.add_argument("--batch", required=True, type=int)
    p.add_argument("--workers", required=True, type=int)
    p.add_argument("--foreground", required=True, type=float, help="share of patches centred on a surface voxel")
    p.add_argument("--warmup", type=int, default=2, help="batches taken before the clock starts")
    p.add_argument("--batches", type=int, default=20, help="batches timed")
    return p.parse_args()


def training_pairs(data: Path) -> list[tuple[Path, Path]]:
    """(image, label) TIFF paths of the training volumes, by id."""
    images = sorted((data / "train_images").glob("*.tif"))
    return [(image, data / "train_labels" / image.name) for image in images]


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def time_batches(batches: Iterable[tuple[torch.Tensor, object]], warmup: int, timed: int) -> dict:
    """Patches per second over ``timed`` batches after ``warmup`` (worker start-up, first fills).

    Each batch is (images, labels) already on the training device; the clock stops when the
    device has finished the last one."""
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    dev = device()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    patches = 0
    t0 = time.perf_counter()
    for _ in range(timed):
        images, _ = next(it)
        patches += images.shape[0]
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {"patches_per_s": patches / seconds, "patches": patches, "seconds": seconds}


def report(result: dict) -> None:
    """The side's result, as the last line of stdout."""
    print(json.dumps(result), flush=True)
