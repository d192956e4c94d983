"""Whole-volume prediction with a trained model, and the ``predict`` command's loop."""
from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from queue import Queue

import numpy as np
import torch

from ..checkpoint import load_checkpoint, resolve_checkpoint
from ..config import Config, InferenceConfig, from_dict
from ..data.cache import intensity_stats
from ..data.io import read_header_shape, read_volume, write_volume
from ..errors import DataError
from ..data.layout import VolumeRef, images_in
from ..models import build_model
from .postprocess import binarise
from .sliding_window import sliding_window
from .submission import SubmissionWriter
from .tta import with_flip_tta


def load_model(checkpoint: Path | str, device: torch.device) -> tuple[torch.nn.Module, Config]:
    """Rebuild the model from the config embedded in the checkpoint alone."""
    ckpt = load_checkpoint(resolve_checkpoint(checkpoint))
    cfg = from_dict(ckpt["config"])
    model = build_model(cfg.model)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), cfg


def probability_map(
    model: torch.nn.Module,
    image: np.ndarray,
    cfg: InferenceConfig,
    tile: list[int],
    device: torch.device,
    stats: tuple[float, float] | None = None,
) -> np.ndarray:
    """Surface probability [D, H, W] float32 of a uint8 volume."""
    mean, std = stats or intensity_stats(image)
    volume = ((torch.from_numpy(np.array(image, dtype=np.uint8)).float() / 255.0 - mean) / std).unsqueeze(0)
    autocast_dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float16

    @torch.inference_mode()
    def predict(batch: torch.Tensor) -> torch.Tensor:
        if device.type == "cuda":
            with torch.autocast("cuda", dtype=autocast_dtype):
                return torch.sigmoid(model(batch).float())
        return torch.sigmoid(model(batch))

    predictor = with_flip_tta(predict) if cfg.tta else predict
    batch_size = cfg.tile_batch
    while True:
        try:
            prob = sliding_window(volume, predictor, tuple(tile), cfg.overlap, batch_size, device, accumulate_device=device)
            break
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            if batch_size > 1:
                batch_size //= 2
                continue
            # one tile at a time still fails: blend on the CPU instead
            prob = sliding_window(volume, predictor, tuple(tile), cfg.overlap, 1, device, accumulate_device="cpu")
            break
    return prob[0].float().cpu().numpy()


def _prefetch(refs: list[VolumeRef], max_voxels: int, depth: int = 2):
    """Read and decode the next volumes in a thread while the current one is predicted."""
    queue: Queue = Queue(maxsize=depth)

    def work() -> None:
        for ref in refs:
            try:
                queue.put((ref, read_volume(ref.image, max_voxels), None))
            except Exception as exc:  # handed to the consumer, which raises it
                queue.put((ref, None, exc))
                return

    threading.Thread(target=work, daemon=True).start()
    for _ in refs:
        ref, image, error = queue.get()
        if error is not None:
            raise error
        yield ref, image


def predict_masks(checkpoint: Path | str, refs: list[VolumeRef], device: torch.device, overrides: dict | None, progress: bool):
    """Yield ``(ref, mask, image_shape)`` for each volume, reading ahead in a thread."""
    model, cfg = load_model(checkpoint, device)
    for key, value in (overrides or {}).items():
        setattr(cfg.inference, key, value)
    items = _prefetch(refs, cfg.data.max_voxels)
    if progress:
        from tqdm import tqdm

        items = tqdm(items, total=len(refs), desc="predict", unit="vol")
    for ref, image in items:
        prob = probability_map(model, image, cfg.inference, cfg.tile_size(), device)
        yield ref, binarise(prob, cfg.inference.threshold, cfg.inference.hysteresis_low, cfg.inference.min_component), image.shape


def _predict_share(checkpoint, refs: list[VolumeRef], parts: Path, overrides: dict | None) -> None:
    """One worker of a multi-device prediction: every world-th volume, written to ``parts``."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = torch.device("cuda", rank) if torch.cuda.is_available() else torch.device("cpu")
    for ref, mask, _ in predict_masks(checkpoint, refs[rank::world], device, overrides, progress=False):
        write_volume(parts / f"{ref.id}.tif", mask)


def predict_to_submission(
    checkpoint: Path | str,
    images: Path | str,
    out: Path | str,
    csv_path: Path | str | None = None,
    device: str | torch.device | None = None,
    overrides: dict | None = None,
    progress: bool = True,
    devices: int | str = 1,
) -> Path:
    """Predict every test volume into ``out``; ``devices`` > 1 spreads volumes over processes."""
    from ..launch import resolve_devices, run_processes

    resolve_checkpoint(checkpoint)  # fail before any work when there is none
    refs = images_in(images, csv_path)
    if not refs:
        raise DataError(f"{images}: no .tif volumes found; give the test_images folder or the dataset root")
    n = min(resolve_devices(devices), len(refs))
    with SubmissionWriter(out, {r.id for r in refs}) as writer:
        if n == 1:
            device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
            for ref, mask, shape in predict_masks(checkpoint, refs, device, overrides, progress):
                writer.add(ref.id, mask, shape)
        else:
            parts = writer.tmp.with_name(writer.tmp.name + ".parts")
            parts.mkdir()
            try:
                run_processes(_predict_share, (checkpoint, refs, parts, overrides), n)
                for ref in refs:
                    writer.add(ref.id, read_volume(parts / f"{ref.id}.tif"), read_header_shape(ref.image))
            finally:
                shutil.rmtree(parts, ignore_errors=True)
    return Path(out)
