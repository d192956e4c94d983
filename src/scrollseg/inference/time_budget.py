"""Fit the prediction of a test set into a time limit by lowering flip TTA volume by volume.

A volume's time is modelled as ``voxels x (fixed + flips x per_flip)`` seconds: the
model's forward passes grow with the number of flips; reading, blending,
post-processing and writing do not. Both rates come from the volumes predicted so far
(the forward passes timed on their own). Before each volume the budget picks the most
flips (8, 4, 1) with which every remaining volume still finishes before the deadline,
with ``SAFETY`` to spare. When even one flip per volume no longer fits, the volumes
that fit get one flip and the rest an empty mask: a complete submission in time
scores better than none.
"""
from __future__ import annotations

import time
from collections import Counter

import torch

from .tta import TTA_LEVELS

SAFETY = 1.15


class TimedForward(torch.nn.Module):
    """Wraps a model and adds up the seconds its forward passes take (synchronised on CUDA)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.seconds = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        started = time.perf_counter()
        out = self.model(x)
        if out.is_cuda:
            torch.cuda.synchronize(out.device)
        self.seconds += time.perf_counter() - started
        return out


class TtaBudget:
    """Flips per volume so that all volumes finish by ``deadline`` (a ``time.monotonic()`` value)."""

    def __init__(self, deadline: float, most_flips: int = 8):
        self.deadline = deadline
        self.levels = tuple(level for level in TTA_LEVELS if level <= most_flips) or (1,)
        self.voxels = 0
        self.fixed_s = 0.0  # summed seconds that do not depend on the flips
        self.flip_s = 0.0  # summed seconds of forward passes, per flip
        self.used: Counter = Counter()  # flips -> volumes predicted with them (0: empty masks)

    def record(self, voxels: int, flips: int, forward_s: float, total_s: float) -> None:
        """A volume of ``voxels`` took ``total_s`` seconds, ``forward_s`` of them in the model."""
        self.voxels += voxels
        self.fixed_s += max(total_s - forward_s, 0.0)
        self.flip_s += forward_s / flips

    def seconds(self, voxels: int, flips: int) -> float:
        return SAFETY * voxels * (self.fixed_s + flips * self.flip_s) / self.voxels

    def choose(self, remaining_voxels: list[int], now: float | None = None) -> int:
        """Flips for the first of ``remaining_voxels`` (this volume and those after it); 0 for an empty mask."""
        left = self.deadline - (time.monotonic() if now is None else now)
        if left <= 0:
            flips = 0
        elif not self.voxels:
            flips = self.levels[0]  # nothing measured yet
        else:
            total = sum(remaining_voxels)
            flips = next((level for level in self.levels if self.seconds(total, level) <= left), 0)
            if not flips and self.seconds(remaining_voxels[0], 1) <= left:
                flips = 1
        self.used[flips] += 1
        return flips

    def summary(self) -> str:
        parts = [f"{n} with {flips} flip{'s' if flips > 1 else ''}" for flips, n in sorted(self.used.items(), reverse=True) if flips]
        if self.used[0]:
            parts.append(f"{self.used[0]} empty (out of time)")
        return "volumes: " + ", ".join(parts)
