"""Recipe quality on held-out data the recipe was not tuned on: an ablation table.

Datasets come from ``benchmarks/quality_data.py`` (``alt``: a second synthetic family;
``real``: chunks with real Scroll 1 sheet shapes). Each arm trains the tiny preset with
some parts switched off, for the same time budget (``--minutes``) or number of steps on
the same network (the parts that differ cost under 2% of a step), tunes it on its held-out
train volumes, then predicts the test split in several ways (fixed 0.5, tuned, tuned with
each post-processing step or the recto-face choice left out, tuned with TTA). Every result
is one JSON line in ``--results``; ``render`` prints the table of docs/quality.md from them,
with the records ``benchmarks/prototype_unet.py`` appends (the 100-line U-Net yardstick).

    python benchmarks/quality.py data alt OUT --train 16 --test 6 --seed 11
    python benchmarks/quality.py run OUT/alt ARM --minutes 10 --seed 0 --threads 1 --results quality.jsonl [--tta]
    python benchmarks/quality.py render quality.jsonl
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from scrollseg import api
from scrollseg.checkpoint import RunDir, load_checkpoint
from scrollseg.config import from_dict, read_yaml
from scrollseg.data.io import read_volume
from scrollseg.data.layout import list_volumes
from scrollseg.engine.log import read_records
from scrollseg.inference.postprocess import postprocess
from scrollseg.inference.predict import predict_probabilities
from scrollseg.metrics.evaluate import MEAN_KEYS, score_predictions
from scrollseg.metrics.leaderboard import score_volume

# arm -> overrides of the tiny preset
ARMS = {
    "recipe": [],
    "no_skeleton_recall": ["loss.skeleton_recall_weight=0"],
    "wide_first_stages": ["model.features=[16,32,48,64]"],  # more channels where the fibre texture is resolved
    "patch64": ["data.patch_size=[64,64,64]", "inference.tile=[64,64,64]"],  # more context per patch, 2.8x the step time
    "ema": ["train.ema_decay=0.999"],
    # the loss leaves out the background the recto step drops: the preset now; kept explicit so its records name it
    "verso_ignored": ["data.ignore_verso_background=true"],
    "verso_kept": ["data.ignore_verso_background=false"],  # the preset before it did (the `recipe` records before that)
    "flips_only": ["augment.rotation_prob=0", "augment.scale_prob=0", "augment.noise_prob=0", "augment.blur_prob=0",
                   "augment.brightness_prob=0", "augment.contrast_prob=0", "augment.lowres_prob=0", "augment.gamma_prob=0",
                   "augment.inverted_gamma_prob=0"],
}
FIXED = {"threshold": 0.5, "hysteresis_low": 0.0, "postprocess": ["remove_dust"], "recto_context": 0.0}


def _score(data: Path, run, out: Path, **kw) -> dict:
    zip_path = predict_zip(data, run, out, **kw)
    return score_predictions(data / "test_labels", zip_path)["mean"]


def predict_zip(data: Path, run, out: Path, **kw) -> Path:
    return api.predict(run, data / "test_images", out, data / "test.csv", progress=False, **kw)


def test_scores(data: Path, run: Path, settings: dict[str, dict], tta: bool) -> dict[str, dict]:
    """Mean test scores of each named post-processing setting, the model's probability maps
    computed once per volume (the settings differ only after the probabilities)."""
    device = torch.device("cpu")
    models, cfg = api.load_predictor(run, device, {"tta": tta}, use_tuned=False)
    refs = list_volumes(data, "test")
    per_setting: dict[str, list] = {name: [] for name in settings}
    images = {ref.id: read_volume(ref.image) for ref in refs}  # test volumes are small; the recto choice needs them again
    for ref, prob in predict_probabilities(models, ((ref, images[ref.id], None) for ref in refs), cfg, device):
        label = read_volume(ref.label)
        for name, values in settings.items():
            mask = postprocess(prob, dataclasses.replace(cfg.inference, **values), images[ref.id])
            per_setting[name].append(score_volume(label, mask))
    return {name: {k: float(np.mean([getattr(s, k) for s in scores])) for k in MEAN_KEYS} for name, scores in per_setting.items()}


def run_arm(data: Path, arm: str, steps: int, minutes: float, seed: int, work: Path, results: Path, threads: int, tta: bool) -> None:
    torch.set_num_threads(threads)
    run = work / f"{data.name}-{arm}-s{seed}-{steps or f'{minutes:g}min'}"
    overrides = ARMS[arm] + [f"train.seed={seed}", f"train.threads={threads}", f"train.steps={steps}"]
    if minutes:
        overrides.append(f"train.minutes={minutes}")
    t0 = time.perf_counter()
    final = run / "checkpoints" / "final.pt"
    if final.is_file():  # trained before (a rerun after an interrupted evaluation): evaluate it again
        steps_done = int(load_checkpoint(final)["step"])
    else:
        steps_done = api.train("tiny", data, run, devices=1, overrides=overrides, progress=False).step
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    tuned = api.tune(run, workers=threads, progress=False)
    tune_s = time.perf_counter() - t0
    trained = from_dict(read_yaml(RunDir(run).config_path))
    record = {"dataset": data.name, "arm": arm, "seed": seed, "threads": threads, "precision": _trained_precision(run),
              "ignore_verso_background": trained.data.ignore_verso_background, "steps": steps_done, "train_s": train_s, "tune_s": tune_s,
              "checkpoint": tuned["checkpoint"].name, "checkpoints": tuned["checkpoints"],
              "tuned": tuned["best"].settings, "validation_tuned": tuned["best"].scores, "validation_as_trained": tuned["start"].scores}
    chain = tuned["best"].settings["postprocess"]
    settings = {"fixed_0.5": FIXED, "tuned": tuned["best"].settings}
    # one post-processing step left out of the tuned chain at a time, and the recto-face choice
    settings.update({f"tuned_without_{step}": {**tuned["best"].settings, "postprocess": [s for s in chain if s != step]} for step in chain})
    if tuned["best"].settings.get("recto_context"):
        settings["tuned_without_recto_face"] = {**tuned["best"].settings, "recto_context": 0.0}
    record["test"] = test_scores(data, run, settings, tta=False)
    if tta:  # tuned again on maps with TTA, as `scrollseg tune --tta` does for a predict with TTA
        tuned_tta = api.tune(run, workers=threads, tta=True, progress=False)
        record.update(checkpoint_tta=tuned_tta["checkpoint"].name, tuned_tta=tuned_tta["best"].settings)
        record["test"].update(test_scores(data, run, {"tuned_tta": tuned_tta["best"].settings}, tta=True))
    with open(results, "a") as fh:
        fh.write(json.dumps(record) + "\n")
    print(json.dumps({"arm": arm, "dataset": data.name, "seed": seed, **{k: round(v["leaderboard"], 4) for k, v in record["test"].items()}}))


def _trained_precision(run: Path) -> str:
    """The precision the run trained in, from the start event of its metrics log."""
    starts = [r for r in read_records(RunDir(run).metrics_path) if r.get("event") == "start"]
    return starts[-1].get("precision", "fp32") if starts else "fp32"


def ensemble(data: Path, runs: list[str], results: Path) -> None:
    mean = _score(data, [Path(r) for r in runs], Path(runs[0]) / "ensemble.zip", overrides={"tta": False})
    with open(results, "a") as fh:
        fh.write(json.dumps({"dataset": data.name, "arm": "ensemble", "runs": runs, "test": {"tuned": mean}}) + "\n")
    print(json.dumps({"ensemble": runs, "leaderboard": mean["leaderboard"]}))


def _arm_label(record: dict) -> str:
    """The arm, marked with its thread count when it trained on several (docs/quality.md's
    target runs, one at a time; the ablation's runs went two side by side on one thread
    each), or when its tune predates the recto-face axis (its tuned settings
    lack ``recto_context``): those runs' fixed-0.5 rows stand, their tuned rows are the older search.
    A ``recipe`` run of the preset that ignores the verso background counts as ``verso_ignored``:
    the ``recipe`` rows are the preset before it did."""
    arm = record["arm"]
    if arm == "recipe" and record.get("ignore_verso_background"):
        arm = "verso_ignored"
    if record.get("threads", 1) > 1:
        bf16 = ", bf16" if record.get("precision") == "bf16" else ""
        return f"{arm} ({record['threads']} threads{bf16})"
    if arm in ("ensemble", "prototype_unet") or "recto_context" in record.get("tuned", {}):
        return arm
    return f"{arm} (tune before the recto axis)"


def render(results: Path) -> str:
    records = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    rows = []

    def fmt(values):
        if not values:
            return "-"
        lo, hi = min(values), max(values)
        return f"{lo:.3f}" if len(values) == 1 else f"{np.mean(values):.3f} ({lo:.3f}-{hi:.3f})"

    lines = ["| dataset | arm | prediction | runs | leaderboard | TopoScore | surface Dice | VOI score |", "|---|---|---|---|---|---|---|---|"]
    order = list(ARMS) + ["ensemble", "prototype_unet"]
    for dataset in sorted({r["dataset"] for r in records}):
        here = [r for r in records if r["dataset"] == dataset and r["arm"] in order]
        for label in sorted(dict.fromkeys(_arm_label(r) for r in here), key=lambda a: (order.index(a.split(" (")[0]), a)):
            group = [r for r in here if _arm_label(r) == label]
            for mode in dict.fromkeys(k for r in group for k in r["test"]):
                scores = [r["test"][mode] for r in group if mode in r["test"]]
                rows.append(f"| {dataset} | {label} | {mode} | {len(scores)} | " + " | ".join(fmt([s[k] for s in scores]) for k in ("leaderboard", "topo", "surface_dice", "voi_score")) + " |")
    gaps = []
    for dataset in sorted({r["dataset"] for r in records}):
        def scores(keep, mode):
            return [r["test"][mode]["leaderboard"] for r in records if r["dataset"] == dataset and keep(r) and mode in r["test"]]

        # the plain runs' fixed-0.5 predictions used best.pt and no tuned setting: every plain run counts
        plain = scores(lambda r: r["arm"] == "no_skeleton_recall", "fixed_0.5")
        for mode, what in (("tuned", "tuned"), ("tuned_tta", "tuned, 8-flip TTA")):
            full = scores(lambda r: _arm_label(r) == "recipe", mode)
            if plain and full:
                gaps.append(f"- {dataset}: full recipe ({what}) {np.mean(full):.3f} vs plain Dice + BCE at a fixed 0.5 "
                            f"{np.mean(plain):.3f}: {np.mean(full) - np.mean(plain):+.3f} (means over {len(full)} and {len(plain)} runs)")
        # the targets: the recipe as a user runs it, on the machine's threads
        targets = ("recipe", "verso_ignored")
        for label in sorted({_arm_label(r) for r in records if r["dataset"] == dataset and r["arm"] in targets and r.get("threads", 1) > 1}):
            for mode, what in (("tuned", "tuned"), ("tuned_tta", "tuned and predicted with 8-flip TTA")):
                full = scores(lambda r: _arm_label(r) == label, mode)
                if full:
                    gaps.append(f"- {dataset}: {label}, {what}: {np.mean(full):.3f} ({min(full):.3f}-{max(full):.3f}) over {len(full)} runs")
    return "\n".join(lines + rows + ([""] + gaps if gaps else []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("data")
    p.add_argument("kind", choices=("alt", "real"))
    p.add_argument("out")
    p.add_argument("--train", type=int, default=16)
    p.add_argument("--test", type=int, default=6)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--any-axis", action="store_true", help="orient each chunk at random (see quality_data.py)")
    p = sub.add_parser("run")
    p.add_argument("data")
    p.add_argument("arm", choices=list(ARMS))
    p.add_argument("--steps", type=int, default=0)
    p.add_argument("--minutes", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="quality_runs")
    p.add_argument("--results", default="quality.jsonl")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tta", action="store_true", help="also tune on maps with 8-flip TTA and score that (8x the prediction time)")
    p = sub.add_parser("ensemble")
    p.add_argument("data")
    p.add_argument("runs", nargs="+")
    p.add_argument("--results", default="quality.jsonl")
    p = sub.add_parser("render")
    p.add_argument("results")
    args = parser.parse_args()
    if args.cmd == "data":
        here = Path(__file__).parent
        subprocess.run([sys.executable, str(here / "quality_data.py"), args.kind, str(Path(args.out) / args.kind), "--train", str(args.train),
                        "--test", str(args.test), "--seed", str(args.seed), "--baselines"] + (["--any-axis"] if args.any_axis else []), check=True)
    elif args.cmd == "run":
        if not args.steps and not args.minutes:
            parser.error("give --steps or --minutes")
        run_arm(Path(args.data), args.arm, args.steps, args.minutes, args.seed, Path(args.work), Path(args.results), args.threads, args.tta)
    elif args.cmd == "ensemble":
        ensemble(Path(args.data), args.runs, Path(args.results))
    else:
        print(render(Path(args.results)))


if __name__ == "__main__":
    main()
