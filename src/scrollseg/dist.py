"""Process-group facts: rank, world size, local device, barriers and reductions.

A torchrun launch is recognised from its environment (RANK, WORLD_SIZE,
LOCAL_RANK); NCCL is used on GPUs and gloo on the CPU. Everything works
unchanged in a single process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def from_environment() -> DistInfo:
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        return DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    return DistInfo()


def init(info: DistInfo) -> torch.device:
    """Join the process group (when distributed) and return this process's device."""
    if torch.cuda.is_available():
        device = torch.device("cuda", info.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if info.enabled and not tdist.is_initialized():
        tdist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=info.rank, world_size=info.world)
    return device


def barrier(info: DistInfo) -> None:
    if info.enabled and tdist.is_initialized():
        tdist.barrier()


def broadcast_flag(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank when any rank says True (e.g. a stop signal)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_gather_object(obj, info: DistInfo) -> list:
    if not info.enabled:
        return [obj]
    out = [None] * info.world
    tdist.all_gather_object(out, obj)
    return out


def shutdown(info: DistInfo) -> None:
    if info.enabled and tdist.is_initialized():
        tdist.destroy_process_group()
