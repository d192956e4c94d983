"""Forward + backward time of the training loss, each variant against plain Dice + BCE.

Batch of 2 patches with oblique two-voxel-thick sheets and an ignored slab; deep
supervision with outputs at 1, 1/2, 1/4 and 1/8 of the patch. Median of the repeats.

Run: ``OMP_NUM_THREADS=1 python benchmarks/loss_cost.py [--size 64] [--repeats 10] [--device cpu]``
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from scrollseg.config import LossConfig
from scrollseg.losses import masked_bce_dice, segmentation_loss


def sheets_label(size: int, device: torch.device) -> torch.Tensor:
    z, y, x = torch.meshgrid(*(torch.arange(size, dtype=torch.float32),) * 3, indexing="ij")
    label = torch.zeros(2, 1, size, size, size, dtype=torch.uint8)
    for offset in range(size // 8, size, size // 4):
        label[:, 0, (z + 0.3 * y - 0.2 * x - offset).abs() < 1.0] = 1
    label[:, :, :, :, : size // 8] = 2
    return label.to(device)


def timed(fn, outputs, label, repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats + 1):  # the first run warms up
        for out in outputs:
            out.grad = None
        t0 = time.perf_counter()
        fn(outputs, label).backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    label = sheets_label(args.size, device)
    torch.manual_seed(0)
    outputs = [torch.randn(2, 1, *(args.size // f,) * 3, device=device, requires_grad=True) for f in (1, 2, 4, 8)]
    variants = {
        "dice+bce, one output": lambda o, y: masked_bce_dice(o[0], y),
        "dice+bce, deep supervision": lambda o, y: segmentation_loss(o, y, LossConfig()),
        "+ skeleton recall": lambda o, y: segmentation_loss(o, y, LossConfig(skeleton_recall_weight=1.0)),
        "+ clDice (3 iterations)": lambda o, y: segmentation_loss(o, y, LossConfig(cldice_weight=1.0)),
        "+ both": lambda o, y: segmentation_loss(o, y, LossConfig(skeleton_recall_weight=1.0, cldice_weight=1.0)),
    }
    base = None
    print(f"2 x {args.size}^3 on {device}, {torch.get_num_threads()} thread(s), median of {args.repeats}")
    for name, fn in variants.items():
        seconds = timed(fn, outputs, label, args.repeats, device)
        base = base or seconds
        print(f"  {name:28s} {seconds * 1e3:8.1f} ms   x{seconds / base:.2f}")


if __name__ == "__main__":
    main()
