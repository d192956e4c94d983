"""scrollseg bench: speed of each stage against a named baseline, measured in one run.

1. loader    scrollseg's loader (memory-mapped .npy cache, patch slicing in workers,
             batched augmentation on the training device) against a naive loader that
             decodes the LZW TIFFs for every sample and augments each sample with numpy,
             both with the same number of DataLoader workers.
2. train     samples/s of scrollseg's training step (engine.step, the preset's precision,
             compile and memory format) against the plain AMP step (autocast + GradScaler,
             eager; fp32 on the CPU), same model, batch and patch.
3. inference voxels/s and peak memory of scrollseg's sliding window against MONAI's
             ``sliding_window_inference`` with the same model, tile, overlap and Gaussian
             blending; each side runs in a fresh process so peak RSS is its own.
4. scoring   seconds per 320^3 volume of the leaderboard metric, by part.
5. data wait fraction of step time spent waiting for data in a tiny-preset CPU run.

Run: ``scrollseg bench [--json F] [--workers N]`` (from a source checkout, with MONAI:
``pip install -e .[bench]``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from scrollseg.config import build_config
from scrollseg.data.augment import augment_batch
from scrollseg.data.cache import VolumeCache
from scrollseg.data.layout import list_volumes
from scrollseg.data.loader import make_loader
from scrollseg.data.sampler import PatchSampler
from scrollseg.data.synth import synth_chunk, write_dataset
from scrollseg.engine.speed import resolve_speed, speed_up, to_memory_format
from scrollseg.engine.step import optimizer_step
from scrollseg.losses import segmentation_loss
from scrollseg.models import build_model
from scrollseg.precision import resolve_precision

TILE = (64, 64, 64)
OVERLAP = 0.5
VOLUME = (192, 192, 192)  # tiles at 0, 32, ..., 128 on every axis for both implementations


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def status_mib(field: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def reset_peak_rss() -> float:
    """Reset this process's RSS high-water mark (Linux); returns the current RSS in MiB."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    return status_mib("VmRSS")


# ---------------------------------------------------------------- 1. loader
class NaiveDataset(torch.utils.data.Dataset):
    """The common notebook pattern: decode both TIFFs per sample, crop, augment in numpy."""

    def __init__(self, refs, patch, length, fg_fraction, seed):
        self.refs, self.patch, self.length, self.fg, self.seed = refs, patch, length, fg_fraction, seed

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        rng = np.random.default_rng([self.seed, i])
        ref = self.refs[rng.integers(len(self.refs))]
        image, label = tifffile.imread(ref.image), tifffile.imread(ref.label)
        p = np.asarray(self.patch)
        if rng.random() < self.fg:
            fg = np.argwhere(label == 1)
            centre = fg[rng.integers(len(fg))] if len(fg) else np.asarray(image.shape) // 2
            start = np.clip(centre - p // 2, 0, np.asarray(image.shape) - p)
        else:
            start = np.array([rng.integers(0, s - q + 1) for s, q in zip(image.shape, p)])
        sl = tuple(slice(a, a + q) for a, q in zip(start, p))
        x, y = image[sl].astype(np.float32) / 255.0, label[sl]
        for axis in range(3):
            if rng.random() < 0.5:
                x, y = np.flip(x, axis), np.flip(y, axis)
        k = rng.integers(4)
        x, y = np.rot90(x, k, (1, 2)), np.rot90(y, k, (1, 2))
        x = x ** rng.uniform(0.7, 1.3)
        x = (x - x.mean()) / (x.std() + 1e-6) * rng.uniform(0.85, 1.15) + rng.uniform(-0.1, 0.1)
        x = x + rng.normal(0, 0.05, x.shape).astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(x)[None]), torch.from_numpy(np.ascontiguousarray(y)[None])


def bench_loader(data: Path, workers: int, batches: int = 20) -> dict:
    cfg = build_config("default")
    patch, batch = cfg.data.patch_size, cfg.data.batch_size
    refs = list_volumes(data, "train")
    cache = VolumeCache(data / "cache", cfg.data.max_voxels)
    t0 = time.perf_counter()
    volumes = [cache.load(r) for r in refs]
    cache_s = time.perf_counter() - t0
    sampler = PatchSampler(volumes, patch, batch, cfg.data.foreground_fraction, seed=0)
    gen = torch.Generator().manual_seed(0)

    def ours():
        n = 0
        for _, _, b in make_loader(sampler, 0, batches, 1, workers, pin_memory=False):
            x, y = augment_batch(b["image"], b["label"], b["mean"], b["std"], cfg.augment, gen)
            n += x.shape[0]
        return n

    def naive():
        loader = torch.utils.data.DataLoader(NaiveDataset(refs, patch, batches * batch, cfg.data.foreground_fraction, 0), batch_size=batch, num_workers=workers)
        return sum(x.shape[0] for x, _ in loader)

    rates = {}
    for name, fn in (("scrollseg", ours), ("naive", naive)):
        t0 = time.perf_counter()
        n = fn()
        rates[name] = n / (time.perf_counter() - t0)
    return {"loader_patches_per_s": rates["scrollseg"], "naive_loader_patches_per_s": rates["naive"],
            "loader_speedup": rates["scrollseg"] / rates["naive"], "cache_build_s": cache_s, "loader_patch": patch}


