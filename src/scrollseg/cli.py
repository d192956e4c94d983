"""Command line: thin subcommands over the library. User errors print one line and exit 2."""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import warnings
from pathlib import Path

from . import __version__
from .errors import ScrollsegError


def _warning_line(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default after its help, unless there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or action.default == [] or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def cmd_synth(args) -> None:
    from .data.synth import write_dataset

    out = write_dataset(args.out, args.train, args.test, tuple(args.size) if args.size else None, args.seed, force=args.force)
    print(f"wrote {args.train} train and {args.test} test volumes to {out} (test labels in {out / 'test_labels'})")


def cmd_train(args) -> None:
    from .api import train

    # the flags are shorthands for train.* overrides
    flags = ("steps", "minutes", "seed", "checkpoint_minutes", "checkpoint_steps", "time_limit")
    overrides = list(args.overrides) + [f"train.{f}={getattr(args, f)}" for f in flags if getattr(args, f) is not None]
    if args.minutes is not None and args.steps is None:
        overrides.append("train.steps=0")  # a time budget without a step count: plan the steps to fit it
    if args.fold:
        k, _, n = args.fold.partition("/")
        if not (k.isdigit() and n.isdigit()):
            raise ScrollsegError(f"--fold {args.fold!r}: write it as K/N, e.g. --fold 0/5")
        overrides += [f"data.fold={k}", f"data.folds={n}"]
    result = train(args.preset, args.data, args.run, devices=args.devices, strategy=args.strategy, overrides=overrides,
                   allow_change=tuple(args.allow_change))
    if result is not None and result.stop_reason not in ("steps", "minutes"):
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"Resume with the same command: {shlex.join(['scrollseg', *args.argv])}", file=sys.stderr)
        sys.exit(3)  # interrupted: the run is resumable, but not finished


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"{old} is now called {new}; the old name will be removed", FutureWarning, stacklevel=2)


def cmd_predict(args) -> None:
    from .api import predict

    if args.old_csv is not None:
        _deprecated("predict --csv", "--ids")
        args.ids = args.ids or args.old_csv
    if args.old_device is not None:
        _deprecated("predict --device", "--devices")
        args.devices = args.old_device
    overrides = {}
    if args.tta is not None:
        overrides["tta"] = args.tta
    if args.threshold is not None:
        overrides["threshold"] = args.threshold
    checkpoints = args.checkpoint if len(args.checkpoint) > 1 else args.checkpoint[0]
    out = predict(checkpoints, args.images, args.out, args.ids, overrides, devices=args.devices, use_tuned=args.tuned,
                  time_limit=args.time_limit)
    print(f"wrote {out}")


def cmd_tune(args) -> None:
    from .api import tune

    result = tune(args.run, args.data, args.workers, args.tta, max_volumes=args.volumes)
    trials = sorted(result["trials"], key=lambda t: -t.scores["leaderboard"])
    print(f"{'leaderboard':>11} {'topo':>6} {'sdice':>6} {'voi':>6} {'s':>5}  settings")
    for t in trials[: args.top] + ([result["start"]] if result["start"] not in trials[: args.top] else []):
        mark = "  (as trained)" if t is result["start"] else ""
        sc = t.scores
        settings = ", ".join(f"{k}={v}" for k, v in t.settings.items())
        print(f"{sc['leaderboard']:11.4f} {sc['topo']:6.3f} {sc['surface_dice']:6.3f} {sc['voi_score']:6.3f} {t.seconds:5.1f}  {settings}{mark}")
    best, start = result["best"].scores["leaderboard"], result["start"].scores["leaderboard"]
    if len(result["checkpoints"]) > 1:
        print("checkpoints: " + ", ".join(f"{name} (step {step}) {score:.4f}" for name, (step, score) in result["checkpoints"].items()))
    print(f"best {best:.4f} with {result['checkpoint'].name} (as trained {start:.4f}, {best - start:+.4f}) over {len(result['trials'])} settings; "
          f"saved in {result['path']}; predict uses that checkpoint, and these settings unless given --no-tuned")


