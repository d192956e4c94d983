"""The public API: the functions behind the command line and the notebooks.

``train`` resolves the run's config (checking that a resumed run keeps its settings),
takes the run's lock and runs the trainer in this process, in torchrun's process group,
or in N forked processes; ``predict`` writes a complete submission.zip; ``score`` scores
one. Everything a user starts goes through here, so each check is made once, and every
value is checked before anything is written.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from .checkpoint import TUNABLE_CHECKPOINTS, RunDir, RunLock, load_checkpoint, resolve_checkpoint
from .config import Config, build_config, check_resumable, from_dict, merge, parse_overrides, read_yaml
from .data.io import read_ahead, read_header_shape, read_volume, write_volume
from .data.layout import VolumeRef, dataset_root, images_in
from .engine.deadline import parse_duration
from .engine.log import MetricsLog, say
from .errors import ConfigError, DataError, ScrollsegError
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
    try:
        limit = parse_duration(wanted.train.time_limit)
    except ConfigError as exc:
        raise ConfigError(f"train.time_limit (--time-limit): {exc}") from None
    if limit < 0:
        raise ConfigError(f"train.time_limit (--time-limit) {wanted.train.time_limit!r} is negative; give a duration like 11h45m")
    # training only: predict and tune may turn the recto step off for a run trained this way
    if wanted.data.ignore_verso_background and wanted.inference.recto_context <= 0:
        raise ConfigError("data.ignore_verso_background needs inference.recto_context > 0: it ignores only what the recto step drops")
    return wanted


def training_processes(devices: int | str, strategy: str | None, cfg: Config) -> int:
    """How many processes train: at most the visible GPUs; several CPU processes only on request,
    since each adds a micro-batch to the global batch while the LR stays as configured."""
    n = resolve_devices(devices)
    if n > 1 and not torch.cuda.is_available():
        if strategy is None:
            raise ScrollsegError(f"--devices {devices}: no GPU is visible, so this would train on {n} CPU processes; "
                                 f"add --strategy ddp to do that on purpose, or leave out --devices")
        cores = os.cpu_count() or 1
        crowded = ", more processes than cores, so each step is slower than in one process" if n > cores else ""
        global_batch = n * cfg.data.batch_size * cfg.optim.accumulation
        warnings.warn(f"training on {n} CPU processes ({cores} cores{crowded}): the global batch is {n} x {cfg.data.batch_size} x "
                      f"{cfg.optim.accumulation} = {global_batch} samples and optim.lr stays {cfg.optim.lr:g}; "
                      f"set optim.lr (or data.batch_size) if it was tuned for one process", stacklevel=3)
    return n


def finished_run(run: Path | str, cfg: Config):
    """The result of a run whose newest checkpoint already reached its step count (``cfg.train.steps``,
    or with a time budget the count the run planned), else None."""
    from .engine.trainer import TrainResult

    run_dir = RunDir(run)
    newest = max((step for step, _ in run_dir.step_files()), default=None)
    if newest is None or (cfg.train.steps and newest < cfg.train.steps):
        return None
    ckpt = run_dir.load_newest_valid()
    total = cfg.train.steps or (ckpt.get("planned_steps") if ckpt else 0)
    if ckpt is None or not total or ckpt["step"] < total:
        return None
    return TrainResult(run_dir.root, ckpt["step"], True, "steps", ckpt.get("best_score"))


def train(config: Config | str | dict | None, data: str | Path, run: str | Path, devices: int | str = "auto", strategy: str | None = None,
          overrides: list[str] | None = None, progress: bool = True, allow_change: tuple[str, ...] = ()):
    """Train (or resume) a run: ``scrollseg.train("tiny", "data", "runs/a", devices="auto")``.

    ``config`` is a Config, a preset name or .yaml path, a dict, or None for the run's
    saved config; ``devices`` the number of processes (``"auto"``: every GPU);
    ``strategy`` "ddp" (the default; needed explicitly for several CPU processes) or
    "dp". Returns rank 0's TrainResult. A run that another process is training is
    refused; one that has already reached its steps returns at once.
    """
    from .engine.deadline import session_start_for_children
    from .engine.trainer import train as train_in_process
    from .report.live import RunPictures

    if strategy not in (None, "ddp", "dp"):
        raise ScrollsegError(f"strategy {strategy!r}: use 'ddp' or 'dp' (DataParallel)")
    dataset_root(data)
    cfg = resolve_train_config(run, config, overrides, tuple(allow_change))
    torchrun = "WORLD_SIZE" in os.environ
    n = 1 if torchrun or strategy == "dp" else training_processes(devices, strategy, cfg)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    # rank 0 of torchrun, or this process, whose forked workers share its lock
    with RunLock(run) if main_rank else contextlib.nullcontext():
        done = finished_run(run, cfg)
        if done is not None:
            say(f"{run}: already finished at step {done.step}; use --steps M with M > {done.step} to train further", main_rank)
            return done
        args = (data, run, cfg, progress, strategy or "ddp", (RunPictures(),))
        if n == 1:
            return train_in_process(*args)
        with session_start_for_children():  # the workers' --time-limit counts from this process's start
            return run_processes(train_in_process, args, n)


def _as_list(checkpoints) -> list[Path]:
    return [Path(c) for c in checkpoints] if isinstance(checkpoints, (list, tuple)) else [Path(checkpoints)]


def predictor_config(checkpoints, overrides: dict | None = None, use_tuned: bool = True, say=None) -> Config:
    """The config to predict with, checked: the first checkpoint's, then the tuned settings
    for it (its run's ``tuned.yaml``, or those an exported file carries), then
    ``overrides``. ``say`` reports each checkpoint and where the tuned settings come from."""
    from .inference.tune import tuned_settings

    first = None
    for checkpoint in _as_list(checkpoints):
        path = resolve_checkpoint(checkpoint)
        ckpt = load_checkpoint(path)
        first = first or (path, ckpt)
        if say:
            say(describe_checkpoint(path, ckpt))
    cfg = first[1]["config"]
    settings: dict = {}
    if use_tuned:
        tuned, note = tuned_settings(*first)
        settings = tuned or {}
        if note and say:
            say(note)
        elif note and tuned is None:
            warnings.warn(note, stacklevel=3)
    return from_dict(merge(cfg, {"inference": {**settings, **(overrides or {})}}))


def _load_models(checkpoints, device: torch.device) -> list[torch.nn.Module]:
    from .inference.predict import load_model

    return [load_model(checkpoint, device)[0] for checkpoint in _as_list(checkpoints)]


def load_predictor(checkpoints, device: torch.device, overrides: dict | None = None, use_tuned: bool = True):
    """The models of one or several checkpoints (an ensemble averages them) and the config to
    predict with (see :func:`predictor_config`)."""
    return _load_models(checkpoints, device), predictor_config(checkpoints, overrides, use_tuned)


def _mask_stream(checkpoints, refs: list[VolumeRef], device: torch.device, cfg: Config, progress: bool, deadline: float | None = None):
    """``(ref, mask)`` per volume with the settings of ``cfg``, decoding the next volumes in a
    thread meanwhile. With a ``deadline`` (epoch seconds) each volume's flip TTA is chosen to finish in time."""
    from .inference.predict import predict_masks

    models = _load_models(checkpoints, device)
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


def _predict_share(checkpoints, refs: list[VolumeRef], parts: Path, cfg: Config, deadline: float | None = None) -> None:
    """One worker of a multi-device prediction: every world-th volume, written to ``parts``."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = torch.device("cuda", rank) if torch.cuda.is_available() else torch.device("cpu")
    for ref, mask in _mask_stream(checkpoints, refs[rank::world], device, cfg, False, deadline):
        write_volume(parts / f"{ref.id}.tif", mask)


def finish_reserve_s(volumes: int, processes: int) -> float:
    """Time kept after the last prediction: closing the zip, and with several processes
    reading their masks back into it."""
    return 30.0 + (0.5 * volumes if processes > 1 else 0.0)


def prediction_devices(devices: int | str | torch.device) -> tuple[int, torch.device | None]:
    """``(processes, device)``: a number or ``"auto"`` spreads volumes over processes (one per GPU);
    a device such as ``"cpu"`` or ``"cuda:1"`` predicts in this process on that device."""
    if isinstance(devices, int) or devices in (None, "auto") or str(devices).lstrip("+-").isdigit():
        return resolve_devices(devices), None
    try:
        device = torch.device(devices)
    except (RuntimeError, ValueError):
        raise ScrollsegError(f"--devices {devices!r}: give a number of processes, 'auto', or a device such as cpu or cuda:1") from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ScrollsegError(f"--devices {devices}: only {torch.cuda.device_count()} GPU(s) are visible")
    return 1, device


def describe_checkpoint(path: Path, ckpt: dict) -> str:
    """Which checkpoint a prediction uses: its path, step and the validation score logged at that step."""
    step = ckpt.get("step")
    try:
        scores = [r["val/leaderboard"] for r in MetricsLog(RunDir(path.parent.parent).metrics_path).read()
                  if r.get("step") == step and r.get("val/leaderboard") is not None]
    except ValueError:  # a log cut short mid-line
        scores = []
    score = f"validation leaderboard {scores[-1]:.4f}" if scores else "no validation score logged at that step"
    return f"checkpoint {path} (step {step}, {score})"


def predict(
    checkpoint,
    images: Path | str,
    out: Path | str = "submission.zip",
    csv_path: Path | str | None = None,
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
    over both. ``devices``: a number of processes to spread the volumes over (``"auto"``:
    every GPU), or one device such as ``"cpu"`` or ``"cuda:1"``. ``time_limit`` (e.g.
    ``"8h30m"``, counted from the session start) lowers the flip TTA so that every volume
    is predicted in time. Every setting is checked before any work.
    """
    from .engine.deadline import parse_duration, session_start
    from .inference.submission import SubmissionWriter

    cfg = predictor_config(checkpoint, overrides, use_tuned, say if progress else None)
    n, device = prediction_devices(devices)
    refs = images_in(images, csv_path)
    if not refs:
        raise DataError(f"{images}: no .tif volumes found; give the test_images folder or the dataset root")
    n = min(n, len(refs))
    deadline = session_start() + parse_duration(time_limit) - finish_reserve_s(len(refs), n) if time_limit else None
    with SubmissionWriter(out, {r.id for r in refs}) as writer:
        if n == 1:
            device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
            for ref, mask in _mask_stream(checkpoint, refs, device, cfg, progress, deadline):
                writer.add(ref.id, mask, read_header_shape(ref.image))
        else:
            parts = writer.tmp.with_name(writer.tmp.name + ".parts")
            parts.mkdir()
            try:
                run_processes(_predict_share, (checkpoint, refs, parts, cfg, deadline), n)
                for ref in refs:
                    writer.add(ref.id, read_volume(parts / f"{ref.id}.tif"), read_header_shape(ref.image))
            finally:
                shutil.rmtree(parts, ignore_errors=True)
    return Path(out)


def tune(run: Path | str, data: Path | str | None = None, workers: int | None = None, tta: bool | None = None,
         progress: bool = True, max_volumes: int | None = None) -> dict:
    """Search threshold and post-processing on the run's held-out volumes with the exact
    metric, for each of the run's candidate checkpoints (``best.pt``, chosen during training
    at the trained settings, and ``final.pt``, when they differ); saves the best checkpoint
    and settings in ``RUN/tuned.yaml``, which ``predict`` then uses. ``max_volumes`` bounds
    the time: that many held-out volumes, evenly spread over the sorted ids.

    The probability maps (with the TTA ``predict`` uses, or ``tta``) are cached in
    ``RUN/tune/<checkpoint>/`` and reused while that checkpoint stays the same."""
    from .data.layout import list_volumes
    from .inference.tune import MIN_GAIN, save_tuned, spread_subset

    root = RunDir(run)
    if not root.record_path.is_file():
        raise DataError(f"{root.root}: not a trained run (no run.json); train it first or give the run folder")
    record = json.loads(root.record_path.read_text())
    data = Path(data or record["data"])
    val_ids = set(record.get("val_ids") or [])
    refs = [r for r in list_volumes(data, "train") if r.id in val_ids]
    if not refs:
        raise DataError(f"{root.root}: the run held out no volume of {data} (train with data.val_fraction > 0 or data.folds)")
    if max_volumes is not None:
        if max_volumes < 1:
            raise ConfigError(f"--volumes {max_volumes}: tune on at least 1 volume")
        refs = spread_subset(refs, max_volumes, key=lambda r: r.id)
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    for stale in (root.root / "tune").glob("*.*"):  # maps cached by versions that kept one checkpoint's in tune/ itself
        if stale.is_file():
            stale.unlink()
    results = {}
    for checkpoint, ckpt in _tune_candidates(root):
        say(f"tuning on {len(refs)} held-out volumes of {data} with {workers} worker(s), checkpoint {checkpoint} (step {ckpt['step']})", progress)
        results[checkpoint] = _tune_checkpoint(root, checkpoint, ckpt, refs, tta, workers, progress)
    # another checkpoint than the first (best.pt) must win by the margin any other setting must
    first, *others = results
    chosen = first
    for checkpoint in others:
        if results[checkpoint]["best"].scores["leaderboard"] >= results[chosen]["best"].scores["leaderboard"] + MIN_GAIN:
            chosen = checkpoint
    result = results[chosen]
    path = save_tuned(root.root, result["best"], {"checkpoint": chosen.name, "step": result["step"], "tta": result["tta"]})
    return {**result, "path": path, "checkpoint": chosen,
            "checkpoints": {c.name: (r["step"], r["best"].scores["leaderboard"]) for c, r in results.items()}}


def _tune_candidates(root: RunDir) -> list[tuple[Path, dict]]:
    """(path, checkpoint) of best.pt and final.pt, one per step; last.pt when neither exists."""
    found: dict[int, tuple[Path, dict]] = {}
    for name in TUNABLE_CHECKPOINTS:
        path = root.checkpoints / name
        if path.is_file():
            ckpt = load_checkpoint(path)
            found.setdefault(int(ckpt["step"]), (path, ckpt))
    if not found:
        path = resolve_checkpoint(root.root)
        return [(path, load_checkpoint(path))]
    return list(found.values())


def _tune_checkpoint(root: RunDir, checkpoint: Path, ckpt: dict, refs, tta: bool | None, workers: int, progress: bool) -> dict:
    """The search for one checkpoint, on its cached (or newly predicted) probability maps."""
    from .inference.predict import predict_probabilities
    from .inference.tune import tune as search

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    models, cfg = load_predictor(checkpoint, device, {"tta": tta} if tta is not None else None, use_tuned=False)
    cache = root.root / "tune" / checkpoint.stem
    meta = {"checkpoint": checkpoint.name, "step": int(ckpt["step"]), "tta": bool(cfg.inference.tta), "ids": sorted(r.id for r in refs)}
    meta_path = cache / "probabilities.json"
    if not (meta_path.is_file() and json.loads(meta_path.read_text()) == meta):
        cache.mkdir(parents=True, exist_ok=True)
        meta_path.unlink(missing_ok=True)
        volumes = ((ref, image, None) for ref, image in read_ahead(refs, lambda r: r.image, cfg.data.max_voxels))
        for ref, prob in predict_probabilities(models, volumes, cfg, device):
            np.save(cache / f"{ref.id}.npy", prob.astype(np.float16))
        meta_path.write_text(json.dumps(meta))
    pairs = [(cache / f"{r.id}.npy", r.label, r.image) for r in refs]
    with Progress(total=None, desc=f"tune {checkpoint.name}", unit="setting", enabled=progress) as bar:
        trials, best = search(pairs, cfg.inference, workers, progress=lambda trial: bar.update(1))
    return {"trials": trials, "best": best, "start": trials[0], "step": meta["step"], "tta": meta["tta"]}


def label_folder(labels: Path | str) -> Path:
    """``labels``, or the ``test_labels/`` (else ``train_labels/``) of a dataset root given instead."""
    labels = Path(labels)
    if labels.is_dir() and not any(labels.glob("*.tif")):
        for name in ("test_labels", "train_labels"):
            if any((labels / name).glob("*.tif")):
                say(f"scoring against {labels / name} (the labels of the dataset root {labels})")
                return labels / name
    return labels


def score(labels: Path | str, pred: Path | str, workers: int = 1, explain: Path | str | None = None, progress: bool = True) -> dict:
    """Leaderboard metric of a folder or zip of predictions against a folder of labels (or a
    dataset root, whose test_labels/ or else train_labels/ are used); ``explain``: a folder
    that gets, per volume, the metric's error maps, counts and a picture."""
    from .metrics.evaluate import score_predictions
    from .report.error_maps import ExplainInto

    if workers < 1:
        raise ScrollsegError(f"--workers {workers}: give at least 1 process")
    labels = label_folder(labels)
    return score_predictions(labels, pred, workers, ExplainInto.beside_labels(explain, labels) if explain else None, progress)
