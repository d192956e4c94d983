"""The one training step: forward, loss, backward over the micro-batches, unscale, clip,
optimizer step. The trainer and ``scrollseg bench`` both call it, so the benchmark
measures the step that trains."""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from ..precision import Precision


@dataclass(frozen=True)
class StepResult:
    loss: float  # mean over the micro-batches
    grad_norm: float  # before clipping


def optimizer_step(
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    precision: Precision,
    loss_fn: Callable[[object, torch.Tensor], torch.Tensor],
    micro_batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    accumulation: int,
    lr: float,
    grad_clip: float,
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> StepResult:
    """One optimizer step over ``accumulation`` (image, label) micro-batches.

    ``no_sync`` (DDP's) skips the gradient all-reduce on every micro-batch but the last.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for micro, (x, y) in enumerate(micro_batches):
        last = micro == accumulation - 1
        with (no_sync() if no_sync is not None and not last else contextlib.nullcontext()), precision.autocast():
            loss = loss_fn(net(x), y) / accumulation
        scaler.scale(loss).backward()
        total += float(loss.detach())
    scaler.unscale_(optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else math.inf)
    scaler.step(optimizer)
    scaler.update()
    return StepResult(total, float(norm))