def cmd_export(args) -> None:
    from .export import export_weights

    out = export_weights(args.run, args.out, use_tuned=args.tuned, say=print)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, fp16 weights, config and tuned post-processing if any)")


def cmd_plan(args) -> None:
    from .plan import format_plan, make_plan, write_json

    plan = make_plan(args.data, args.preset, args.hours, args.gpus, args.test_volumes, args.steps, args.cache_dir)
    print(format_plan(plan))
    if args.json:
        write_json(plan, args.json)


def cmd_score(args) -> None:
    from .api import score
    from .metrics.evaluate import LEGEND, format_table, write_reports

    result = score(args.labels, args.pred, args.workers, explain=args.explain)
    print(format_table(result))
    print(LEGEND)
    write_reports(result, args.json, args.csv)
    if args.explain:
        print(f"error maps, counts and pictures per volume in {args.explain}/<id>/")


def cmd_show(args) -> None:
    from .report.show import show_volume

    print(f"wrote {show_volume(args.volume, args.label, args.pred, args.out)}")


def cmd_report(args) -> None:
    from .report.html import write_report

    print(f"wrote {write_report(args.run, args.out)}")


def cmd_doctor(args) -> None:
    from .doctor import report

    sys.exit(report(args.data, args.run))


def cmd_wheelhouse(args) -> None:
    from .wheelhouse import build_wheelhouse

    wheels = build_wheelhouse(args.out, not args.no_deps, args.python_version, args.platform)
    print(f"{len(wheels)} wheels in {args.out}; attach the folder as a Kaggle dataset and install with "
          f"pip install --no-index --find-links <folder> scrollseg")


