"""Mixed precision, chosen in one place for training and inference: bf16 where the GPU
supports it, fp16 (with a GradScaler when training) where not; on the CPU bf16 where it
has bf16 matrix units (AMX or AVX512-BF16: a time budget fits 2.4 times the tiny preset's
steps there, see docs/quality.md), else fp32 (bf16 emulated in software is slower than fp32)."""
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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products in hardware (AMX tiles or AVX512-BF16)."""
    probes = (getattr(torch.cpu, "_is_amx_tile_supported", None), getattr(torch.cpu, "_is_avx512_bf16_supported", None))
    return any(probe is not None and probe() for probe in probes)


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """``auto``: bf16 on GPUs that support it, else fp16; on the CPU bf16 where it is native,
    else fp32. An explicit ``bf16`` is honoured on any CPU; fp16 is GPU-only."""
    if device.type != "cuda":
        native = requested == "auto" and device.type == "cpu" and cpu_has_native_bf16()
        return Precision("bf16" if requested == "bf16" or native else "fp32", device.type)
    if requested == "auto":
        return Precision("bf16" if torch.cuda.is_bf16_supported() else "fp16", "cuda")
    if requested == "bf16" and not torch.cuda.is_bf16_supported():
        return Precision("fp16", "cuda")
    return Precision(requested, "cuda")
