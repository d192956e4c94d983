"""The training loop, readable top to bottom.

One code path for the CPU, one GPU and DDP ranks (the launcher decides how many
processes exist; this loop asks ``dist`` who it is). Each optimizer step takes
``accumulation`` micro-batches; patches and augmentations are a pure function of
(seed, step, slot = micro x world + rank) and the LR a pure function of the step, so
a resumed run continues exactly and N ranks train what one process with N-fold
accumulation trains.
Only rank 0 logs, validates and writes checkpoints.
"""
from __future__ import annotations

import contextlib
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from .. import __version__, dist
from ..checkpoint import RunDir
from ..config import Config, check_resumable, dump_yaml, from_dict, read_yaml
from ..data.augment import augment_batch
from ..data.cache import VolumeCache
from ..data.layout import VolumeRef, list_volumes
from ..data.loader import make_loader
from ..data.sampler import PatchSampler
from ..errors import DataError, ScrollsegError
from ..losses import segmentation_loss
from ..models import build_model
from .deadline import Clock, StopSignals
from .monitor import GpuMonitor
from .log import MetricsLog, say
from .precision import resolve_precision
from .schedule import learning_rate
from .validation import BackgroundScorer, predict_masks, score_pairs
from .speed import resolve_speed, speed_up, to_memory_format


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    finished: bool  # reached train.steps
    stop_reason: str
    best_score: float | None


def split_volumes(refs: list[VolumeRef], cfg: Config) -> tuple[list[VolumeRef], list[VolumeRef]]:
    """Held-out volumes by id, by volume or by scroll, deterministic for a seed."""
    if cfg.data.val_ids:
        val_ids = set(cfg.data.val_ids)
        return [r for r in refs if r.id not in val_ids], [r for r in refs if r.id in val_ids]
    if len(refs) < 2 or cfg.data.val_fraction <= 0:
        return refs, []
    rng = np.random.default_rng(cfg.train.seed)
    if cfg.data.split_by == "scroll":
        groups = sorted({r.scroll_id for r in refs})
        if len(groups) >= 2:
            n_val = max(1, round(cfg.data.val_fraction * len(groups)))
            val_groups = set(np.asarray(groups)[rng.permutation(len(groups))[:n_val]].tolist())
            return [r for r in refs if r.scroll_id not in val_groups], [r for r in refs if r.scroll_id in val_groups]
    order = rng.permutation(len(refs))
    n_val = min(len(refs) - 1, max(1, round(cfg.data.val_fraction * len(refs))))
    val_idx = set(order[:n_val].tolist())
    return [r for i, r in enumerate(refs) if i not in val_idx], [r for i, r in enumerate(refs) if i in val_idx]


