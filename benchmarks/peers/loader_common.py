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
    p.add_argument("--windows", type=int, default=1, help="windows the timed batches are split into, to show the spread")
    return p.parse_args()


def training_pairs(data: Path) -> list[tuple[Path, Path]]:
    """(image, label) TIFF paths of the training volumes, by id."""
    images = sorted((data / "train_images").glob("*.tif"))
    return [(image, data / "train_labels" / image.name) for image in images]


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def time_batches(batches: Iterable[tuple[torch.Tensor, object]], warmup: int, timed: int, windows: int = 1) -> dict:
    """Patches per second over ``timed`` batches after ``warmup`` (worker start-up, first fills),
    and the rate of each of ``windows`` consecutive windows, to show the spread.

    The figure is the whole span, not the fastest window: a prefetching loader whose workers
    ran ahead while the training process was descheduled would otherwise be credited with
    draining its queue. Each batch is (images, labels) already on the training device; a
    window ends when the device has finished its last batch. ``cpu_s_per_patch`` is this
    process's CPU time per patch: with no workers, the whole cost of a patch, unaffected by
    other work on the machine."""
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    dev = device()
    rates, patches, seconds = [], 0, 0.0
    cpu0 = time.process_time()
    for _ in range(windows):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0, n = time.perf_counter(), 0
        for _ in range(max(1, timed // windows)):
            images, _ = next(it)
            n += images.shape[0]
        if dev.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        rates.append(n / elapsed)
        patches, seconds = patches + n, seconds + elapsed
    return {"patches_per_s": patches / seconds, "window_patches_per_s": rates,
            "patches": patches, "seconds": seconds, "cpu_s_per_patch": (time.process_time() - cpu0) / patches}


def report(result: dict) -> None:
    """The side's result, as the last line of stdout."""
    print(json.dumps(result), flush=True)
