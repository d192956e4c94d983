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
    from .engine.deadline import session_start_for_children
    from .engine.trainer import train as train_in_process
    from .report.live import RunPictures

    if strategy not in ("ddp", "dp"):
        raise ScrollsegError(f"strategy {strategy!r}: use 'ddp' or 'dp' (DataParallel)")
    cfg = resolve_train_config(run, config, overrides, tuple(allow_change))
    args = (data, run, cfg, progress, strategy, (RunPictures(),))
    if "WORLD_SIZE" in os.environ or strategy == "dp":
        return train_in_process(*args)  # torchrun started us, or one DataParallel process
    n = resolve_devices(devices)
    if n == 1:
        return train_in_process(*args)
    with session_start_for_children():  # the workers' --time-limit counts from this process's start
        return run_processes(train_in_process, args, n)


def _as_list(checkpoints) -> list[Path]:
    return [Path(c) for c in checkpoints] if isinstance(checkpoints, (list, tuple)) else [Path(checkpoints)]


def load_predictor(checkpoints, device: torch.device, overrides: dict | None = None, use_tuned: bool = True, say=None):
    """The models of one or several checkpoints (an ensemble averages them) and the config to
    predict with: the first checkpoint's, then its run's tuned settings, then ``overrides``."""
    from .checkpoint import load_checkpoint
    from .inference.predict import load_model
    from .inference.tune import tuned_settings

    models, cfg = [], None
    for checkpoint in _as_list(checkpoints):
        model, model_cfg = load_model(checkpoint, device)
        models.append(model)
        cfg = cfg or model_cfg
        if say:
            path = resolve_checkpoint(checkpoint)
            meta = load_checkpoint(path)
            best = meta.get("best_score")
            say(f"checkpoint {path} (step {meta.get('step')}" + (f", validation score {best:.4f})" if best is not None else ")"))
    tuned = tuned_settings(_as_list(checkpoints)[0]) if use_tuned else None
    if tuned:
        settings, path = tuned
        for key, value in settings.items():
            setattr(cfg.inference, key, value)
        if say:
            say(f"post-processing tuned in {path}: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    for key, value in (overrides or {}).items():
        setattr(cfg.inference, key, value)
    from .config import validate

    validate(cfg)
    return models, cfg


def _mask_stream(checkpoints, refs: list[VolumeRef], device: torch.device, overrides: dict | None, progress: bool, use_tuned: bool = True,
                 deadline: float | None = None):
    """``(ref, mask)`` per volume, decoding the next volumes in a thread meanwhile. With a
    ``deadline`` (epoch seconds) each volume's flip TTA is chosen to finish in time."""
    from .engine.log import say
    from .inference.predict import predict_masks

    models, cfg = load_predictor(checkpoints, device, overrides, use_tuned, say if progress else None)
    volumes = Progress(read_ahead(refs, lambda r: r.image, cfg.data.max_voxels), total=len(refs), desc="predict", unit="vol", enabled=progress)
    if deadline is None:
        yield from predict_masks(models, ((ref, image, None) for ref, image in volumes), cfg, device, progress)
    else:
        yield from _masks_in_time(models, volumes, refs, cfg, device, deadline, progress)


def _masks_in_time(models: list[torch.nn.Module], volumes, refs: list[VolumeRef], cfg: Config, device: torch.device, deadline: float,
                   progress: bool = False):
    """``(ref, mask)`` with the flips of each volume from a TtaBudget, timing every volume
    from its arrival to the next one's (prediction, writing and any wait to read); the
    forward time is that of all the ensemble's models together."""
    from .inference.predict import predict_masks
    from .inference.time_budget import TimedForward, TtaBudget

    timed = [TimedForward(model).eval() for model in models]
    budget = TtaBudget(time.monotonic() + deadline - time.time(), cfg.inference.tta_flips if cfg.inference.tta else 1)
    voxels = [int(np.prod(read_header_shape(r.image, cfg.data.max_voxels))) for r in refs]
    previous = None  # (voxels, flips, started) of the volume before
    for i, (ref, image) in enumerate(volumes):
        now = time.monotonic()
        if previous is not None:
            budget.record(previous[0], previous[1], sum(t.seconds for t in timed), now - previous[2])
            previous = None
        flips = budget.choose(voxels[i:], now)
        if flips == 0:
            yield ref, np.zeros(image.shape, np.uint8)
            continue
        for t in timed:
            t.seconds = 0.0
        previous = (voxels[i], flips, now)
        settings = dataclasses.replace(cfg, inference=dataclasses.replace(cfg.inference, tta=flips > 1, tta_flips=flips))
        yield from predict_masks(timed, [(ref, image, None)], settings, device, progress)
    print(f"predict: {budget.summary()}", file=sys.stderr, flush=True)


def _predict_share(checkpoints, refs: list[VolumeRef], parts: Path, overrides: dict | None, use_tuned: bool,
                   deadline: float | None = None) -> None:
    """One worker of a multi-device prediction: every world-th volume, written to ``parts``."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = torch.device("cuda", rank) if torch.cuda.is_available() else torch.device("cpu")
    for ref, mask in _mask_stream(checkpoints, refs[rank::world], device, overrides, False, use_tuned, deadline):
        write_volume(parts / f"{ref.id}.tif", mask)


def finish_reserve_s(volumes: int, processes: int) -> float:
    """Time kept after the last prediction: closing the zip, and with several processes
    reading their masks back into it."""
    return 30.0 + (0.5 * volumes if processes > 1 else 0.0)


def predict(
    checkpoint,
    images: Path | str,
    out: Path | str = "submission.zip",
    csv_path: Path | str | None = None,
    device: str | torch.device | None = None,
    overrides: dict | None = None,
    progress: bool = True,
    devices: int | str = 1,
    use_tuned: bool = True,
    time_limit: str | None = None,
) -> Path:
    """Predict every test volume into ``out``, written only when complete.

    ``checkpoint`` is a run folder or .pt file, or a list of them (an ensemble: their
    probabilities are averaged before post-processing). The run's ``tuned.yaml`` (from
    ``tune``) is used unless ``use_tuned`` is false; ``overrides`` (inference settings) win
    over both. ``devices`` > 1 spreads the volumes over processes. ``time_limit`` (e.g.
    ``"8h30m"``, counted from the session start) lowers the flip TTA so that every volume
    is predicted in time.
    """
    from .engine.deadline import parse_duration, session_start
    from .inference.submission import SubmissionWriter

    for c in _as_list(checkpoint):
        resolve_checkpoint(c)  # fail before any work when one is missing
    refs = images_in(images, csv_path)
    if not refs:
        raise DataError(f"{images}: no .tif volumes found; give the test_images folder or the dataset root")
    n = min(resolve_devices(devices), len(refs))
    deadline = session_start() + parse_duration(time_limit) - finish_reserve_s(len(refs), n) if time_limit else None
    with SubmissionWriter(out, {r.id for r in refs}) as writer:
        if n == 1:
            device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
            for ref, mask in _mask_stream(checkpoint, refs, device, overrides, progress, use_tuned, deadline):
                writer.add(ref.id, mask, read_header_shape(ref.image))
        else:
            parts = writer.tmp.with_name(writer.tmp.name + ".parts")
            parts.mkdir()
            try:
                run_processes(_predict_share, (checkpoint, refs, parts, overrides, use_tuned, deadline), n)
                for ref in refs:
                    writer.add(ref.id, read_volume(parts / f"{ref.id}.tif"), read_header_shape(ref.image))
            finally:
                shutil.rmtree(parts, ignore_errors=True)
    return Path(out)


def tune(run: Path | str, data: Path | str | None = None, workers: int | None = None, tta: bool | None = None,
         progress: bool = True) -> dict:
    """Search threshold and post-processing on the run's held-out volumes with the exact
    metric; saves the best in ``RUN/tuned.yaml``, which ``predict`` then uses.

    The probability maps (with the TTA ``predict`` uses, or ``tta``) are cached in
    ``RUN/tune/`` and reused while the checkpoint stays the same."""
    import json

    import numpy as np

    from .checkpoint import load_checkpoint
    from .data.layout import list_volumes
    from .engine.log import say
    from .inference.predict import predict_probabilities
    from .inference.tune import best_trial, save_tuned, tune as search

    root = RunDir(run)
    if not root.record_path.is_file():
        raise DataError(f"{root.root}: not a trained run (no run.json); train it first or give the run folder")
    record = json.loads(root.record_path.read_text())
    data = Path(data or record["data"])
    val_ids = set(record.get("val_ids") or [])
    refs = [r for r in list_volumes(data, "train") if r.id in val_ids]
    if not refs:
        raise DataError(f"{root.root}: the run held out no volume of {data} (train with data.val_fraction > 0 or data.folds)")
    checkpoint = resolve_checkpoint(root.root)
    ckpt = load_checkpoint(checkpoint)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    models, cfg = load_predictor(checkpoint, device, {"tta": tta} if tta is not None else None, use_tuned=False)
    cache = root.root / "tune"
    meta = {"checkpoint": str(checkpoint), "step": int(ckpt["step"]), "tta": bool(cfg.inference.tta), "ids": sorted(val_ids)}
    meta_path = cache / "probabilities.json"
    if not (meta_path.is_file() and json.loads(meta_path.read_text()) == meta):
        cache.mkdir(parents=True, exist_ok=True)
        meta_path.unlink(missing_ok=True)
        volumes = ((ref, image, None) for ref, image in read_ahead(refs, lambda r: r.image, cfg.data.max_voxels))
        for ref, prob in predict_probabilities(models, volumes, cfg, device):
            np.save(cache / f"{ref.id}.npy", prob.astype(np.float16))
        meta_path.write_text(json.dumps(meta))
    pairs = [(cache / f"{r.id}.npy", r.label) for r in refs]
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    say(f"tuning on {len(refs)} held-out volumes of {data} with {workers} worker(s), checkpoint {checkpoint} (step {meta['step']})", progress)
    with Progress(total=None, desc="tune", unit="setting", enabled=progress) as bar:
        trials = search(pairs, cfg.inference, workers, progress=lambda trial: bar.update(1))
    best = best_trial(trials)
    start = trials[0]
    path = save_tuned(root.root, best, {"checkpoint": str(checkpoint), "step": meta["step"], "tta": meta["tta"]})
    return {"trials": trials, "best": best, "start": start, "path": path}


def score(labels: Path | str, pred: Path | str, workers: int = 1, explain: Path | str | None = None, progress: bool = True) -> dict:
    """Leaderboard metric of a folder or zip of predictions against a folder of labels;
    ``explain``: a folder that gets, per volume, the metric's error maps, counts and a picture."""
    from .metrics.evaluate import score_predictions
    from .report.error_maps import ExplainInto

    return score_predictions(labels, pred, workers, ExplainInto.beside_labels(explain, labels) if explain else None, progress)
