"""Choose the threshold and post-processing by the exact leaderboard metric on held-out volumes.

The probability maps are computed once (by the caller, with the TTA that ``predict``
uses) and cached as float16 ``.npy`` files; each candidate setting is then only a
threshold, the post-processing steps and the metric, run in worker processes that
memory-map the cached maps.

The search is a coordinate descent over a small discrete grid, not a sampler such as
Optuna: the space has five axes of 2 to 7 values, the axes barely interact except
threshold with hysteresis (searched together), and a deterministic sweep gives the same
answer on every machine with no extra dependency. Two passes over the axes settle it.

A change is kept only when it beats the current setting by ``min_gain`` on the mean:
with a handful of held-out volumes, per-volume scores spread by several hundredths,
and a search that takes every tiny gain picks settings that are worse on new data.
"""
from __future__ import annotations

import dataclasses
import itertools
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import yaml

from ..checkpoint import RunDir, atomic_write_text
from ..config import InferenceConfig
from ..data.io import read_volume
from ..metrics.evaluate import MEAN_KEYS
from ..metrics.leaderboard import score_volume
from .postprocess import postprocess
from .recto import recto_side

TUNED_KEYS = ("recto_context", "threshold", "hysteresis_low", "min_component", "postprocess", "close_radius", "hole_max")

# axes searched in turn; threshold and hysteresis are one axis because they interact
AXES: dict[str, list[dict]] = {
    "recto_context": [{"recto_context": c} for c in (0.0, 32.0, 64.0)],
    "threshold": [{"threshold": t, "hysteresis_low": 0.0} for t in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)]
    + [{"threshold": high, "hysteresis_low": low} for high, low in itertools.product((0.5, 0.6, 0.7, 0.8), (0.25, 0.35)) if low < high],
    "postprocess": [{"postprocess": p} for p in (["remove_dust"], ["remove_dust", "plug_holes"], ["remove_dust", "close_sheets"],
                                                 ["remove_dust", "plug_holes", "close_sheets"], ["remove_dust", "plug_holes", "close_sheets", "fill_cavities"])],
    "min_component": [{"min_component": m} for m in (0, 64, 512, 2048)],
    "close_radius": [{"close_radius": r} for r in ([1, 1, 1], [1, 2, 2], [2, 2, 2])],
    "hole_max": [{"hole_max": h} for h in (8, 16, 64)],
}


@dataclasses.dataclass
class Trial:
    settings: dict
    scores: dict  # mean leaderboard and its parts
    seconds: float


_RECTO_SIDES: dict[tuple[str, float], tuple[np.ndarray, tuple]] = {}  # per worker: (image, context) -> packed recto_side


def _without_verso(prob: np.ndarray, image_path: str, context: float) -> np.ndarray:
    """``keep_recto_face`` with the side mask computed once per image and context in this process."""
    key = (image_path, context)
    if key not in _RECTO_SIDES:
        side = recto_side(read_volume(image_path), context)
        _RECTO_SIDES[key] = (np.packbits(side), side.shape)
    packed, shape = _RECTO_SIDES[key]
    side = np.unpackbits(packed, count=int(np.prod(shape))).reshape(shape).astype(bool)
    return np.where(side, prob, 0.0).astype(np.float32)


def _score_setting(job) -> tuple[int, dict, float]:
    index, settings, volumes = job
    cfg = dataclasses.replace(InferenceConfig(), **settings)
    t0 = time.perf_counter()
    scores = []
    for prob_path, label_path, image_path in volumes:
        prob = np.asarray(np.load(prob_path, mmap_mode="r"), dtype=np.float32)
        if cfg.recto_context > 0:
            prob = _without_verso(prob, image_path, cfg.recto_context)
        step_cfg = dataclasses.replace(cfg, recto_context=0.0)  # applied above, from the cache
        scores.append(score_volume(read_volume(label_path), postprocess(prob, step_cfg)))
    mean = {k: float(np.mean([getattr(s, k) for s in scores])) for k in MEAN_KEYS}
    return index, mean, time.perf_counter() - t0


MIN_GAIN = 0.005


