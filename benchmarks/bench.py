"""scrollseg bench: speed of each stage against the tools its users would otherwise pick,
measured in one run on the same machine.

1. loader    augmented patches/s delivered to the training step: scrollseg's sampler,
             loader and ``augment_batch`` (the preset's augmentation, on the training
             device) against nnU-Net v2's own data loader and default training augmentation
             and against the MONAI pipeline a MONAI user writes, with the same volumes,
             patch, batch and workers; each peer in its own process (benchmarks/peers/).
2. train     samples/s of scrollseg's training step (engine.step, the preset's precision,
             compile and memory format) against the plain AMP step (autocast + GradScaler,
             eager; fp32 on the CPU), same model, batch and patch; and the cost of the
             preset's augmentation per batch (``augment_batch`` on the training device)
             against mirroring only, as a share of that step.
3. inference voxels/s and peak memory of scrollseg's sliding window against MONAI's
             ``sliding_window_inference`` with the same model, tile, overlap and Gaussian
             blending; each side runs in a fresh process so peak RSS is its own.
4. scoring   seconds per 320^3 volume of the leaderboard metric, by part.
5. data wait fraction of step time spent waiting for data in a tiny-preset CPU run.

The peers (nnunetv2, MONAI) live in their own venv, ``.venv-peers`` beside ``.venv``,
made by ``scripts/peers.sh`` and sharing the project's torch; without it each comparison
with a peer is skipped with a one-line note.

Run: ``scrollseg bench [--json F] [--workers N] [--quick]`` from a source checkout;
``scripts/make_performance_doc.py F`` turns the JSON into docs/performance.md.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

import scrollseg
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

ROOT = Path(__file__).resolve().parents[1]
PEERS_VENV = ROOT / ".venv-peers"
PEER_SCRIPTS = Path(__file__).resolve().parent / "peers"
SRC = Path(scrollseg.__file__).resolve().parents[1]  # the scrollseg a peer's process imports, this one
sys.path.insert(0, str(PEER_SCRIPTS))
from loader_common import time_batches  # noqa: E402  (the same clock on every side)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_augment import FLIPS, time_augment  # noqa: E402

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


# ---------------------------------------------------------------- peers
def peer_python(venv: Path) -> str | None:
    """The interpreter of the peers venv made by ``scripts/peers.sh``, or None without one."""
    python = venv / "bin" / "python"
    return str(python) if python.exists() else None


def missing_peers_note(peer: str, venv: Path) -> str:
    return f"{peer}: skipped, no peers venv at {venv} (make it with scripts/peers.sh)"


class PeerFailed(Exception):
    """A peer's process exited with an error; the message is its last line of output."""


def run_side(python: str, args: list[str]) -> dict:
    """One side of a comparison in its own process, with this scrollseg importable; its last
    line of stdout is its JSON result."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p))
    proc = subprocess.run([python, *args], capture_output=True, text=True, env=env)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or lines or ["no output"])[-1]
        raise PeerFailed(f"exit {proc.returncode}: {tail}")
    return json.loads(lines[-1])


# ---------------------------------------------------------------- 1. loader
def scrollseg_batches(volumes, cfg, workers: int, steps: int, device: torch.device):
    """scrollseg's patches as the trainer receives them: the sampler cuts the enlarged crops in
    the loader's workers, then ``augment_batch`` resamples the patch from them with the
    preset's augmentation on the training device."""
    sampler = PatchSampler(volumes, cfg.data.patch_size, cfg.data.batch_size, cfg.data.foreground_fraction, seed=0, augment=cfg.augment)
    for step, _, batch in make_loader(sampler, 0, steps, 1, workers, pin_memory=device.type == "cuda"):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        gen = torch.Generator().manual_seed(step)
        yield augment_batch(batch["image"], batch["label"], batch["mean"], batch["std"], cfg.augment, gen, cfg.data.patch_size)


LOADER_PEERS = {"nnunet": ("nnU-Net", "nnunet_loader.py"), "monai": ("MONAI", "monai_loader.py")}