# ---------------------------------------------------------------- 2. training step
def _timed(step, steps: int, device: torch.device) -> float:
    for _ in range(3):  # warm-up (and compilation)
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _plain_amp_step_rate(model, batch: int, patch, device, steps: int) -> float:
    """The step any PyTorch user writes: autocast + GradScaler (fp32 on the CPU), eager, contiguous."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 1, *patch, device=device)
    y = torch.randint(0, 3, (batch, 1, *patch), dtype=torch.uint8, device=device)
    amp = device.type == "cuda"
    dtype = torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp and dtype == torch.float16)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=amp):
            loss = segmentation_loss(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    return steps * batch / _timed(step, steps, device)


def _scrollseg_step_rate(model, batch: int, patch, precision, speed, device, steps: int) -> float:
    """scrollseg's own step (engine.step.optimizer_step) with the preset's speed options."""
    net = speed_up(model, speed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **({"fused": True} if device.type == "cuda" else {}))
    x = to_memory_format(torch.randn(batch, 1, *patch, device=device), speed)
    y = torch.randint(0, 3, (batch, 1, *patch), dtype=torch.uint8, device=device)
    scaler = torch.amp.GradScaler("cuda", enabled=precision.needs_scaler)
    return steps * batch / _timed(lambda: optimizer_step(net, opt, scaler, precision, segmentation_loss, [(x, y)], 1, 1e-4, 12.0), steps, device)


def bench_train_step(preset: str, steps: int) -> dict:
    cfg = build_config(preset)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = build_model(cfg.model).to(device)
    batch = cfg.data.batch_size
    plain = _plain_amp_step_rate(model, batch, cfg.data.patch_size, device, steps)
    speed = resolve_speed(cfg.train, device)
    precision = resolve_precision(cfg.train.precision, device)
    tuned = _scrollseg_step_rate(model, batch, cfg.data.patch_size, precision, speed, device, steps)
    return {"train_preset": preset, "train_plain_samples_per_s": plain, "train_tuned_samples_per_s": tuned,
            "train_step_speedup": tuned / plain,
            "train_tuned_options": {"precision": precision.name, "batch": batch, "compile": speed.compile, "channels_last": speed.channels_last}}


# ---------------------------------------------------------------- 3. inference
def _inference_worker(side: str, state_path: str) -> None:
    """Runs in a fresh process: one side of the inference comparison, JSON to stdout.

    With a model in the state file it predicts with it; without one it blends the input
    itself (an identity predictor), which isolates the memory of the blending buffers."""
    saved = torch.load(state_path, weights_only=True)
    volume = saved["volume"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if "model" in saved:
        model = build_model(build_config("tiny").model).eval()
        model.load_state_dict(saved["model"])
        model.to(device)

        def predictor(batch):
            return torch.sigmoid(model(batch))
    else:

        def predictor(batch):
            return batch

    before = reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with torch.inference_mode():
        if side == "scrollseg":
            from scrollseg.inference.sliding_window import sliding_window

            out = sliding_window(volume[0].to(device), predictor, TILE, OVERLAP, 4, device)[None]
        else:
            from monai.inferers import sliding_window_inference

            from scrollseg.inference.sliding_window import gaussian_weights

            # the same Gaussian tile weights on both sides
            out = sliding_window_inference(volume.to(device), TILE, 4, predictor, overlap=OVERLAP, mode="gaussian",
                                           roi_weight_map=gaussian_weights(TILE, device))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = status_mib("VmHWM") - before
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    torch.save(out.float().cpu(), state_path + f".{side}.out")
    print(json.dumps({"seconds": seconds, "peak_mib": peak}))


def _compare(state: dict, repeats: int) -> tuple[dict, float]:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "state.pt")
        torch.save(state, path)
        for side in ("scrollseg", "monai"):
            runs = []
            for _ in range(repeats):
                proc = subprocess.run([sys.executable, __file__, "_inference", side, path], capture_output=True, text=True, check=True)
                runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            results[side] = {"seconds": min(r["seconds"] for r in runs), "peak_mib": min(r["peak_mib"] for r in runs)}
        difference = float((torch.load(path + ".scrollseg.out") - torch.load(path + ".monai.out")).abs().max())
    return results, difference


def bench_inference(repeats: int = 2) -> dict:
    torch.manual_seed(0)
    model = build_model(build_config("tiny").model).eval()
    results, difference = _compare({"model": model.state_dict(), "volume": torch.randn(1, 1, *VOLUME)}, repeats)
    blend, _ = _compare({"volume": torch.randn(1, 1, 320, 320, 320)}, 1)
    voxels = float(np.prod(VOLUME))
    return {
        "inference_voxels_per_s": voxels / results["scrollseg"]["seconds"],
        "monai_voxels_per_s": voxels / results["monai"]["seconds"],
        "inference_speedup": results["monai"]["seconds"] / results["scrollseg"]["seconds"],
        "inference_peak_mib": results["scrollseg"]["peak_mib"],
        "monai_peak_mib": results["monai"]["peak_mib"],
        "inference_peak_memory_ratio": results["scrollseg"]["peak_mib"] / results["monai"]["peak_mib"],
        "inference_max_abs_difference": difference,
        "blend_peak_mib_320": blend["scrollseg"]["peak_mib"],
        "monai_blend_peak_mib_320": blend["monai"]["peak_mib"],
        "inference_blend_peak_memory_ratio": blend["scrollseg"]["peak_mib"] / blend["monai"]["peak_mib"],
        "inference_setup": {"volume": VOLUME, "tile": TILE, "overlap": OVERLAP, "tile_batch": 4, "model": "tiny preset"},
    }


# ---------------------------------------------------------------- 4. scoring
GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "data" / "metric_golden"


def _mirror_tile(volume: np.ndarray, size: int) -> np.ndarray:
    """Tile a volume by reflection (so sheets continue across seams) and crop to size^3."""
    out = volume
    for axis in range(3):
        reps = -(-size // volume.shape[axis])
        out = np.concatenate([out if i % 2 == 0 else np.flip(out, axis=axis) for i in range(reps)], axis=axis)
    return np.ascontiguousarray(out[:size, :size, :size])


def scoring_pairs() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(label, prediction) pairs of 320^3: synthetic sheets, and real Scroll 1 sheets.

    The real pair is the reference case ``real0_shift1`` (porous real sheets, about
    250,000 one-dimensional features at this size, the prediction shifted by one
    voxel), mirror-tiled from 96^3.
    """
    rng = np.random.default_rng(0)
    _, label = synth_chunk((320, 320, 320), rng)
    pred = np.roll(label == 1, 1, axis=1)
    pred[rng.random(pred.shape) < 0.002] = True  # a little salt
    pairs = {"synthetic": (label, pred.astype(np.uint8))}
    if GOLDEN.with_suffix(".npz").exists():
        packed = np.load(GOLDEN.with_suffix(".npz"))
        cases = json.loads(GOLDEN.with_suffix(".json").read_text())
        info = packed["predinfo_real0_shift1"]
        shape = tuple(int(v) for v in info[:3])
        real_pred = np.unpackbits(packed["pred_real0_shift1"])[: np.prod(shape)].reshape(shape).astype(np.uint8)
        real_label = packed[f"label_{cases['real0_shift1']['label']}"]
        pairs["real sheets"] = (_mirror_tile(real_label, 320), _mirror_tile(real_pred, 320))
    return pairs


