"""Yardstick for docs/quality.md: the "100-line U-Net" a competitor writes in an afternoon.

A 3-level U-Net (16-32-64 features, 0.34 M parameters), 48^3 patches (half centred on
a label-1 voxel) with random flips, batch 2, AdamW 3e-3 on a cosine schedule over the
wall-clock budget, BCE + soft Dice under the ignore mask; Gaussian-weighted sliding
window (half-tile overlap), threshold 0.5 and 6-connected dust removal. It uses nothing
of scrollseg but the metric, so the tiny preset can be read against it: same data, same
budget, same thread count.

    OMP_NUM_THREADS=1 python benchmarks/prototype_unet.py Q/alt --minutes 10 --seed 0 --results docs/quality.jsonl

The record it appends has ``arm: prototype_unet`` and the test split's mean scores under
``test.fixed_0.5``, the form ``quality.py render`` reads.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import cc3d
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from scrollseg.data.io import read_volume
from scrollseg.metrics.evaluate import MEAN_KEYS
from scrollseg.metrics.leaderboard import score_volume

PATCH = 48


def load(root: Path, split: str) -> list[tuple[np.ndarray, np.ndarray]]:
    ids = [line.split(",")[0] for line in (root / f"{split}.csv").read_text().split()[1:]]
    out = []
    for vid in ids:
        image = read_volume(root / f"{split}_images" / f"{vid}.tif").astype(np.float32)
        out.append(((image - image.mean()) / (image.std() + 1e-6), read_volume(root / f"{split}_labels" / f"{vid}.tif")))
    return out


def block(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, padding=1), nn.InstanceNorm3d(cout, affine=True), nn.LeakyReLU(0.01, True),
                         nn.Conv3d(cout, cout, 3, padding=1), nn.InstanceNorm3d(cout, affine=True), nn.LeakyReLU(0.01, True))


class UNet(nn.Module):
    def __init__(self, f=(16, 32, 64)):
        super().__init__()
        self.e1, self.e2, self.e3 = block(1, f[0]), block(f[0], f[1]), block(f[1], f[2])
        self.u2, self.d2 = nn.ConvTranspose3d(f[2], f[1], 2, 2), block(2 * f[1], f[1])
        self.u1, self.d1 = nn.ConvTranspose3d(f[1], f[0], 2, 2), block(2 * f[0], f[0])
        self.out = nn.Conv3d(f[0], 1, 1)

    def forward(self, x):
        a = self.e1(x)
        b = self.e2(F.max_pool3d(a, 2))
        c = self.e3(F.max_pool3d(b, 2))
        b = self.d2(torch.cat([self.u2(c), b], 1))
        return self.out(self.d1(torch.cat([self.u1(b), a], 1)))


def random_patch(image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
    pad = [(0, max(0, PATCH - n)) for n in image.shape]
    image, label = np.pad(image, pad), np.pad(label, pad, constant_values=2)
    centre = None
    if rng.random() < 0.5:
        fg = np.argwhere(label == 1)
        centre = fg[rng.integers(len(fg))] if len(fg) else None
    start = [rng.integers(0, n - PATCH + 1) if centre is None else int(np.clip(centre[k] - PATCH // 2, 0, n - PATCH)) for k, n in enumerate(image.shape)]
    box = tuple(slice(s, s + PATCH) for s in start)
    image, label = image[box], label[box]
    for axis in range(3):
        if rng.random() < 0.5:
            image, label = np.flip(image, axis), np.flip(label, axis)
    return image.copy(), label.copy()


def bce_dice(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    known, target = (label != 2).float(), (label == 1).float()
    bce = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * known).sum() / known.sum().clamp(min=1)
    prob = torch.sigmoid(logits) * known
    return bce + 1 - (2 * (prob * target).sum() + 1) / (prob.sum() + (target * known).sum() + 1)


@torch.no_grad()
def sliding_window(model: nn.Module, image: np.ndarray) -> np.ndarray:
    pad = [(0, max(0, PATCH - n)) for n in image.shape]
    padded = np.pad(image, pad)
    g = np.exp(-0.5 * ((np.arange(PATCH) - (PATCH - 1) / 2) / (PATCH / 8)) ** 2)
    weight = (g[:, None, None] * g[None, :, None] * g[None, None, :]).astype(np.float32)
    total, norm = np.zeros(padded.shape, np.float32), np.zeros(padded.shape, np.float32)
    starts = [sorted(set(range(0, n - PATCH + 1, PATCH // 2)) | {n - PATCH}) for n in padded.shape]
    for i in starts[0]:
        for j in starts[1]:
            for k in starts[2]:
                box = (slice(i, i + PATCH), slice(j, j + PATCH), slice(k, k + PATCH))
                prob = torch.sigmoid(model(torch.from_numpy(padded[box][None, None])))[0, 0].numpy()
                total[box] += prob * weight
                norm[box] += weight
    return (total / norm)[tuple(slice(0, n) for n in image.shape)]


def remove_dust(mask: np.ndarray, min_size: int = 32) -> np.ndarray:
    labels = cc3d.connected_components(mask, connectivity=6)
    keep = np.bincount(labels.ravel()) >= min_size
    keep[0] = False
    return keep[labels].astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=None, help="append the record to this JSON-lines file")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    torch.set_num_threads(1)
    train, test = load(args.data, "train"), load(args.data, "test")
    model = UNet()
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    budget, start, steps = args.minutes * 60, time.perf_counter(), 0
    while (elapsed := time.perf_counter() - start) < budget:
        for group in optim.param_groups:
            group["lr"] = 3e-3 * 0.5 * (1 + math.cos(math.pi * elapsed / budget))
        images, labels = zip(*(random_patch(*train[rng.integers(len(train))], rng) for _ in range(2)))
        loss = bce_dice(model(torch.from_numpy(np.stack(images)[:, None])), torch.from_numpy(np.stack(labels)[:, None].astype(np.int64)))
        optim.zero_grad()
        loss.backward()
        optim.step()
        steps += 1
    model.eval()
    scores = [score_volume(label, remove_dust((sliding_window(model, image) > 0.5).astype(np.uint8))) for image, label in test]
    mean = {k: float(np.mean([getattr(s, k) for s in scores])) for k in MEAN_KEYS}
    record = {"dataset": args.data.name, "arm": "prototype_unet", "seed": args.seed, "steps": steps, "train_s": budget, "test": {"fixed_0.5": mean}}
    if args.results:
        with open(args.results, "a") as fh:
            fh.write(json.dumps(record) + "\n")
    print(json.dumps({"arm": "prototype_unet", "dataset": args.data.name, "seed": args.seed, "steps": steps, "fixed_0.5": round(mean["leaderboard"], 4)}))


if __name__ == "__main__":
    main()
