"""What a dataset needs on the machine at hand, before a run starts: disk for each data
path, memory, training steps per hour and the sessions a step budget takes, and the
time to predict a test set at each flip-TTA level.

Counts, shapes and bytes come from the dataset's TIFF headers and sizes. The rest is
measured here: one volume decoded and cached in each form, a few training steps of the
preset's model on random patches (after one warm-up step, which absorbs compilation),
and one volume of the test set's most common shape predicted with one flip, its
forward passes timed apart from the rest. Estimates for more GPUs than were measured
assume a DDP step 10% slower than a single-device one with one micro-batch per GPU.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from .config import build_config
from .data.cache import FREE_SPACE_RESERVE, INDEX_BYTES, MODES, VolumeCache, decoded_bytes, default_cache_dir, default_workers, \
    free_bytes, source_bytes
from .data.io import read_header_shape, read_volume
from .data.layout import images_in, list_volumes
from .engine.deadline import Clock, checkpoint_estimate_s, parse_duration
from .engine.speed import resolve_speed, speed_up, to_memory_format
from .engine.step import optimizer_step
from .engine.trainer import make_optimizer
from .errors import DataError
from .inference.predict import probability_map
from .inference.time_budget import TimedForward
from .inference.tta import TTA_LEVELS
from .losses import segmentation_loss
from .models import build_model
from .precision import resolve_precision

DDP_OVERHEAD = 1.1
SUBMISSION_LIMIT = "8h30m"  # Kaggle's offline submission notebooks stop at 9 hours


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def measure_cache(ref, max_voxels: int) -> dict:
    """Seconds to decode one volume, and seconds and bytes to cache it in each form."""
    started = time.perf_counter()
    read_volume(ref.image, max_voxels)
    read_volume(ref.label, max_voxels)
    out = {"decode_s": time.perf_counter() - started}
    with tempfile.TemporaryDirectory() as folder:
        for mode in MODES:
            cache = VolumeCache(folder, max_voxels, mode)
            started = time.perf_counter()
            cache.build([ref], workers=1, progress=False)
            out[f"{mode}_build_s"] = time.perf_counter() - started
            out[f"{mode}_bytes"] = sum(p.stat().st_size for p in cache.entry(ref).iterdir())
    return out


def measure_steps(cfg, device: torch.device, steps: int) -> float:
    """Seconds per optimizer step of the preset's model and micro-batch on ``device``."""
    torch.manual_seed(0)
    model = build_model(cfg.model).to(device)
    speed = resolve_speed(cfg.train, device)
    net = speed_up(model, speed)
    optimizer = make_optimizer(model, cfg, device)
    precision = resolve_precision(cfg.train.precision, device)
    scaler = torch.amp.GradScaler("cuda", enabled=precision.needs_scaler)
    x = to_memory_format(torch.randn(cfg.data.batch_size, 1, *cfg.data.patch_size, device=device), speed)
    y = torch.randint(0, 3, (cfg.data.batch_size, 1, *cfg.data.patch_size), dtype=torch.uint8, device=device)

    def step():
        optimizer_step(net, optimizer, scaler, precision, lambda out, label: segmentation_loss(out, label, cfg.loss), [(x, y)], 1,
                       cfg.optim.lr, cfg.optim.grad_clip)

    step()  # warm-up: compilation, cuDNN autotuning, allocator
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / steps


def measure_prediction(cfg, shape, device: torch.device) -> tuple[float, float]:
    """(seconds outside the model, seconds of forward passes) to predict one volume with one flip."""
    model = TimedForward(build_model(cfg.model).to(device)).eval()
    image = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    started = time.perf_counter()
    probability_map(model, image, dataclasses.replace(cfg.inference, tta=False), cfg.tile_size(), device)
    total = time.perf_counter() - started
    return total - model.seconds, model.seconds