def bench_score() -> dict:
    from scrollseg.metrics.leaderboard import prepare_masks, score_volume
    from scrollseg.metrics.surface_dice import surface_dice
    from scrollseg.metrics.topology import topo_counts
    from scrollseg.metrics.voi import variation_of_information

    warm = np.zeros((24, 24, 24), np.uint8)
    warm[4:20, 8, 4:20] = 1
    warm[8:10, 8, 8:10] = 0
    t0 = time.perf_counter()
    score_volume(warm, np.roll(warm, 1, axis=2))  # compiles the kernels (cached on disk afterwards)
    results: dict = {"score_compile_seconds": time.perf_counter() - t0, "score_cases": {}}
    for case, (label, pred) in scoring_pairs().items():
        gt, pr = prepare_masks(label, pred)
        parts = {}
        for name, fn in (("topology", topo_counts), ("surface_dice", surface_dice), ("voi", variation_of_information)):
            t0 = time.perf_counter()
            fn(gt, pr)
            parts[name] = time.perf_counter() - t0
        before = reset_peak_rss()
        t0 = time.perf_counter()
        score_volume(label, pred)
        seconds = time.perf_counter() - t0
        results["score_cases"][case] = {"seconds": seconds, "parts": parts, "peak_mib": status_mib("VmHWM") - before}
    return results


