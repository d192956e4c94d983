"""Weights-only fp16 export of a run, for prediction and for sharing.

``scrollseg export RUN OUT.pt`` keeps the model's floating-point tensors in fp16 (the
weight average instead, when the run kept one), the config the model is rebuilt from, and
the post-processing ``scrollseg tune`` chose for this checkpoint (``tuned``, which
``predict`` applies unless given ``--no-tuned``), so an offline notebook predicts with the
tuned settings from this one file. No
optimizer state, RNG states or history. The file is a normal checkpoint to ``predict``
(loading casts the weights back to fp32) and about a sixth of a training checkpoint
with SGD momentum or AdamW.
"""
from __future__ import annotations

from pathlib import Path

import torch

from . import __version__
from .checkpoint import atomic_save, load_checkpoint, resolve_checkpoint
from .errors import CheckpointError
from .inference.tune import tuned_settings

FP16_MAX = float(torch.finfo(torch.float16).max)


def export_weights(source: Path | str, out: Path | str, use_tuned: bool = True, say=None) -> Path:
    """Write the fp16 weights and config of ``source`` (a run folder's checkpoint: the one
    ``scrollseg tune`` chose, else best, final or last; or a .pt file) to ``out``, with its tuned post-processing unless
    ``use_tuned`` is false; ``say`` gets a line on where those settings come from."""
    path = resolve_checkpoint(source)
    ckpt = load_checkpoint(path)
    weights = {}
    # the weight average, when the run kept one, is what was validated and what predict uses
    for name, tensor in (ckpt["ema"]["model"] if ckpt.get("ema") else ckpt["model"]).items():
        if tensor.is_floating_point():
            if tensor.numel() and tensor.abs().max().item() > FP16_MAX:
                raise CheckpointError(f"{path}: weight {name} exceeds the fp16 range; this model cannot be exported in fp16")
            tensor = tensor.half()
        weights[name] = tensor
    tuned, note = tuned_settings(path, ckpt) if use_tuned else (None, "tuned post-processing left out")
    if say:
        say(note or "no tuned post-processing (scrollseg tune RUN chooses it)")
    out = Path(out)
    atomic_save({"model": weights, "config": ckpt["config"], "step": ckpt.get("step"), "version": __version__, "exported_from": path.name,
                 "tuned": tuned}, out)
    return out