def bench_loader(data: Path, workers: int, batches: int, peers_venv: Path, preset: str = "default",
                 overrides: tuple[str, ...] = (), warmup: int = 2, windows: int = 1) -> dict:
    """Augmented patches/s delivered to the step by scrollseg, nnU-Net and MONAI: same volumes,
    patch, batch, workers and share of foreground patches, each side's own augmentation;
    the timed batches are also reported in ``windows`` windows, to show the spread."""
    cfg = build_config(preset, list(overrides))
    patch, batch = cfg.data.patch_size, cfg.data.batch_size
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cache = VolumeCache(data / "cache", cfg.data.max_voxels)
    t0 = time.perf_counter()
    volumes = [cache.load(r) for r in list_volumes(data, "train")]
    cache_s = time.perf_counter() - t0
    ours = time_batches(scrollseg_batches(volumes, cfg, workers, warmup + batches, device), warmup, batches, windows)
    out = {
        "loader_patches_per_s": ours["patches_per_s"],
        "cache_build_s": cache_s,
        "scrollseg_loader_details": {k: v for k, v in ours.items() if k != "patches_per_s"},
        "loader_setup": {"preset": preset, "patch": list(patch), "batch": batch, "workers": workers, "batches_timed": batches, "windows": windows,
                         "foreground_fraction": cfg.data.foreground_fraction, "volumes": [list(v.shape) for v in volumes],
                         "device": device.type, "augment": asdict(cfg.augment)},
        "notes": [],
    }
    python = peer_python(peers_venv)
    with tempfile.TemporaryDirectory() as work:
        for key, (name, script) in LOADER_PEERS.items():
            out[f"{key}_loader_patches_per_s"] = out[f"loader_vs_{key}"] = None
            if python is None:
                out["notes"].append(missing_peers_note(name, peers_venv))
                continue
            args = [str(PEER_SCRIPTS / script), "--data", str(data), "--work", str(Path(work) / key), "--patch", *map(str, patch),
                    "--batch", str(batch), "--workers", str(workers), "--foreground", str(cfg.data.foreground_fraction),
                    "--warmup", str(warmup), "--batches", str(batches), "--windows", str(windows)]
            try:
                result = run_side(python, args)
            except PeerFailed as exc:
                out["notes"].append(f"{name}: loader failed, {exc}")
                continue
            out[f"{key}_loader_patches_per_s"] = result["patches_per_s"]
            out[f"loader_vs_{key}"] = ours["patches_per_s"] / result["patches_per_s"]
            out[f"{key}_loader_details"] = {k: v for k, v in result.items() if k != "patches_per_s"}
    measured = {key: out[f"{key}_loader_patches_per_s"] for key in LOADER_PEERS if out[f"{key}_loader_patches_per_s"]}
    strongest = max(measured, key=measured.get) if measured else None
    out["loader_strongest_peer"] = LOADER_PEERS[strongest][0] if strongest else None
    out["loader_speedup"] = out[f"loader_vs_{strongest}"] if strongest else None
    for note in out["notes"]:
        say(note)
    return out


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
    edge = cfg.data.patch_size[0]
    augment_ms = time_augment(batch, edge, steps, cfg.augment, device, repeats=2)
    flips_ms = time_augment(batch, edge, steps, FLIPS, device, repeats=2)
    step_ms = batch / tuned * 1e3
    return {"train_preset": preset, "train_plain_samples_per_s": plain, "train_tuned_samples_per_s": tuned,
            "train_step_speedup": tuned / plain, "augment_ms": augment_ms, "augment_flips_ms": flips_ms,
            "augment_share_of_step": augment_ms / (augment_ms + step_ms),
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
    t0, cpu0 = time.perf_counter(), time.process_time()
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
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    peak = status_mib("VmHWM") - before
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    torch.save(out.float().cpu(), state_path + f".{side}.out")
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_mib": peak}))


def _compare(state: dict, repeats: int, monai_python: str | None, notes: list[str]) -> tuple[dict, float | None]:
    """Each side's best seconds and peak memory over ``repeats`` fresh processes, and the
    largest difference of their outputs; MONAI's side runs with the peers' python, when
    there is one, and a failure of it becomes a note."""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "state.pt")
        torch.save(state, path)
        for side, python in (("scrollseg", sys.executable), ("monai", monai_python)):
            if python is None:
                continue
            try:
                runs = [run_side(python, [__file__, "_inference", side, path]) for _ in range(repeats)]
            except PeerFailed as exc:
                if side == "scrollseg":
                    raise
                notes.append(f"MONAI inference: failed, {exc}")
                continue
            results[side] = {key: min(r[key] for r in runs) for key in ("seconds", "cpu_seconds", "peak_mib")}
        difference = None
        if "monai" in results:
            difference = float((torch.load(path + ".scrollseg.out") - torch.load(path + ".monai.out")).abs().max())
    return results, difference


