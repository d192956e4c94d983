"""The public API: the functions behind the command line and the notebooks.

``train`` resolves the run's config (checking that a resumed run keeps its settings)
and runs the trainer in this process, in torchrun's process group, or in N forked
processes; ``predict`` writes a complete submission.zip; ``score`` scores one.
Everything a user starts goes through here, so each check is made once.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from .checkpoint import RunDir, resolve_checkpoint
from .config import Config, build_config, check_resumable, from_dict, merge, parse_overrides, read_yaml
from .data.io import read_ahead, read_header_shape, read_volume, write_volume
from .data.layout import VolumeRef, images_in
from .errors import DataError, ScrollsegError
from .launch import resolve_devices, run_processes
from .progress import Progress


def resolve_train_config(run: Path | str, config: Config | str | dict | None = None, overrides: list[str] | None = None,
                         allow_change: tuple[str, ...] = ()) -> Config:
    """The config a run trains with: ``config`` (a Config, a preset name or .yaml path, or a
    dict) or else the run's saved config (else the ``default`` preset), with ``overrides``
    on top. A run that has checkpoints refuses changes beyond those that may differ
    between sessions (budgets, bookkeeping, inference) and ``allow_change``."""
    overrides = list(overrides or [])
    saved_path = RunDir(run).config_path
    saved = from_dict(read_yaml(saved_path)) if saved_path.is_file() else None
    if isinstance(config, Config):
        wanted = from_dict(merge(config.to_dict(), parse_overrides(overrides)))
    elif isinstance(config, dict):
        wanted = from_dict(merge(config, parse_overrides(overrides)))
    elif config is not None:
        wanted = build_config(str(config), overrides)
    elif saved is not None:
        wanted = from_dict(merge(saved.to_dict(), parse_overrides(overrides)))
    else:
        wanted = build_config("default", overrides)
    if saved is not None and RunDir(run).resume_candidates():  # a run with nothing saved may start over
        check_resumable(saved, wanted, allow_change, saved_path)
    return wanted


def train(config: Config | str | dict | None, data: str | Path, run: str | Path, devices: int | str = "auto", strategy: str = "ddp",
          overrides: list[str] | None = None, progress: bool = True, allow_change: tuple[str, ...] = ()):
    """Train (or resume) a run: ``scrollseg.train("tiny", "data", "runs/a", devices="auto")``.

    ``config`` is a Config, a preset name or .yaml path, a dict, or None for the run's
    saved config; ``devices`` the number of processes (``"auto"``: every GPU). Returns
    rank 0's TrainResult.
    """
    from .engine.trainer import train as train_in_process
    from .report.live import RunPictures

    if strategy not in ("ddp", "dp"):
        raise ScrollsegError(f"strategy {strategy!r}: use 'ddp' or 'dp' (DataParallel)")
    cfg = resolve_train_config(run, config, overrides, tuple(allow_change))
    args = (data, run, cfg, progress, strategy, (RunPictures(),))
    if "WORLD_SIZE" in os.environ or strategy == "dp":
        return train_in_process(*args)  # torchrun started us, or one DataParallel process
    n = resolve_devices(devices)
    return train_in_process(*args) if n == 1 else run_processes(train_in_process, args, n)


def _mask_stream(checkpoint: Path | str, refs: list[VolumeRef], device: torch.device, overrides: dict | None, progress: bool):
    """``(ref, mask)`` per volume, decoding the next volumes in a thread meanwhile."""
    from .inference.predict import load_model, predict_masks

    model, cfg = load_model(checkpoint, device)
    for key, value in (overrides or {}).items():
        setattr(cfg.inference, key, value)
    volumes = ((ref, image, None) for ref, image in read_ahead(refs, lambda r: r.image, cfg.data.max_voxels))
    yield from predict_masks(model, Progress(volumes, total=len(refs), desc="predict", unit="vol", enabled=progress), cfg, device, progress)


def _predict_share(checkpoint, refs: list[VolumeRef], parts: Path, overrides: dict | None) -> None:
    """One worker of a multi-device prediction: every world-th volume, written to ``parts``."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = torch.device("cuda", rank) if torch.cuda.is_available() else torch.device("cpu")
    for ref, mask in _mask_stream(checkpoint, refs[rank::world], device, overrides, progress=False):
        write_volume(parts / f"{ref.id}.tif", mask)


def predict(
    checkpoint: Path | str,
    images: Path | str,
    out: Path | str = "submission.zip",
    csv_path: Path | str | None = None,
    device: str | torch.device | None = None,
    overrides: dict | None = None,
    progress: bool = True,
    devices: int | str = 1,
) -> Path:
    """Predict every test volume into ``out``, written only when complete; ``devices`` > 1
    spreads the volumes over processes."""
    from .inference.submission import SubmissionWriter

    resolve_checkpoint(checkpoint)  # fail before any work when there is none
    refs = images_in(images, csv_path)
    if not refs:
        raise DataError(f"{images}: no .tif volumes found; give the test_images folder or the dataset root")
    n = min(resolve_devices(devices), len(refs))
    with SubmissionWriter(out, {r.id for r in refs}) as writer:
        if n == 1:
            device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
            for ref, mask in _mask_stream(checkpoint, refs, device, overrides, progress):
                writer.add(ref.id, mask, read_header_shape(ref.image))
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


def score(labels: Path | str, pred: Path | str, workers: int = 1, explain: Path | str | None = None, progress: bool = True) -> dict:
    """Leaderboard metric of a folder or zip of predictions against a folder of labels;
    ``explain``: a folder that gets, per volume, the metric's error maps, counts and a picture."""
    from .metrics.evaluate import score_predictions
    from .report.error_maps import ExplainInto

    return score_predictions(labels, pred, workers, ExplainInto.beside_labels(explain, labels) if explain else None, progress)