# ---------------------------------------------------------------- 5. data wait
def bench_data_wait(data: Path, steps: int) -> dict:
    from scrollseg.engine.trainer import train

    with tempfile.TemporaryDirectory() as tmp:
        cfg = build_config("tiny", [f"train.steps={steps}", "data.num_workers=1", "train.val_every=100000", "train.log_every=10"])
        train(data, Path(tmp) / "run", cfg, progress=False)
        records = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    summary = next(r for r in records if r.get("event") == "summary")
    return {"data_wait_fraction": summary["data_wait"]}


def run_all(json_path: str | None = None, workers: int = 2, quick: bool = False) -> dict:
    out: dict = {"device": "cuda" if torch.cuda.is_available() else "cpu", "cpu_count": os.cpu_count(), "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        say("making data ...")
        write_dataset(data, n_train=2, n_test=0, size=(192, 192, 192) if quick else (320, 320, 320), seed=1)
        say("1/5 loader ...")
        out.update(bench_loader(data, workers, batches=10 if quick else 20))
        say("2/5 training step ...")
        out.update(bench_train_step("default" if torch.cuda.is_available() else "tiny", steps=5 if quick else 20))
        say("3/5 inference ...")
        out.update(bench_inference(repeats=1 if quick else 2))
        say("4/5 scoring ...")
        out.update(bench_score())
        say("5/5 data wait ...")
        small = Path(tmp) / "small"
        write_dataset(small, n_train=4, n_test=0, seed=2)
        out.update(bench_data_wait(small, steps=40 if quick else 150))
    print(format_report(out))
    if json_path:
        Path(json_path).write_text(json.dumps(out, indent=2))
    return out


def _score_lines(r: dict) -> list[str]:
    lines = []
    for case, c in r["score_cases"].items():
        p = c["parts"]
        lines.append(
            f"{'scoring':<10} {c['seconds']:>10.2f} s    {'56-85 s':>13} {56 / c['seconds']:>6.1f}x  official code per 320^3 as reported "
            f"(topology 55-76 s, ~5 GB); {case}"
        )
        lines.append(
            f"{'':<10} topology {p['topology']:.2f} s (official 55-76 s), surface Dice {p['surface_dice']:.2f} s, "
            f"VOI {p['voi']:.2f} s; peak {c['peak_mib']:.0f} MiB above the inputs (official ~5 GB)"
        )
    lines.append(f"{'':<10} first use compiles the kernels once: {r['score_compile_seconds']:.1f} s")
    return lines


def format_report(r: dict) -> str:
    return "\n".join([
        f"{'stage':<10} {'scrollseg':>16} {'baseline':>16} {'ratio':>7}  baseline",
        f"{'loader':<10} {r['loader_patches_per_s']:>10.1f} p/s  {r['naive_loader_patches_per_s']:>10.2f} p/s {r['loader_speedup']:>6.1f}x  decode LZW + numpy augment per sample, same workers",
        f"{'train':<10} {r['train_tuned_samples_per_s']:>10.2f} s/s  {r['train_plain_samples_per_s']:>10.2f} s/s {r['train_step_speedup']:>6.2f}x  plain AMP step, eager ({r['train_preset']} preset)",
        f"{'inference':<10} {r['inference_voxels_per_s'] / 1e6:>8.2f} Mvox/s  {r['monai_voxels_per_s'] / 1e6:>8.2f} Mvox/s {r['inference_speedup']:>6.2f}x  MONAI sliding_window_inference (max |diff| {r['inference_max_abs_difference']:.1e})",
        f"{'memory':<10} {r['inference_peak_mib']:>10.0f} MiB  {r['monai_peak_mib']:>10.0f} MiB {r['inference_peak_memory_ratio']:>6.2f}x  peak with the model, ours / MONAI's",
        f"{'blending':<10} {r['blend_peak_mib_320']:>10.0f} MiB  {r['monai_blend_peak_mib_320']:>10.0f} MiB {r['inference_blend_peak_memory_ratio']:>6.2f}x  peak of blending alone, 320^3, ours / MONAI's",
        *_score_lines(r),
        f"{'data wait':<10} {r['data_wait_fraction']:>10.1%}      of step time, tiny preset, 1 worker",
    ])


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "_inference":
        _inference_worker(sys.argv[2], sys.argv[3])
    else:
        run_all(sys.argv[1] if len(sys.argv) > 1 else None)