def bench_inference(peers_venv: Path, repeats: int = 2) -> dict:
    torch.manual_seed(0)
    model = build_model(build_config("tiny").model).eval()
    python = peer_python(peers_venv)
    notes = [] if python else [missing_peers_note("MONAI inference", peers_venv)]
    results, difference = _compare({"model": model.state_dict(), "volume": torch.randn(1, 1, *VOLUME)}, repeats, python, notes)
    blend, _ = _compare({"volume": torch.randn(1, 1, 320, 320, 320)}, 1, python if "monai" in results else None, notes)
    voxels = float(np.prod(VOLUME))
    ours, theirs = results["scrollseg"], results.get("monai")
    ours_blend, their_blend = blend["scrollseg"], blend.get("monai")
    for note in notes:
        say(note)
    return {
        "inference_voxels_per_s": voxels / ours["seconds"],
        "monai_voxels_per_s": voxels / theirs["seconds"] if theirs else None,
        "inference_speedup": theirs["seconds"] / ours["seconds"] if theirs else None,
        # on the CPU, the ratio of CPU time: the same comparison, unmoved by other work on a shared machine
        "inference_cpu_time_speedup": theirs["cpu_seconds"] / ours["cpu_seconds"] if theirs and not torch.cuda.is_available() else None,
        "inference_peak_mib": ours["peak_mib"],
        "monai_peak_mib": theirs["peak_mib"] if theirs else None,
        "inference_peak_memory_ratio": ours["peak_mib"] / theirs["peak_mib"] if theirs else None,
        "inference_max_abs_difference": difference,
        "blend_peak_mib_320": ours_blend["peak_mib"],
        "monai_blend_peak_mib_320": their_blend["peak_mib"] if their_blend else None,
        "inference_blend_peak_memory_ratio": ours_blend["peak_mib"] / their_blend["peak_mib"] if their_blend else None,
        "inference_setup": {"volume": VOLUME, "tile": TILE, "overlap": OVERLAP, "tile_batch": 4, "model": "tiny preset"},
        "notes": notes,
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


def merge(out: dict, stage: dict) -> None:
    """Add a stage's figures to the results; notes accumulate."""
    out["notes"].extend(stage.pop("notes", []))
    out.update(stage)


def run_all(json_path: str | None = None, workers: int = 2, quick: bool = False, peers_venv: Path = PEERS_VENV) -> dict:
    out: dict = {"device": "cuda" if torch.cuda.is_available() else "cpu", "cpu_count": len(os.sched_getaffinity(0)),
                 "torch": torch.__version__, "quick": quick, "notes": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        say("making data ...")
        write_dataset(data, n_train=2, n_test=0, size=(192, 192, 192) if quick else (320, 320, 320), seed=1)
        say("1/5 loader ...")
        merge(out, bench_loader(data, workers, batches=8 if quick else 20, peers_venv=peers_venv, windows=2 if quick else 4))
        say("2/5 training step ...")
        merge(out, bench_train_step("default" if torch.cuda.is_available() else "tiny", steps=5 if quick else 20))
        say("3/5 inference ...")
        merge(out, bench_inference(peers_venv, repeats=1 if quick else 2))
        say("4/5 scoring ...")
        merge(out, bench_score())
        say("5/5 data wait ...")
        small = Path(tmp) / "small"
        write_dataset(small, n_train=4, n_test=0, seed=2)
        merge(out, bench_data_wait(small, steps=40 if quick else 150))
    print(format_report(out))
    if json_path:
        Path(json_path).write_text(json.dumps(out, indent=2))
    return out


def _fmt(value, spec: str, unit: str = "", scale: float = 1.0) -> str:
    """A figure, or n/a where its comparison was skipped."""
    return f"{'n/a':>{len(format(0.0, spec))}}" if value is None else f"{value / scale:{spec}}{unit}"


def _score_lines(r: dict) -> list[str]:
    lines = []
    for case, c in r["score_cases"].items():
        p = c["parts"]
        lines.append(f"{'scoring':<10} {c['seconds']:>10.2f} s per 320^3 volume, one core ({case}): topology {p['topology']:.2f} s, "
                     f"surface Dice {p['surface_dice']:.2f} s, VOI {p['voi']:.2f} s; peak {c['peak_mib']:.0f} MiB above the inputs")
    lines.append(f"{'':<10} first use compiles the kernels once: {r['score_compile_seconds']:.1f} s")
    return lines


def format_report(r: dict) -> str:
    setup = r["loader_setup"]
    same = f"patch {'x'.join(map(str, setup['patch']))}, batch {setup['batch']}, {setup['workers']} workers"
    return "\n".join([
        f"{'stage':<10} {'scrollseg':>16} {'peer':>16} {'ratio':>7}  peer",
        f"{'loader':<10} {r['loader_patches_per_s']:>10.2f} p/s  {_fmt(r['nnunet_loader_patches_per_s'], '>10.2f', ' p/s')} "
        f"{_fmt(r['loader_vs_nnunet'], '>6.2f', 'x')}  nnU-Net v2 data loader + default augmentation ({same})",
        f"{'':<10} {'':>16}  {_fmt(r['monai_loader_patches_per_s'], '>10.2f', ' p/s')} "
        f"{_fmt(r['loader_vs_monai'], '>6.2f', 'x')}  MONAI CacheDataset + RandCropByPosNegLabeld + the same augmentations",
        f"{'train':<10} {r['train_tuned_samples_per_s']:>10.2f} s/s  {r['train_plain_samples_per_s']:>10.2f} s/s {r['train_step_speedup']:>6.2f}x  plain AMP step, eager ({r['train_preset']} preset)",
        f"{'inference':<10} {r['inference_voxels_per_s'] / 1e6:>8.2f} Mvox/s  {_fmt(r['monai_voxels_per_s'], '>8.2f', ' Mvox/s', 1e6)} "
        f"{_fmt(r['inference_speedup'], '>6.2f', 'x')}  MONAI sliding_window_inference (max |diff| {_fmt(r['inference_max_abs_difference'], '.1e')}); "
        f"CPU time {_fmt(r.get('inference_cpu_time_speedup'), '.2f', 'x')}",
        f"{'memory':<10} {r['inference_peak_mib']:>10.0f} MiB  {_fmt(r['monai_peak_mib'], '>10.0f', ' MiB')} {_fmt(r['inference_peak_memory_ratio'], '>6.2f', 'x')}  peak with the model, ours / MONAI's",
        f"{'blending':<10} {r['blend_peak_mib_320']:>10.0f} MiB  {_fmt(r['monai_blend_peak_mib_320'], '>10.0f', ' MiB')} {_fmt(r['inference_blend_peak_memory_ratio'], '>6.2f', 'x')}  peak of blending alone, 320^3, ours / MONAI's",
        f"{'augment':<10} {r['augment_ms']:>11.1f} ms  {r['augment_flips_ms']:>11.1f} ms {r['augment_ms'] / r['augment_flips_ms']:>6.2f}x  "
        f"mirroring only; the preset's augmentation takes {r['augment_share_of_step']:.1%} of a step",
        *_score_lines(r),
        f"{'data wait':<10} {r['data_wait_fraction']:>10.1%}      of step time, tiny preset, 1 worker",
        *(f"note: {n}" for n in r["notes"]),
    ])


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "_inference":
        _inference_worker(sys.argv[2], sys.argv[3])
    else:
        run_all(sys.argv[1] if len(sys.argv) > 1 else None)