def cmd_bench(args) -> None:
    import importlib.util

    from .wheelhouse import project_root

    path = project_root() / "benchmarks" / "bench.py"
    spec = importlib.util.spec_from_file_location("scrollseg_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.run_all(args.json, args.workers, args.quick)


def cmd_demo(args) -> None:
    from .demo import run_demo

    run_demo(Path(args.out), minutes=args.minutes, steps=args.steps)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scrollseg", description="3D papyrus-surface segmentation for the Vesuvius Challenge")
    parser.add_argument("--version", action="version", version=f"scrollseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, description=summary, formatter_class=HelpFormatter)

    p = command("synth", "write a synthetic dataset in the competition layout (with test labels, for scoring)")
    p.add_argument("out", help="new or empty folder to write the dataset into")
    p.add_argument("--train", type=int, default=8, metavar="N", help="number of training volumes")
    p.add_argument("--test", type=int, default=2, metavar="N", help="number of test volumes")
    p.add_argument("--size", type=int, nargs=3, metavar=("D", "H", "W"), help="shape of every volume (default: four shapes of about 96^3)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes the same volumes")
    p.add_argument("--force", action="store_true", help="replace OUT when it already holds a dataset")
    p.set_defaults(func=cmd_synth)

    p = command("train", "train a model, or resume the run in RUN")
    p.add_argument("data", help="dataset root in the competition layout (the unzipped folder)")
    p.add_argument("run", help="run folder; an existing one is resumed")
    p.add_argument("--preset", help="preset name or .yaml file (default: the run's saved config, else 'default')")
    p.add_argument("--minutes", type=float, help="wall-clock bound of this training; without --steps the step count "
                   "(and so the LR schedule) is fitted to it after a measured warm-up (default: train.minutes, 0 = none)")
    p.add_argument("--fold", metavar="K/N", help="train fold K of an N-fold split (by scroll where there are N scrolls), e.g. 0/5 "
                   "(default: one split by data.val_fraction)")
    p.add_argument("--steps", type=int, help="number of optimizer steps of the whole run (default: train.steps of the preset)")
    p.add_argument("--seed", type=int, help="seed of the split, patches and augmentation (default: train.seed, 0)")
    p.add_argument("--checkpoint-minutes", type=float, metavar="M", help="checkpoint every M minutes (default: train.checkpoint_minutes)")
    p.add_argument("--checkpoint-steps", type=int, metavar="K", help="checkpoint every K steps (default: train.checkpoint_steps)")
    p.add_argument("--time-limit", help="checkpoint and stop before this wall time, e.g. 11h45m (default: none)")
    p.add_argument("--devices", default="auto", help="processes to train with: a number, or 'auto' for every GPU (1 on a CPU)")
    p.add_argument("--strategy", choices=("ddp", "dp"),
                   help="ddp: one process per device; dp: DataParallel in one process (default: ddp; give it to train on several CPU processes)")
    p.add_argument("--allow-change", action="append", default=[], metavar="KEY",
                   help="let a resumed run take a new value for KEY (a dotted key or section), e.g. optim.lr")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. optim.lr=1e-3 data.batch_size=4")
    p.set_defaults(func=cmd_train)

    p = command("predict", "predict the test volumes into a submission.zip")
    p.add_argument("checkpoint", nargs="+",
                   help="run folder (the checkpoint scrollseg tune chose, else best.pt, else final.pt, else last.pt) or a .pt file; "
                        "several: an ensemble averaging their probabilities")
    p.add_argument("images", help="test_images folder or dataset root")
    p.add_argument("--out", default="submission.zip", help="the zip to write; written only when every volume is in it")
    p.add_argument("--ids", metavar="TEST_CSV", help="test.csv listing the ids that must be present (default: the root's test.csv, else every .tif)")
    p.add_argument("--csv", dest="old_csv", help=argparse.SUPPRESS)
    p.add_argument("--devices", default="1", help="a number of processes to spread the volumes over, 'auto' (every GPU), or one device, e.g. cuda:1 or cpu")
    p.add_argument("--device", dest="old_device", help=argparse.SUPPRESS)
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, help="flip test-time augmentation (default: the checkpoint's inference.tta)")
    p.add_argument("--threshold", type=float, help="probability above which a voxel is surface, in (0, 1) (default: the checkpoint's inference.threshold)")
    p.add_argument("--time-limit", help="finish within this wall time from the session start (e.g. 8h30m), lowering the flip TTA "
                   "as needed (default: no limit)")
    p.add_argument("--tuned", action=argparse.BooleanOptionalAction, default=True,
                   help="use the settings `scrollseg tune` saved in the (first) run (a run folder stands for the checkpoint tune chose either way)")
    p.set_defaults(func=cmd_predict)

    p = command("tune", "choose the checkpoint (best.pt or final.pt), threshold and post-processing on the run's held-out volumes by the exact metric")
    p.add_argument("run", help="a trained run folder")
    p.add_argument("--data", help="dataset root (default: the one the run was trained on)")
    p.add_argument("--workers", type=int, help="scoring processes (default: up to 4, one per CPU core)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, help="flip TTA for the probabilities (default: as predict uses)")
    p.add_argument("--volumes", type=int, help="tune on at most this many held-out volumes, spread over their ids (default: all)")
    p.add_argument("--top", type=int, default=10, help="rows of the table")
    p.set_defaults(func=cmd_tune)

    p = command("export", "weights-only fp16 copy of a run's checkpoint, for predict")
    p.add_argument("run", help="run folder (the checkpoint scrollseg tune chose, else best, final or last) or .pt file")
    p.add_argument("out", help="the .pt file to write")
    p.add_argument("--tuned", action=argparse.BooleanOptionalAction, default=True,
                   help="carry the post-processing scrollseg tune chose for this checkpoint (predict applies it unless --no-tuned)")
    p.set_defaults(func=cmd_export)

    p = command("plan", "disk, memory, steps per hour, sessions and submission time for a dataset on this machine")
    p.add_argument("data", help="dataset root in the competition layout")
    p.add_argument("--preset", default="default", help="preset name or .yaml file")
    p.add_argument("--hours", type=float, default=12.0, help="hours per session (Kaggle: 12)")
    p.add_argument("--gpus", type=int, help="devices to plan for (default: the GPUs here, else 1)")
    p.add_argument("--test-volumes", type=int, help="test volumes to predict (default: those in DATA/test_images)")
    p.add_argument("--steps", type=int, default=3, help="training steps to time")
    p.add_argument("--cache-dir", help="where the cache would go (default: as training would choose for ./run)")
    p.add_argument("--json", help="also write the figures to this file")
    p.set_defaults(func=cmd_plan)

    p = command("score", "the leaderboard metric of predictions against labels, per volume and mean")
    p.add_argument("labels", help="folder of <id>.tif labels, or a dataset root (its test_labels/, else train_labels/)")
    p.add_argument("pred", help="folder of <id>.tif predictions or a submission.zip")
    p.add_argument("--json", metavar="FILE", help="also write every score to this JSON file")
    p.add_argument("--csv", metavar="FILE", help="also write the table to this CSV file")
    p.add_argument("--workers", type=int, default=1, help="processes that score volumes in parallel")
    p.add_argument("--explain", metavar="OUT_DIR", help="write per volume the voxels behind each term of the score (maps, counts, a picture)")
    p.set_defaults(func=cmd_score)

    p = command("show", "picture of three orthogonal slices: image, label, prediction and errors")
    p.add_argument("volume", help="image .tif")
    p.add_argument("--label", help="label .tif (default: none)")
    p.add_argument("--pred", help="prediction: a .tif, submission.zip:ID, or a submission.zip holding the volume's id (default: none)")
    p.add_argument("--out", help="PNG to write (default: <id>.png)")
    p.set_defaults(func=cmd_show)

    p = command("report", "write RUN/report.html: curves, validation tables, pictures, error maps, config")
    p.add_argument("run", help="a run folder")
    p.add_argument("--out", help="HTML file to write (default: RUN/report.html)")
    p.set_defaults(func=cmd_report)

    p = command("doctor", "versions, hardware, recommended settings; checks a dataset folder")
    p.add_argument("data", nargs="?", help="dataset root in the competition layout to check")
    p.add_argument("--run", default=".", help="where the run (and its cache) would go, for the free-disk check")
    p.set_defaults(func=cmd_doctor)

    p = command("wheelhouse", "wheels for installing scrollseg offline (e.g. as a Kaggle dataset)")
    p.add_argument("out", help="folder to write the wheels into")
    p.add_argument("--no-deps", action="store_true", help="only scrollseg's own wheel")
    p.add_argument("--python-version", help="target Python, e.g. 3.11 (Kaggle's) (default: this one)")
    p.add_argument("--platform", help="target platform, e.g. manylinux2014_x86_64 (default: this one)")
    p.set_defaults(func=cmd_wheelhouse)

    p = command("bench", "speed of each stage against nnU-Net v2 and MONAI (from a source checkout; peers from scripts/peers.sh)")
    p.add_argument("--json", metavar="FILE", help="also write the figures to this JSON file")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for every loader compared")
    p.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    p.set_defaults(func=cmd_bench)

    p = command("demo", "synthesise data, train the tiny preset on the CPU, predict and score")
    p.add_argument("--out", default="demo_out", help="folder for the data, the run, submission.zip and summary.json")
    p.add_argument("--minutes", type=float, default=10.0, help="training time bound")
    p.add_argument("--steps", type=int, help="training steps (default: the tiny preset's)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = make_parser()
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    # dotted overrides may sit anywhere after `train`, also after its options
    args, extra = parser.parse_known_args(argv)
    args.argv = argv
    unknown = [e for e in extra if args.command != "train" or e.startswith("-") or "=" not in e]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "train":
        args.overrides = list(args.overrides) + extra
    warnings.formatwarning = _warning_line
    try:
        args.func(args)
    except ScrollsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
