"""Pictures drawn while a run trains: after each validation, slice pictures of two
held-out volumes and their masks (kept for the run report's error maps); after each
score, progress.png."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..data.io import write_volume
from ..engine.log import read_records
from ..engine.observer import RunObserver
from .plots import progress_figure, save_figure
from .slices import volume_figure

PICTURED_VOLUMES = 2


def pictures_dir(run_dir: Path | str) -> Path:
    return Path(run_dir) / "pictures"


def picture_path(run_dir: Path | str, step: int, vid: str) -> Path:
    return pictures_dir(run_dir) / f"step-{step:08d}-{vid}.png"


class RunPictures(RunObserver):
    def validated(self, run_dir: Path, step: int, volumes: list, masks: list[np.ndarray]) -> None:
        folder = pictures_dir(run_dir)
        latest = []
        for volume, mask in list(zip(volumes, masks))[:PICTURED_VOLUMES]:
            save_figure(volume_figure(volume.image, volume.label, mask, f"{volume.id} at step {step}"), picture_path(run_dir, step, volume.id))
            write_volume(folder / f"{volume.id}-mask.tif", np.ascontiguousarray(mask, dtype=np.uint8))
            latest.append({"id": volume.id, "mask": f"{volume.id}-mask.tif", "cache_entry": str(volume.entry) if volume.entry else None})
        tmp = folder / "latest.json.tmp"
        tmp.write_text(json.dumps({"step": step, "volumes": latest}, indent=1))
        os.replace(tmp, folder / "latest.json")

    def scored(self, run_dir: Path, step: int, scores: dict) -> None:
        save_figure(progress_figure(read_records(Path(run_dir) / "metrics.jsonl")), Path(run_dir) / "progress.png")

    def finished(self, run_dir: Path, summary: dict) -> None:
        save_figure(progress_figure(read_records(Path(run_dir) / "metrics.jsonl")), Path(run_dir) / "progress.png")
