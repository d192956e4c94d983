"""The public API: the functions behind the command line and the notebooks.

``train`` resolves the run's config (checking that a resumed run keeps its settings)
and runs the trainer in this process, in torchrun's process group, or in N forked
processes; ``predict`` writes a complete submission.zip; ``score`` scores one.
Everything a user starts goes through here, so each check is made once.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .checkpoint import RunDir, resolve_checkpoint
from .config import Config, build_config, check_resumable, from_dict, merge, parse_overrides, read_yaml
from .data.io import read_ahead, read_header_shape, read_volume, write_volume
from .data.layout import VolumeRef, images_in
from .errors import DataError, ScrollsegError
from .launch import resolve_devices, run_processes


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
    from .engine.deadline import session_start_for_children
    from .engine.trainer import train as train_in_process

    if strategy not in ("ddp", "dp"):
        raise ScrollsegError(f"strategy {strategy!r}: use 'ddp' or 'dp' (DataParallel)")
    cfg = resolve_train_config(run, config, overrides, tuple(allow_change))
    args = (data, run, cfg, progress, strategy)
    if "WORLD_SIZE" in os.environ or strategy == "dp":
        return train_in_process(*args)  # torchrun started us, or one DataParallel process
    n = resolve_devices(devices)
    if n == 1:
        return train_in_process(*args)
    with session_start_for_children():  # the workers' --time-limit counts from this process's start
        return run_processes(train_in_process, args, n)


def _mask_stream(checkpoint: Path | str, refs: list[VolumeRef], device: torch.device, overrides: dict | None, progress: bool,
                 deadline: float | None = None):
    """``(ref, mask)`` per volume, decoding the next volumes in a thread meanwhile. With a
    ``deadline`` (epoch seconds) each volume's flip TTA is chosen to finish in time."""
    from .inference.predict import load_model, predict_masks

    model, cfg = load_model(checkpoint, device)
    for key, value in (overrides or {}).items():
        setattr(cfg.inference, key, value)
    volumes = read_ahead(refs, lambda r: r.image, cfg.data.max_voxels)
    if progress:
        from tqdm import tqdm

        volumes = tqdm(volumes, total=len(refs), desc="predict", unit="vol")
    if deadline is None:
        yield from predict_masks(model, ((ref, image, None) for ref, image in volumes), cfg, device)
    else:
        yield from _masks_in_time(model, volumes, refs, cfg, device, deadline)


def _masks_in_time(model, volumes, refs: list[VolumeRef], cfg: Config, device: torch.device, deadline: float):
    """``(ref, mask)`` with the flips of each volume from a TtaBudget, timing every volume
    from its arrival to the next one's (prediction, writing and any wait to read)."""
    from .inference.predict import predict_masks
    from .inference.time_budget import TimedForward, TtaBudget

    timed = TimedForward(model).eval()
    budget = TtaBudget(time.monotonic() + deadline - time.time(), cfg.inference.tta_flips if cfg.inference.tta else 1)
    voxels = [int(np.prod(read_header_shape(r.image, cfg.data.max_voxels))) for r in refs]
    previous = None  # (voxels, flips, started) of the volume before
    for i, (ref, image) in enumerate(volumes):
        now = time.monotonic()
        if previous is not None:
            budget.record(previous[0], previous[1], timed.seconds, now - previous[2])
            previous = None
        flips = budget.choose(voxels[i:], now)
        if flips == 0:
            yield ref, np.zeros(image.shape, np.uint8)
            continue
        timed.seconds = 0.0
        previous = (voxels[i], flips, now)
        settings = dataclasses.replace(cfg, inference=dataclasses.replace(cfg.inference, tta=flips > 1, tta_flips=flips))
        yield from predict_masks(timed, [(ref, image, None)], settings, device)
    print(f"predict: {budget.summary()}", file=sys.stderr, flush=True)


def _predict_share(checkpoint, refs: list[VolumeRef], parts: Path, overrides: dict | None, deadline: float | None = None) -> None:
    """One worker of a multi-device prediction: every world-th volume, written to ``parts``."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = torch.device("cuda", rank) if torch.cuda.is_available() else torch.device("cpu")
    for ref, mask in _mask_stream(checkpoint, refs[rank::world], device, overrides, False, deadline):
        write_volume(parts / f"{ref.id}.tif", mask)


def finish_reserve_s(volumes: int, processes: int) -> float:
    """Time kept after the last prediction: closing the zip, and with several processes
    reading their masks back into it."""
    return 30.0 + (0.5 * volumes if processes > 1 else 0.0)


def predict(
    checkpoint: Path | str,
    images: Path | str,
    out: Path | str = "submission.zip",
    csv_path: Path | str | None = None,
    device: str | torch.device | None = None,
    overrides: dict | None = None,
    progress: bool = True,
    devices: int | str = 1,
    time_limit: str | None = None,
) -> Path:
    """Predict every test volume into ``out``, written only when complete; ``devices`` > 1
    spreads the volumes over processes. ``time_limit`` (e.g. ``"8h30m"``, counted from the
    session start) lowers the flip TTA so that every volume is predicted in time."""
    from .engine.deadline import parse_duration, session_start
    from .inference.submission import SubmissionWriter

    resolve_checkpoint(checkpoint)  # fail before any work when there is none
    refs = images_in(images, csv_path)
    if not refs:
        raise DataError(f"{images}: no .tif volumes found; give the test_images folder or the dataset root")
    n = min(resolve_devices(devices), len(refs))
    deadline = session_start() + parse_duration(time_limit) - finish_reserve_s(len(refs), n) if time_limit else None
    with SubmissionWriter(out, {r.id for r in refs}) as writer:
        if n == 1:
            device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
            for ref, mask in _mask_stream(checkpoint, refs, device, overrides, progress, deadline):
                writer.add(ref.id, mask, read_header_shape(ref.image))
        else:
            parts = writer.tmp.with_name(writer.tmp.name + ".parts")
            parts.mkdir()
            try:
                run_processes(_predict_share, (checkpoint, refs, parts, overrides, deadline), n)
                for ref in refs:
                    writer.add(ref.id, read_volume(parts / f"{ref.id}.tif"), read_header_shape(ref.image))
            finally:
                shutil.rmtree(parts, ignore_errors=True)
    return Path(out)


def score(labels: Path | str, pred: Path | str, workers: int = 1) -> dict:
    """Leaderboard metric of a folder or zip of predictions against a folder of labels."""
    from .metrics.evaluate import score_predictions

    return score_predictions(labels, pred, workers)
