"""Learning rate as a pure function of the step, so resuming needs no scheduler state."""
from __future__ import annotations

import math

from ..config import OptimConfig


def learning_rate(step: int, total_steps: int, cfg: OptimConfig) -> float:
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "poly":
        return floor + (cfg.lr - floor) * (1.0 - progress) ** 0.9
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
