"""Flip test-time augmentation, all flips in one forward pass."""
from __future__ import annotations

import itertools
from typing import Callable

import torch

# identity, the three single-axis flips, then pairs and all three: the first n form an n-flip TTA
FLIP_SETS = [list(c) for r in range(4) for c in itertools.combinations((2, 3, 4), r)]
TTA_LEVELS = (8, 4, 1)  # the flip counts a time limit steps down through


def with_flip_tta(predict: Callable[[torch.Tensor], torch.Tensor], flips: list[list[int]] = FLIP_SETS) -> Callable[[torch.Tensor], torch.Tensor]:
    """Wrap a tile predictor so each tile is predicted under every flip set and averaged."""

    def run(batch: torch.Tensor) -> torch.Tensor:
        views = torch.cat([batch.flip(f) if f else batch for f in flips])
        out = predict(views).chunk(len(flips))
        return torch.stack([o.flip(f) if f else o for o, f in zip(out, flips)]).mean(0)

    return run
