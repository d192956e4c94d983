"""The embedded end-to-end job: synthesise a dataset, train the tiny preset on the CPU for a
time budget, tune threshold and post-processing on the held-out volumes, predict the test
split into submission.zip and score it next to three yardsticks: the same model with a
fixed 0.5 threshold, the tuned intensity-threshold baseline and the untrained model."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .api import predict, train, tune
from .config import build_config
from .data.io import read_volume, write_volume
from .data.layout import list_volumes
from .data.synth import write_dataset
from .engine.log import say
from .inference.baseline import threshold_predict, tune_threshold
from .inference.predict import probability_map, to_mask
from .metrics.evaluate import format_table, score_predictions
from .models import build_model


def _score_folder(data: Path, folder: Path, predict) -> float:
    for ref in list_volumes(data, "test", require_labels=False):
        write_volume(folder / f"{ref.id}.tif", predict(read_volume(ref.image)))
    return score_predictions(data / "test_labels", folder)["mean"]["leaderboard"]


def run_demo(out: Path, minutes: float = 10.0, steps: int | None = None, n_train: int = 10, n_test: int = 3) -> dict:
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    if not (data / "train.csv").is_file():
        say(f"[1/6] synthesising {n_train} train + {n_test} test volumes into {data}")
        write_dataset(data, n_train, n_test, seed=0, force=True)  # a dataset left half-written by an interrupted demo

    say("[2/6] tuning the intensity-threshold baseline on the train split")
    pairs = [(read_volume(r.image), read_volume(r.label)) for r in list_volumes(data, "train")[:6]]
    threshold, min_component, train_score = tune_threshold(pairs)
    baseline = _score_folder(data, out / "baseline_pred", lambda img: threshold_predict(img, threshold, min_component))

    # a time budget alone fits the step count (and the LR schedule) to it
    overrides = [f"train.minutes={minutes}", f"train.steps={steps or 0}"]
    cfg = build_config("tiny", overrides)
    say("[3/6] scoring the untrained model")
    torch.manual_seed(cfg.train.seed)
    untrained_model = build_model(cfg.model).eval()
    untrained = _score_folder(
        data,
        out / "untrained_pred",
        lambda img: to_mask(probability_map(untrained_model, img, cfg.inference, cfg.tile_size(), torch.device("cpu")), cfg.inference, img),
    )

    say(f"[4/6] training the tiny preset ({f'{steps} steps' if steps else f'as many steps as fit in {minutes:g} minutes'})")
    run = out / "run"
    result = train(cfg, data, run, devices=1)

    say("[5/6] tuning threshold and post-processing on the held-out volumes")
    tuned = tune(run, progress=False)

    say("[6/6] predicting the test split and scoring it, with the tuned settings and with a fixed 0.5 threshold")
    submission = predict(run, data / "test_images", out / "submission.zip", data / "test.csv", progress=False)
    scores = score_predictions(data / "test_labels", submission)
    fixed = predict(run, data / "test_images", out / "submission_threshold_0.5.zip", data / "test.csv", progress=False, use_tuned=False,
                    overrides={"threshold": 0.5, "hysteresis_low": 0.0, "postprocess": ["remove_dust"]})
    fixed_score = score_predictions(data / "test_labels", fixed)["mean"]["leaderboard"]
    print(format_table(scores))
    summary = {
        "leaderboard": scores["mean"]["leaderboard"],
        "leaderboard_fixed_threshold": fixed_score,
        "tuned_settings": tuned["best"].settings,
        "threshold_baseline": baseline,
        "threshold": threshold,
        "min_component": min_component,
        "untrained": untrained,
        "steps": result.step,
        "seconds": time.perf_counter() - t0,
        "submission": str(submission),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(
        f"\nleaderboard score on the synthetic test split: {summary['leaderboard']:.4f} (tuned post-processing)\n"
        f"  same model, threshold 0.5 and dust removal only: {fixed_score:.4f}\n"
        f"  threshold baseline (t={threshold}, dust<{min_component}, tuned on train): {baseline:.4f}\n"
        f"  untrained model: {untrained:.4f}\n"
        f"  {result.step} training steps, {summary['seconds'] / 60:.1f} minutes in all; submission: {submission}"
    )
    return summary