def make_optimizer(model: torch.nn.Module, cfg: Config, device: torch.device) -> torch.optim.Optimizer:
    o = cfg.optim
    fused = {"fused": True} if device.type == "cuda" else {}
    if o.name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay, **fused)
    return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, nesterov=True, weight_decay=o.weight_decay, **fused)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def own_rng_state() -> dict:
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {"bit_generator": np_state["bit_generator"], "key": np_state["state"]["key"].tolist(), "pos": int(np_state["state"]["pos"]),
                  "has_gauss": int(np_state["has_gauss"]), "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def gather_rng_states(info: dist.DistInfo) -> dict:
    """Every rank's RNG states (python, numpy, torch, CUDA), keyed by rank."""
    return {str(rank): state for rank, state in enumerate(dist.all_gather_object(own_rng_state(), info))}


def restore_rng_state(state: dict | None) -> None:
    if not state:
        return
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"], "state": {"key": np.asarray(n["key"], dtype=np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def background_scoring(cfg: Config, device: torch.device) -> bool:
    """Score validations in a CPU process: asked for, or automatic on an accelerator."""
    return cfg.train.val_scoring == "background" or (cfg.train.val_scoring == "auto" and device.type != "cpu")


def train(data_dir: Path | str, run_dir: Path | str, cfg: Config, progress: bool = True, strategy: str = "ddp",
          allow_change: tuple[str, ...] = ()) -> TrainResult:
    """Train (or resume) the run in ``run_dir`` in this process, as one rank of torchrun's
    group when its environment says so. ``strategy="dp"`` wraps the model in DataParallel
    over every visible GPU instead."""
    info = dist.from_environment()
    device = dist.init(info)
    main = info.is_main
    run = RunDir(run_dir)
    log = MetricsLog(run.metrics_path, enabled=main)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not cfg.train.deterministic

    if run.config_path.is_file() and run.resume_candidates():  # a run with nothing saved may start over
        check_resumable(from_dict(read_yaml(run.config_path)), cfg, allow_change, run.config_path)
    if main:
        try:
            run.root.mkdir(parents=True, exist_ok=True)
            run.remove_temporary_files()  # left by a kill during a write
            run.config_path.write_text(dump_yaml(cfg))
        except OSError as exc:
            raise ScrollsegError(f"{run.root}: cannot write the run folder ({exc.strerror}); choose a writable RUN path") from exc

    # ---- data
    refs = list_volumes(data_dir, "train")
    if not refs:
        raise DataError(f"{data_dir}: the train set is empty (no id of train.csv has both image and label); check the folder")
    train_refs, val_refs = split_volumes(refs, cfg)
    cache = VolumeCache(cfg.data.cache_dir or run.root / "cache", cfg.data.max_voxels)
    # rank 0 decodes the TIFFs; the others wait and then memory-map the same files
    if main:
        for ref in refs:
            cache.load(ref)
    dist.barrier(info)
    train_volumes = [cache.load(r) for r in train_refs]
    val_volumes = [cache.load(r) for r in val_refs][: cfg.train.val_volumes or None]

    # ---- model and optimiser
    seed_everything(cfg.train.seed)
    model = build_model(cfg.model).to(device)
    optimizer = make_optimizer(model, cfg, device)
    precision = resolve_precision(cfg.train.precision, device)
    scaler = torch.amp.GradScaler("cuda", enabled=precision.needs_scaler)

    # ---- resume
    step, best_score, history = 0, None, []
    micro_batch, accumulation = cfg.data.batch_size, cfg.optim.accumulation
    ckpt = run.load_newest_valid()
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler") and precision.needs_scaler:
            scaler.load_state_dict(ckpt["scaler"])
        step = int(ckpt["step"])
        best_score = ckpt.get("best_score")
        history = list(ckpt.get("history", []))
        # an out-of-memory fallback of an earlier session stays in force
        micro_batch = int(ckpt.get("micro_batch", micro_batch))
        accumulation = int(ckpt.get("accumulation", accumulation))
        restore_rng_state(ckpt.get("rng", {}).get(str(info.rank)))
        log.truncate_after(step)
        say(f"resuming {run.root} at step {step}" + (f" (rank {info.rank})" if info.enabled else ""))
    dist.barrier(info)
    speed = resolve_speed(cfg.train, device)
    fast = speed_up(model, speed, device)
    if info.enabled:
        net = DistributedDataParallel(fast, device_ids=[device.index] if device.type == "cuda" else None)
    elif strategy == "dp" and torch.cuda.device_count() > 1:
        net = torch.nn.DataParallel(fast)
    else:
        net = fast

    if device.type == "cpu" and sum(p.numel() for p in model.parameters()) > 20_000_000:
        warnings.warn("this model is sized for GPUs and will train very slowly on the CPU; use --preset tiny for a CPU run", stacklevel=2)
    global_batch = micro_batch * info.world * accumulation
    say(
        f"train: {len(train_volumes)} volumes, validate: {len(val_volumes)} | device {device} x{info.world}, {precision.name} | "
        f"global batch {global_batch} = {micro_batch} per device x {info.world} devices x {accumulation} accumulation",
        main,
    )
    if step == 0:
        log.write({"step": 0, "event": "start", "global_batch": global_batch, "world": info.world, "precision": precision.name})

    def state(rng: dict) -> dict:
        return {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if precision.needs_scaler else None,
            "step": step,
            "best_score": best_score,
            "history": history,
            "config": cfg.to_dict(),
            "config_digest": cfg.digest(),
            "version": __version__,
            "global_batch": global_batch,
            "micro_batch": micro_batch,
            "accumulation": accumulation,
            "rng": rng,
        }

    scorer = BackgroundScorer() if main and background_scoring(cfg, device) else None
    if main:
        run.drop_candidates()

    def record_validation(at_step: int, scores: dict) -> bool:
        """Log a validation; whether it is the best so far."""
        nonlocal best_score
        log.write({"step": at_step, **scores})
        say(f"step {at_step:>6} validation leaderboard {scores['val/leaderboard']:.4f}", main)
        if best_score is None or scores["val/leaderboard"] > best_score:
            best_score = scores["val/leaderboard"]
            return True
        return False

    def settle_validations(wait: bool) -> None:
        for at_step, scores in scorer.results(wait):
            run.settle_candidate(at_step, record_validation(at_step, scores))

    def open_batches():
        sampler = PatchSampler(train_volumes, cfg.data.patch_size, micro_batch, cfg.data.foreground_fraction, cfg.train.seed, info.rank, info.world)
        return iter(make_loader(sampler, step, cfg.train.steps, accumulation, cfg.data.num_workers, device.type == "cuda"))

    def optimizer_step(lr: float, batches) -> float:
        """One optimizer step over ``accumulation`` micro-batches; returns the summed loss."""
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for micro in range(accumulation):
            t_wait = time.perf_counter()
            got_step, got_micro, batch = next(batches)
            window["wait"] += time.perf_counter() - t_wait
            assert (got_step, got_micro) == (step, micro), "loader out of order"
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            slot = micro * info.world + info.rank  # as the sampler numbers micro-batches
            gen = torch.Generator().manual_seed(int(np.random.SeedSequence([cfg.train.seed, step, slot]).generate_state(1)[0]))
            x, y = augment_batch(batch["image"], batch["label"], batch["mean"], batch["std"], cfg.augment, gen)
            x = to_memory_format(x, speed)
            sync = micro == accumulation - 1 or not info.enabled
            with (contextlib.nullcontext() if sync else net.no_sync()), precision.autocast():
                loss = segmentation_loss(net(x), y, cfg.loss.bce_weight, cfg.loss.dice_weight) / accumulation
            scaler.scale(loss).backward()
            total += float(loss.detach())
        scaler.unscale_(optimizer)
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        return total

    clock = Clock(cfg.train.minutes, cfg.train.time_limit, cfg.train.checkpoint_minutes)
    stop_reason = "steps" if step >= cfg.train.steps else ""
    window = {"loss": 0.0, "n": 0, "wait": 0.0, "t0": time.perf_counter()}
    totals = {"wait": 0.0, "time": 0.0}
    net.train()

    with StopSignals() as signals, GpuMonitor() as gpus:
        batches = open_batches()
        while step < cfg.train.steps and not stop_reason:
            lr = learning_rate(step, cfg.train.steps, cfg.optim)
            try:
                window["loss"] += optimizer_step(lr, batches)
            except torch.cuda.OutOfMemoryError:
                # keep the effective batch: half the micro-batch, twice the accumulation
                optimizer.zero_grad(set_to_none=True)
                del batches
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                if info.enabled or micro_batch % 2:
                    raise ScrollsegError(
                        f"out of memory at step {step} with a micro-batch of {micro_batch}"
                        f"{' on ' + str(info.world) + ' processes' if info.enabled else ''}; resume with a smaller "
                        f"data.batch_size (and a larger optim.accumulation) or data.patch_size"
                    ) from None
                micro_batch //= 2
                accumulation *= 2
                log.write({"step": step, "event": "out_of_memory", "micro_batch": micro_batch, "accumulation": accumulation})
                say(f"out of memory at step {step}: micro-batch {micro_batch} x {accumulation} accumulation, same effective batch", main)
                batches = open_batches()
                continue
            step += 1
            window["n"] += 1

            if step % cfg.train.log_every == 0 or step == cfg.train.steps:
                elapsed = time.perf_counter() - window["t0"]
                record = {
                    "step": step,
                    "loss": window["loss"] / window["n"],
                    "lr": lr,
                    "samples_per_s": window["n"] * global_batch / elapsed,
                    "data_wait": window["wait"] / elapsed,
                    "elapsed_s": clock.elapsed(),
                    **gpus.latest(),
                }
                totals["wait"] += window["wait"]
                totals["time"] += elapsed
                history.append({"step": step, "loss": record["loss"]})
                log.write(record)
                say(f"step {step:>6}/{cfg.train.steps} loss {record['loss']:.4f} lr {lr:.2e} {record['samples_per_s']:.1f} samples/s data-wait {record['data_wait']:.0%}", main and progress)
                window = {"loss": 0.0, "n": 0, "wait": 0.0, "t0": time.perf_counter()}

            if val_volumes and (step % cfg.train.val_every == 0 or step == cfg.train.steps):
                if main:
                    masks = predict_masks(model, val_volumes, cfg, device)
                    labels = [np.asarray(v.label) for v in val_volumes]
                    if scorer is None:
                        scores = score_pairs(labels, masks)
                        if record_validation(step, scores):
                            run.save_best(state({"0": own_rng_state()} if not info.enabled else {}))
                    else:
                        run.save_candidate(state({"0": own_rng_state()} if not info.enabled else {}), step)
                        scorer.submit(step, labels, masks)
                dist.barrier(info)
            if scorer is not None:
                settle_validations(wait=step >= cfg.train.steps)

            stop = signals.received or ("time-limit" if clock.deadline_near() else None) or ("minutes" if clock.budget_spent() else None)
            stop = dist.broadcast_flag(bool(stop), info, device) and (stop or "peer")
            if stop:
                stop_reason = stop
            finished = step >= cfg.train.steps
            periodic = step % cfg.train.checkpoint_steps == 0 or clock.checkpoint_due()
            if finished or stop or periodic:
                rng = gather_rng_states(info)  # a collective: every rank takes part
                if main:
                    run.save(state(rng), step, cfg.train.keep_last, final=finished or stop == "minutes")
                clock.checkpointed()
            if finished:
                stop_reason = "steps"

    del batches
    if scorer is not None:
        if stop_reason == "steps":
            settle_validations(wait=True)
        scorer.close()  # a stopped run does not wait; its pending candidates are dropped
        run.drop_candidates()
    if totals["time"] > 0:
        summary = {"data_wait": totals["wait"] / totals["time"], **gpus.summary()}
        log.write({"step": step, "event": "summary", **summary})
        say("run summary: " + ", ".join(f"{k} {v:.3g}" for k, v in summary.items()), main and progress)
    if stop_reason in ("time-limit",) or stop_reason.startswith("SIG") or stop_reason == "peer":
        say(f"stopped at step {step} ({stop_reason}); checkpoint saved. Resume with the same command: scrollseg train {data_dir} {run.root}", main)
    dist.barrier(info)
    dist.shutdown(info)
    return TrainResult(run.root, step, step >= cfg.train.steps, stop_reason, best_score)

