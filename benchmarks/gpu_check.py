"""GPU figures in one prepared run (for a machine with one or more NVIDIA GPUs).

Records, for the default preset on synthetic 320^3 data:
- training-step ratio, tuned (bf16/fp16, compile, channels_last_3d) against plain;
- a short real training run: samples/s per GPU, data-wait fraction, GPU utilisation;
- with 2+ GPUs: samples/s and scaling efficiency of DDP and of DataParallel against one GPU.

Usage: python benchmarks/gpu_check.py OUT.json [--steps N]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench import bench_train_step  # noqa: E402

from scrollseg.data.synth import write_dataset  # noqa: E402


def training_run(data: Path, run: Path, devices: int, strategy: str, steps: int, extra: tuple[str, ...] = ()) -> dict:
    import subprocess

    cmd = [sys.executable, "-m", "scrollseg", "train", str(data), str(run), "--preset", "default", "--steps", str(steps),
           "--devices", str(devices), "--strategy", strategy, "train.val_every=100000", "train.log_every=10", "train.checkpoint_steps=100000", *extra]
    subprocess.run(cmd, check=True)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steady = [r for r in records if "samples_per_s" in r][2:]  # skip warm-up and compilation
    summary = next(r for r in records if r.get("event") == "summary")
    return {"samples_per_s": sum(r["samples_per_s"] for r in steady) / max(len(steady), 1), **summary}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    gpus = torch.cuda.device_count()
    result = {"gpus": gpus, "name": torch.cuda.get_device_name(0) if gpus else None}
    result.update(bench_train_step("default", steps=20))
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_dataset(data, n_train=4, n_test=0, size=(320, 320, 320), seed=0)
        one = training_run(data, Path(tmp) / "one", 1, "ddp", args.steps)
        result["one_gpu"] = one
        if gpus > 1:
            for strategy in ("ddp", "dp"):
                # DataParallel splits one process's batch over the GPUs: give it DDP's global batch
                extra = (f"data.batch_size={2 * gpus}",) if strategy == "dp" else ()
                r = training_run(data, Path(tmp) / strategy, gpus if strategy == "ddp" else 1, strategy, args.steps, extra)
                r["scaling_efficiency"] = r["samples_per_s"] / (gpus * one["samples_per_s"])
                result[strategy] = r
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
