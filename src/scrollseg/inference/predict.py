"""Whole-volume prediction: rebuild a model from its checkpoint, blend its tiles into a
probability map, and turn the volumes of a list into probability maps or masks.

These are the primitives that validation, ``predict`` and ``tune`` share; reading the
test set ahead, spreading it over processes and writing the zip live in ``scrollseg.api``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from ..checkpoint import load_checkpoint, resolve_checkpoint
from ..config import Config, InferenceConfig, from_dict
from ..data.cache import intensity_stats
from ..models import build_model
from ..precision import resolve_precision
from .postprocess import postprocess
from .sliding_window import sliding_window
from .tta import FLIP_SETS, with_flip_tta

# (key, uint8 image, (mean, std) or None to compute them from the image)
VolumeItem = tuple[object, np.ndarray, "tuple[float, float] | None"]


def load_model(checkpoint: Path | str, device: torch.device) -> tuple[torch.nn.Module, Config]:
    """Rebuild the model from the config embedded in the checkpoint alone."""
    ckpt = load_checkpoint(resolve_checkpoint(checkpoint))
    cfg = from_dict(ckpt["config"])
    model = build_model(cfg.model)
    # the weight average, when the run kept one, is what was validated
    model.load_state_dict(ckpt["ema"]["model"] if ckpt.get("ema") else ckpt["model"])
    return model.to(device).eval(), cfg


def probability_map(
    model: torch.nn.Module | Sequence[torch.nn.Module],
    image: np.ndarray,
    cfg: InferenceConfig,
    tile: list[int],
    device: torch.device,
    stats: tuple[float, float] | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Surface probability [D, H, W] float32 of a uint8 volume; ``progress`` shows its tiles.
    With several models (an ensemble) each batch of tiles goes through every model and the
    probabilities are averaged."""
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    mean, std = stats or intensity_stats(image)
    volume = ((torch.from_numpy(np.array(image, dtype=np.uint8)).float() / 255.0 - mean) / std).unsqueeze(0)
    precision = resolve_precision("auto", device)

    @torch.inference_mode()
    def predict(batch: torch.Tensor) -> torch.Tensor:
        with precision.autocast():
            return torch.stack([torch.sigmoid(m(batch).float()) for m in models]).mean(0)

    predictor = with_flip_tta(predict, FLIP_SETS[: cfg.tta_flips]) if cfg.tta and cfg.tta_flips > 1 else predict
    batch_size = cfg.tile_batch
    while True:
        try:
            prob = sliding_window(volume, predictor, tuple(tile), cfg.overlap, batch_size, device, accumulate_device=device, progress=progress)
            break
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            if batch_size > 1:
                batch_size //= 2
                continue
            # one tile at a time still fails: blend on the CPU instead
            prob = sliding_window(volume, predictor, tuple(tile), cfg.overlap, 1, device, accumulate_device="cpu", progress=progress)
            break
    return prob[0].float().cpu().numpy()


def to_mask(prob: np.ndarray, cfg: InferenceConfig, image: np.ndarray | None = None) -> np.ndarray:
    """The configured threshold and post-processing steps applied to a probability map of ``image``."""
    return postprocess(prob, cfg, image)


def predict_probabilities(model: torch.nn.Module | Sequence[torch.nn.Module], volumes: Iterable[VolumeItem], cfg: Config,
                          device: torch.device, progress: bool = False) -> Iterator[tuple[object, np.ndarray]]:
    """``(key, probability map)`` for each volume, with ``cfg.inference`` (TTA included); ``progress`` shows each volume's tiles."""
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    was_training = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        for key, image, stats in volumes:
            yield key, probability_map(models, image, cfg.inference, cfg.tile_size(), device, stats, progress)
    finally:
        for m, mode in zip(models, was_training):
            m.train(mode)


def predict_masks(model: torch.nn.Module | Sequence[torch.nn.Module], volumes: Iterable[VolumeItem], cfg: Config, device: torch.device,
                  progress: bool = False) -> Iterator[tuple[object, np.ndarray]]:
    """``(key, uint8 mask)`` for each volume: probability map, threshold, post-processing."""
    current: dict[str, np.ndarray] = {}

    def remembered():  # the image of the map being post-processed (predict_probabilities takes one volume at a time)
        for key, image, stats in volumes:
            current["image"] = image
            yield key, image, stats

    for key, prob in predict_probabilities(model, remembered(), cfg, device, progress):
        yield key, to_mask(prob, cfg.inference, current["image"])


def volume_items(images: Sequence[np.ndarray], stats: Sequence[tuple[float, float] | None] | None = None) -> list[VolumeItem]:
    """Items keyed by position, for volumes already in memory."""
    stats = stats or [None] * len(images)
    return [(i, image, s) for i, (image, s) in enumerate(zip(images, stats))]
