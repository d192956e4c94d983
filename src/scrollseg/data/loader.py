"""Background loading of the sampler's batches with torch's DataLoader.

Workers produce the (step, micro-batch) items in order: item i goes to worker
i mod W and the DataLoader reads workers round-robin, so the sequence is the
same for any number of workers.
"""
from __future__ import annotations

import warnings

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .sampler import PatchSampler

# torch warns about more workers than cores when the DataLoader is built and again when it is iterated
warnings.filterwarnings("once", message="This DataLoader will create", category=UserWarning)


class StepBatches(IterableDataset):
    def __init__(self, sampler: PatchSampler, start_step: int, end_step: int, accumulation: int):
        self.sampler = sampler
        self.start_step = start_step
        self.end_step = end_step
        self.accumulation = accumulation

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        total = (self.end_step - self.start_step) * self.accumulation
        for i in range(worker, total, workers):
            step = self.start_step + i // self.accumulation
            micro = i % self.accumulation
            batch = self.sampler.batch(step, micro)
            yield step, micro, {k: torch.from_numpy(v) for k, v in batch.items()}


def make_loader(sampler: PatchSampler, start_step: int, end_step: int, accumulation: int, num_workers: int, pin_memory: bool) -> DataLoader:
    dataset = StepBatches(sampler, start_step, end_step, accumulation)
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if num_workers > 0 else None,
    )
