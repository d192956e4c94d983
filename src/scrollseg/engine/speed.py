"""Step-speed options resolved per device: channels_last_3d, torch.compile, cuDNN autotuning.

"auto" turns an option on where it is known to help (CUDA) and off on the CPU, where
compile time dominates short runs and channels_last_3d convolutions are slower.
``train.deterministic`` wins over all of them: cuDNN autotuning picks kernels by
timing, so it stays off in a deterministic run.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import TrainConfig


@dataclass(frozen=True)
class SpeedOptions:
    channels_last: bool
    compile: bool
    cudnn_benchmark: bool = False


def resolve_speed(cfg: TrainConfig, device: torch.device) -> SpeedOptions:
    def choose(value: str) -> bool:
        return device.type == "cuda" if value == "auto" else value == "on"

    return SpeedOptions(channels_last=choose(cfg.channels_last), compile=choose(cfg.compile),
                        cudnn_benchmark=device.type == "cuda" and not cfg.deterministic)


def to_memory_format(x: torch.Tensor, options: SpeedOptions) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last_3d) if options.channels_last else x


def speed_up(model: torch.nn.Module, options: SpeedOptions) -> torch.nn.Module:
    """The model to call in the training step (the parameters stay those of ``model``)."""
    torch.backends.cudnn.benchmark = options.cudnn_benchmark
    if options.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    if options.compile:
        return torch.compile(model)
    return model
