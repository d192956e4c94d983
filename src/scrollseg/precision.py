"""Mixed precision, chosen in one place for training and inference: bf16 where the GPU
supports it, fp16 (with a GradScaler when training) where not, fp32 on the CPU."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Precision:
    name: str  # "bf16", "fp16" or "fp32"
    device_type: str

    @property
    def dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    @property
    def needs_scaler(self) -> bool:
        return self.name == "fp16"

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """``auto``: bf16 on GPUs that support it, else fp16; fp32 on the CPU. An explicit
    ``bf16`` is honoured on the CPU too (autocast supports it there); fp16 is GPU-only."""
    if device.type != "cuda":
        return Precision("bf16" if requested == "bf16" else "fp32", device.type)
    if requested == "auto":
        return Precision("bf16" if torch.cuda.is_bf16_supported() else "fp16", "cuda")
    if requested == "bf16" and not torch.cuda.is_bf16_supported():
        return Precision("fp16", "cuda")
    return Precision(requested, "cuda")