def make_plan(data: Path | str, preset: str = "default", hours: float = 12.0, gpus: int | None = None, test_volumes: int | None = None,
              steps_to_time: int = 3, cache_dir: str | None = None) -> dict:
    cfg = build_config(preset)
    refs = list_volumes(data, "train")
    if not refs:
        raise DataError(f"{data}: no training volumes to plan for; check the folder")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpus = gpus or max(1, torch.cuda.device_count())
    shapes = Counter(tuple(read_header_shape(r.image, cfg.data.max_voxels)) for r in refs)
    tests = images_in(data) if (Path(data) / "test_images").is_dir() else []
    test_shapes = Counter(tuple(read_header_shape(r.image, cfg.data.max_voxels)) for r in tests) or shapes
    n_test = test_volumes or len(tests) or 1
    n, sample = len(refs), max(refs, key=source_bytes)

    cache = measure_cache(sample, cfg.data.max_voxels)
    scale = sum(source_bytes(r) for r in refs) / source_bytes(sample)  # the sample's share of the data, by TIFF bytes
    disk = {"decoded": decoded_bytes(refs, cfg.data.max_voxels), "compressed": int(cache["compressed_bytes"] * scale), "none": INDEX_BYTES * n}
    workers = default_workers()
    build_s = {mode: (cache[f"{mode}_build_s"]) * scale / workers for mode in MODES}
    folder = Path(cache_dir) if cache_dir else default_cache_dir(Path.cwd() / "run")
    free = free_bytes(folder)
    auto = next((m for m in ("decoded", "compressed") if disk[m] + FREE_SPACE_RESERVE <= free), "none")

    voxels = int(np.prod(shapes.most_common(1)[0][0]))
    loader_workers = cfg.data.num_workers * gpus
    ram = {"decoded": 0, "compressed": 0, "none": loader_workers * cfg.data.volumes_in_memory * 2 * voxels}
    ram_build = workers * 4 * voxels  # image, label and the padded surface mask while a volume is cached

    step_s = measure_steps(cfg, device, steps_to_time)
    step_s_all = step_s * (DDP_OVERHEAD if gpus > 1 else 1.0)
    session_s = hours * 3600
    clock = Clock(0, "", 0, checkpoint_estimate_s(sum(p.numel() * 4 for p in build_model(cfg.model).parameters())))
    usable = {mode: max(session_s - build_s[mode] - clock.reserve_s(), 0.0) for mode in MODES}
    steps_per_session = {mode: int(usable[mode] / step_s_all) for mode in MODES}

    test_shape = test_shapes.most_common(1)[0][0]
    fixed_s, forward_s = measure_prediction(cfg, test_shape, device)
    per_volume = {level: fixed_s + level * forward_s for level in TTA_LEVELS}
    per_test = {level: per_volume[level] * n_test / gpus for level in TTA_LEVELS}

    return {
        "data": str(data), "preset": preset, "device": str(device), "gpus": gpus,
        "train_volumes": n, "train_shapes": {"x".join(map(str, s)): c for s, c in shapes.most_common()},
        "train_tiff_bytes": sum(source_bytes(r) for r in refs), "test_volumes": n_test, "test_shape": list(test_shape),
        "cache_folder": str(folder), "free_bytes": free, "auto_mode": auto, "disk_bytes": disk, "build_s": build_s, "build_workers": workers,
        "decode_s_per_volume": cache["decode_s"], "ram_bytes": ram, "ram_build_bytes": ram_build, "machine_ram_bytes": _memory_bytes(),
        "global_batch": cfg.data.batch_size * gpus * cfg.optim.accumulation, "step_s": step_s, "steps_per_hour": 3600 / step_s_all,
        "planned_steps": cfg.train.steps, "session_hours": hours, "steps_per_session": steps_per_session,
        "sessions": {mode: (math.ceil(cfg.train.steps / s) if s else None) for mode, s in steps_per_session.items()},
        "predict_fixed_s": fixed_s, "predict_forward_s_per_flip": forward_s, "predict_s_per_volume": per_volume, "predict_s_total": per_test,
    }


def format_plan(p: dict) -> str:
    mode_line = "  ".join(f"{m} {_gb(p['disk_bytes'][m])} (build {_hours(p['build_s'][m])})" for m in MODES)
    ram = ", ".join(f"{m} {_gb(b)}" if b else f"{m} patches only" for m, b in p["ram_bytes"].items())
    sessions = ", ".join(f"{m}: {p['steps_per_session'][m]} steps -> {p['sessions'][m] or 'never'}" for m in MODES)
    predict = ", ".join(f"{level} flip{'s' if level > 1 else ''} {_hours(p['predict_s_total'][level])}" for level in TTA_LEVELS)
    limit_s = parse_duration(SUBMISSION_LIMIT)
    fits = next((level for level in TTA_LEVELS if p["predict_s_total"][level] <= limit_s), None)
    shapes = ", ".join(f"{c} x {s}" for s, c in list(p["train_shapes"].items())[:3])
    return "\n".join([
        f"dataset   {p['data']}: {p['train_volumes']} train volumes ({shapes}), {_gb(p['train_tiff_bytes'])} as TIFFs; "
        f"{p['test_volumes']} test volume(s) of {'x'.join(map(str, p['test_shape']))}",
        f"disk      {mode_line}  ({p['build_workers']} build processes; decode {p['decode_s_per_volume']:.2f} s per volume)",
        f"          {_gb(p['free_bytes'])} free in {p['cache_folder']} -> data.cache_mode=auto picks {p['auto_mode']}",
        f"memory    loader: {ram}; cache build {_gb(p['ram_build_bytes'])}; this machine has {_gb(p['machine_ram_bytes'])}",
        f"train     {p['step_s']:.3f} s per step on {p['device']} (preset {p['preset']}, global batch {p['global_batch']} on {p['gpus']} device(s)) "
        f"-> {p['steps_per_hour']:.0f} steps/hour",
        f"sessions  {p['planned_steps']} steps in {p['session_hours']:g} h sessions (less the cache build and the stop reserve): {sessions}",
        f"predict   {p['predict_fixed_s'] + p['predict_forward_s_per_flip']:.1f} s per volume with 1 flip "
        f"({p['predict_forward_s_per_flip']:.1f} s of it per flip); {p['test_volumes']} volume(s): {predict}; "
        f"within {SUBMISSION_LIMIT}: " + (f"{fits} flips" if fits else "not even 1 flip: predict --time-limit fills the rest with empty masks"),
    ])


def write_json(plan: dict, path: Path | str) -> None:
    Path(path).write_text(json.dumps(plan, indent=1, default=str))