def tune(volumes: list[tuple[Path, Path, Path]], start: InferenceConfig, workers: int = 1, passes: int = 2, progress=None,
         min_gain: float = MIN_GAIN) -> tuple[list[Trial], Trial]:
    """Every trial of the search over (probability .npy, label .tif, image .tif) triples, the
    first being ``start``'s own settings, and the chosen one."""
    best = {k: getattr(start, k) for k in TUNED_KEYS}
    seen: dict[str, Trial] = {}
    pairs = [(str(p), str(lab), str(img)) for p, lab, img in volumes]
    pool = ProcessPoolExecutor(workers) if workers > 1 else None

    def evaluate(candidates: list[dict]) -> None:
        todo = [c for c in candidates if _key(c) not in seen]
        jobs = [(i, c, pairs) for i, c in enumerate(todo)]
        for i, scores, seconds in (pool.map(_score_setting, jobs) if pool else map(_score_setting, jobs)):
            seen[_key(todo[i])] = Trial(todo[i], scores, seconds)
            if progress:
                progress(seen[_key(todo[i])])

    try:
        evaluate([best])  # the first trial is the starting point
        for _ in range(passes):
            changed = False
            for options in AXES.values():
                candidates = [{**best, **option} for option in options]
                evaluate(candidates)
                winner = max(candidates, key=lambda c: seen[_key(c)].scores["leaderboard"])
                if seen[_key(winner)].scores["leaderboard"] >= seen[_key(best)].scores["leaderboard"] + min_gain:
                    best, changed = winner, True
            if not changed:
                break
    finally:
        if pool:
            pool.shutdown()
    return list(seen.values()), seen[_key(best)]


def _key(settings: dict) -> str:
    return repr(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in settings.items()))


def spread_subset(items: list, n: int, key) -> list:
    """``n`` of ``items`` (all when fewer), evenly spaced in the order of ``key``: a subset
    that spans the ids (and so, in the competition's numbering, the scrolls and regions)."""
    ordered = sorted(items, key=key)
    if n >= len(ordered):
        return ordered
    return [ordered[round(i * (len(ordered) - 1) / (n - 1))] for i in range(n)] if n > 1 else [ordered[len(ordered) // 2]]


def save_tuned(run_root: Path, trial: Trial, meta: dict) -> Path:
    path = RunDir(run_root).tuned_path
    atomic_write_text(path, yaml.safe_dump({"inference": trial.settings, "scores": trial.scores, **meta}, sort_keys=False))
    return path


def run_root_of(checkpoint: Path | str) -> Path | None:
    """The run folder of a run folder or of a file in its ``checkpoints/``."""
    path = Path(checkpoint)
    if path.is_dir():
        return path
    if path.parent.name == "checkpoints":
        return path.parent.parent
    return None


def tuned_settings(checkpoint: Path | str, ckpt: dict) -> tuple[dict | None, str]:
    """The post-processing ``tune`` chose for a checkpoint (``ckpt``, loaded from
    ``checkpoint``), and a line saying where it comes from or why none is used.

    The run's ``tuned.yaml`` counts only when it was tuned at the checkpoint's step: after
    more training its settings belong to another model. An exported file carries its own."""
    root = run_root_of(checkpoint)
    path = RunDir(root).tuned_path if root else None
    if path is not None and path.is_file():
        values = yaml.safe_load(path.read_text()) or {}
        settings = {k: v for k, v in (values.get("inference") or {}).items() if k in TUNED_KEYS}
        step = values.get("step")
        if step is not None and ckpt.get("step") is not None and int(step) != int(ckpt["step"]):
            tuned_for = f" ({values['checkpoint']})" if values.get("checkpoint") else ""
            tuned_model = RunDir(root).tuned_checkpoint()
            remedy = (f"give the run folder {root} to use {tuned_model.name}, which they were tuned for"
                      if tuned_model is not None and tuned_model != Path(checkpoint) else f"run scrollseg tune {root} again")
            return None, f"{path} was tuned at step {step}{tuned_for} but {Path(checkpoint).name} is step {ckpt['step']}: not used; {remedy}"
        return settings, f"post-processing tuned in {path}: " + _describe(settings)
    if ckpt.get("tuned"):
        return dict(ckpt["tuned"]), f"post-processing tuned before the export of {Path(checkpoint).name}: " + _describe(ckpt["tuned"])
    return None, ""


def _describe(settings: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items())
