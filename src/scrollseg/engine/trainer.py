"""The training loop: a small ``Trainer`` over a ``TrainState``.

One code path for the CPU, one GPU and DDP ranks (the launcher decides how many
processes exist; the trainer asks ``dist`` who it is). Each optimizer step takes
``accumulation`` micro-batches; patches and augmentations are a pure function of
(seed, step, slot = micro x world + rank) and the LR a pure function of the step, so
a resumed run continues exactly and N ranks train what one process with N-fold
accumulation trains. Only rank 0 logs, validates and writes checkpoints.
The config reaching here has been checked against the run's by ``scrollseg.api``.
"""
from __future__ import annotations

import json
import random
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from .. import __version__, dist
from ..checkpoint import RunDir, atomic_write_text
from ..config import Config, dump_yaml
from ..data.augment import augment_batch
from ..data.cache import VolumeCache, cache_folder, default_workers, prepare_cache
from .verso import ignore_verso_background
from ..data.layout import list_volumes
from ..data.loader import make_loader
from ..data.sampler import PatchSampler, volume_pool
from ..data.split import split_volumes
from ..errors import ConfigError, DataError, ScrollsegError
from ..losses import segmentation_loss
from ..models import build_model
from ..precision import resolve_precision
from .budget import MEASURE_STEPS, steps_that_fit
from .deadline import Clock, StopSignals, checkpoint_estimate_s
from .ema import WeightAverage
from .log import MetricsLog, TrainConsole, say
from .monitor import GpuMonitor
from .observer import RunObserver, notify
from .schedule import learning_rate
from .speed import resolve_speed, speed_up, to_memory_format
from .step import optimizer_step
from .summary import run_summary, summary_lines, write_summary
from .validation import BackgroundScorer, score_pairs, validation_masks


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    finished: bool  # reached the planned number of steps
    stop_reason: str
    best_score: float | None


@dataclass
class TrainState:
    """Everything besides the tensors that a checkpoint carries and a resume restores."""

    step: int = 0
    best_score: float | None = None
    history: list = field(default_factory=list)
    micro_batch: int = 1  # an out-of-memory fallback halves it and doubles accumulation
    accumulation: int = 1
    planned_steps: int = 0  # with train.steps=0: the steps that fit train.minutes, fixed after a warm-up

UNPLANNED = 10**9  # the step count before a time-budgeted run has measured itself


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


class LogWindow:
    """Loss, time and data-wait since the last log line."""

    def __init__(self) -> None:
        self.loss = self.grad_norm = self.wait = 0.0
        self.steps = 0
        self.start = time.perf_counter()

    def add(self, loss: float, grad_norm: float) -> None:
        self.loss += loss
        self.grad_norm += grad_norm
        self.steps += 1


class Trainer:
    """Train (or resume) the run in ``run_dir``, as one rank of a process group when the
    environment says so. ``strategy="dp"`` wraps the model in DataParallel instead."""

    def __init__(self, data_dir: Path | str, run_dir: Path | str, cfg: Config, progress: bool = True, strategy: str = "ddp",
                 observers: tuple[RunObserver, ...] = ()):
        self.cfg, self.data_dir, self.progress, self.observers = cfg, data_dir, progress, tuple(observers)
        self.info = dist.from_environment()
        self.device = dist.init(self.info)
        self.main = self.info.is_main
        self.run_dir = RunDir(run_dir)
        self.log = MetricsLog(self.run_dir.metrics_path, enabled=self.main)
        self.console = TrainConsole(self.run_dir.root / "train.log", cfg.train.steps or None, show=progress, enabled=self.main)
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self._write_config()
        self.train_volumes, self.val_volumes = self._load_volumes()
        seed_everything(cfg.train.seed)
        self.model = build_model(cfg.model).to(self.device)
        self.optimizer = make_optimizer(self.model, cfg, self.device)
        self.precision = resolve_precision(cfg.train.precision, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision.needs_scaler)
        self.state = TrainState(micro_batch=cfg.data.batch_size, accumulation=cfg.optim.accumulation)
        self.speed = resolve_speed(cfg.train, self.device)
        self.net = self._wrap(speed_up(self.model, self.speed), strategy)
        self.ema = WeightAverage(self.model, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
        self.scorer = BackgroundScorer() if self.main and background_scoring(cfg, self.device) else None
        self.clock = Clock(cfg.train.minutes, cfg.train.time_limit, cfg.train.checkpoint_minutes,
                           checkpoint_estimate_s(sum(p.numel() * p.element_size() for p in self.model.parameters())))
        self.stop_reason = ""
        self._validated_at = -1

    # ---- the loop
    def run(self) -> TrainResult:
        self.resume()
        self._announce()
        with StopSignals() as signals, GpuMonitor() as self.gpus:
            self.batches = self._open_batches()
            window, self.totals = LogWindow(), {"wait": 0.0, "time": 0.0}
            # timed from the second step of the session (the first warms caches up); planned before
            # the warm-up ends, so every step after it follows the planned schedule
            self._measure_from = (self.state.step + 1, None)
            plan_at = max(self.state.step + 2, min(self.state.step + 1 + MEASURE_STEPS, self.cfg.optim.warmup_steps))
            while self.state.step < self.total_steps and not self.stop_reason:
                lr = learning_rate(self.state.step, self.total_steps, self.cfg.optim)
                result = self.step(lr, window)
                if result is None:  # out of memory: retried with half the micro-batch
                    continue
                window.add(result.loss, result.grad_norm)
                if self.state.step == plan_at and self.total_steps == UNPLANNED:
                    self._plan_steps()
                if self._due(self.cfg.train.log_every):
                    window = self._log_progress(window, lr)
                if self.val_volumes and self._due(self.cfg.train.val_every) and self._validated_at != self.state.step:
                    self.validate()
                self._collect_scores(wait=False)
                self.stop_reason = self._stop_requested(signals)
                if self.state.step >= self.total_steps or self.stop_reason or self._due(self.cfg.train.checkpoint_steps) or self.clock.checkpoint_due():
                    self.checkpoint()
        return self._finish()

    @property
    def total_steps(self) -> int:
        return self.cfg.train.steps or self.state.planned_steps or UNPLANNED

    def _plan_steps(self) -> None:
        """Fix the step count so the LR schedule ends with the time budget, from the measured
        step time (since step 2), one real validation and one real checkpoint."""
        from_step, from_time = self._measure_from
        step_s = (time.perf_counter() - from_time) / (self.state.step - from_step)
        t0 = time.perf_counter()
        if self.val_volumes:
            self.validate()
        validation_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.checkpoint()
        checkpoint_s = time.perf_counter() - t0
        remaining = min(self.clock.budget_s, self.clock.deadline_s) - self.clock.elapsed()
        planned = steps_that_fit(remaining, step_s, validation_s if self.val_volumes else 0.0, self.cfg.train.val_every,
                                 checkpoint_s, self.cfg.train.checkpoint_steps, self.state.step)
        self.state.planned_steps = int(dist.all_gather_object(planned, self.info)[0])  # every rank plans rank 0's count
        self.log.write({"step": self.state.step, "event": "planned", "planned_steps": self.state.planned_steps, "step_s": step_s,
                        "validation_s": validation_s, "checkpoint_s": checkpoint_s})
        say(f"time budget: {self.state.planned_steps} steps fit ({step_s:.3f} s a step, {validation_s:.1f} s a validation)", self.main)
        self.checkpoint()  # the plan is part of the run from here on: a resume keeps it
        self.console.set_total(self.state.planned_steps)

    def _due(self, every: int) -> bool:
        return self.state.step % every == 0 or self.state.step == self.total_steps

    # ---- one step
    def step(self, lr: float, window: LogWindow):
        """One optimizer step; None when it ran out of memory and the micro-batch was halved."""
        if self.state.step == self._measure_from[0]:
            self._measure_from = (self.state.step, time.perf_counter())
        try:
            result = optimizer_step(self.net, self.optimizer, self.scaler, self.precision, self._loss, self._micro_batches(window),
                                    self.state.accumulation, lr, self.cfg.optim.grad_clip,
                                    self.net.no_sync if self.info.enabled else None)
        except torch.cuda.OutOfMemoryError:
            self._halve_micro_batch()
            return None
        self.state.step += 1
        if self.ema is not None:
            self.ema.update(self.model)
        return result

    def _loss(self, outputs, label: torch.Tensor) -> torch.Tensor:
        return segmentation_loss(outputs, label, self.cfg.loss)

    def _micro_batches(self, window: LogWindow):
        """The step's augmented (image, label) micro-batches, timing the wait for data."""
        step, info = self.state.step, self.info
        for micro in range(self.state.accumulation):
            t_wait = time.perf_counter()
            got_step, got_micro, batch = next(self.batches)
            window.wait += time.perf_counter() - t_wait
            assert (got_step, got_micro) == (step, micro), "loader out of order"
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            slot = micro * info.world + info.rank  # as the sampler numbers micro-batches
            gen = torch.Generator().manual_seed(int(np.random.SeedSequence([self.cfg.train.seed, step, slot]).generate_state(1)[0]))
            x, y = augment_batch(batch["image"], batch["label"], batch["mean"], batch["std"], self.cfg.augment, gen, self.cfg.data.patch_size)
            yield to_memory_format(x, self.speed), y

    def _open_batches(self):
        d = self.cfg.data
        pool = volume_pool(d.volumes_in_memory, d.patches_per_volume, self.global_batch) if self.data_mode == "none" else None
        sampler = PatchSampler(self.train_volumes, d.patch_size, self.state.micro_batch, d.foreground_fraction,
                               self.cfg.train.seed, self.info.rank, self.info.world, self.cfg.augment, pool)
        return iter(make_loader(sampler, self.state.step, self.total_steps, self.state.accumulation, self.cfg.data.num_workers,
                                self.device.type == "cuda"))

    def _halve_micro_batch(self) -> None:
        """Keep the effective batch after an out-of-memory error: half the micro-batch, twice the accumulation."""
        s = self.state
        self.optimizer.zero_grad(set_to_none=True)
        self.batches = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if self.info.enabled or s.micro_batch % 2:
            raise ScrollsegError(
                f"out of memory at step {s.step} with a micro-batch of {s.micro_batch}"
                f"{' on ' + str(self.info.world) + ' processes' if self.info.enabled else ''}; resume with a smaller "
                f"data.batch_size (and a larger optim.accumulation) or data.patch_size"
            ) from None
        s.micro_batch //= 2
        s.accumulation *= 2
        self.log.write({"step": s.step, "event": "out_of_memory", "micro_batch": s.micro_batch, "accumulation": s.accumulation})
        say(f"out of memory at step {s.step}: micro-batch {s.micro_batch} x {s.accumulation} accumulation, same effective batch", self.main)
        self.batches = self._open_batches()

    # ---- validation
    def validate(self) -> None:
        """Predict the held-out volumes; score them here or hand them to the scoring process."""
        step = self._validated_at = self.state.step
        if self.main:
            masks = validation_masks(self.ema.model if self.ema else self.model, self.val_volumes, self.cfg, self.device)
            labels = [np.asarray(v.label) for v in self.val_volumes]
            ids = [v.id for v in self.val_volumes]
            notify(self.observers, "validated", self.run_dir.root, step, self.val_volumes, masks)
            if self.scorer is None:
                if self._record_validation(step, score_pairs(labels, masks, ids)):
                    self.run_dir.save_best(self._checkpoint_dict({"0": own_rng_state()} if not self.info.enabled else {}))
            else:
                self.run_dir.save_candidate(self._checkpoint_dict({"0": own_rng_state()} if not self.info.enabled else {}), step)
                self.scorer.submit(step, labels, masks, ids)
        dist.barrier(self.info)

    def _record_validation(self, at_step: int, scores: dict) -> bool:
        """Log a validation; whether it is the best so far."""
        self.log.write({"step": at_step, **scores})
        say(f"step {at_step:>6} validation leaderboard {scores['val/leaderboard']:.4f}", self.main)
        notify(self.observers, "scored", self.run_dir.root, at_step, scores)
        if self.state.best_score is None or scores["val/leaderboard"] > self.state.best_score:
            self.state.best_score = scores["val/leaderboard"]
            return True
        return False

    def _collect_scores(self, wait: bool) -> None:
        if self.scorer is not None:
            for at_step, scores in self.scorer.results(wait or self.state.step >= self.total_steps):
                self.run_dir.settle_candidate(at_step, self._record_validation(at_step, scores))

    # ---- checkpoints
    def _checkpoint_dict(self, rng: dict) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.precision.needs_scaler else None,
            "ema": self.ema.state_dict() if self.ema else None,
            **asdict(self.state),
            "config": self.cfg.to_dict(),
            "config_digest": self.cfg.digest(),
            "version": __version__,
            "global_batch": self.global_batch,
            "rng": rng,
        }

    def checkpoint(self) -> None:
        started = time.monotonic()
        rngs = {str(rank): s for rank, s in enumerate(dist.all_gather_object(own_rng_state(), self.info))}  # every rank takes part
        if self.main:
            finished = self.state.step >= self.total_steps
            self.run_dir.save(self._checkpoint_dict(rngs), self.state.step, self.cfg.train.keep_last, final=finished or self.stop_reason == "minutes")
        self.clock.checkpointed(time.monotonic() - started)

    def resume(self) -> None:
        ckpt = self.run_dir.load_newest_valid()
        if self.main:
            self.run_dir.drop_candidates()
        if ckpt is not None:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            if ckpt.get("scaler") and self.precision.needs_scaler:
                self.scaler.load_state_dict(ckpt["scaler"])
            if self.ema is not None and ckpt.get("ema"):
                self.ema.load_state_dict(ckpt["ema"])
            # an out-of-memory fallback of an earlier session stays in force
            self.state = TrainState(**{k: ckpt[k] for k in asdict(self.state) if k in ckpt})
            self.state.history = list(self.state.history)
            restore_rng_state(ckpt.get("rng", {}).get(str(self.info.rank)))
            self.log.truncate_after(self.state.step)
            say(f"resuming {self.run_dir.root} at step {self.state.step}" + (f" (rank {self.info.rank})" if self.info.enabled else ""))
        dist.barrier(self.info)
        self.console.set_total(None if self.total_steps == UNPLANNED else self.total_steps)
        if self.state.step >= self.total_steps:
            self.stop_reason = "steps"

    # ---- set-up and end
    def _write_config(self) -> None:
        if not self.main:
            return
        try:
            self.run_dir.root.mkdir(parents=True, exist_ok=True)
            self.run_dir.remove_temporary_files()  # left by a kill during a write
            atomic_write_text(self.run_dir.config_path, dump_yaml(self.cfg))  # a concurrent reader never sees half of it
        except OSError as exc:
            raise ScrollsegError(f"{self.run_dir.root}: cannot write the run folder ({exc.strerror}); choose a writable RUN path") from exc

    def _load_volumes(self):
        refs = list_volumes(self.data_dir, "train")
        if not refs:
            raise DataError(f"{self.data_dir}: the train set is empty (no id of train.csv has both image and label); check the folder")
        train_refs, val_refs = split_volumes(refs, self.cfg.data, self.cfg.train.seed)
        if self.main:  # what `scrollseg tune` needs to find the held-out volumes again
            self.run_dir.record_path.write_text(json.dumps({"data": str(Path(self.data_dir).resolve()),
                                                            "train_ids": [r.id for r in train_refs], "val_ids": [r.id for r in val_refs]}, indent=1))
        d = self.cfg.data
        folder = cache_folder(d.cache_dir, self.run_dir.root)
        choice = prepare_cache(refs, d.cache_mode, folder, d.max_voxels) if self.main else None
        self.data_mode = dist.all_gather_object(choice and choice.mode, self.info)[0]  # rank 0 decides for all
        cache = VolumeCache(folder, d.max_voxels, self.data_mode, d.volumes_in_memory)
        say(f"data: {len(refs)} volumes, {choice and choice.describe()}", self.main)
        if self.info.local_rank == 0:  # one builder per node (the cache may be node-local); the others wait, then open it
            cache.build(refs, d.cache_workers, self.progress and self.main)
        dist.barrier(self.info)
        train, val = [cache.load(r) for r in train_refs], [cache.load(r) for r in val_refs][: self.cfg.train.val_volumes or None]
        if d.ignore_verso_background:
            context = self.cfg.inference.recto_context
            if self.info.local_rank == 0:
                ignore_verso_background(train, context, d.cache_workers or default_workers(), self.progress and self.main)
            dist.barrier(self.info)
            if self.info.local_rank != 0:
                ignore_verso_background(train, context, progress=False)  # the masks exist now: only attached
        return train, val

    def _wrap(self, fast: torch.nn.Module, strategy: str) -> torch.nn.Module:
        if self.info.enabled:
            return DistributedDataParallel(fast, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if strategy == "dp" and torch.cuda.device_count() > 1:
            return torch.nn.DataParallel(fast)
        return fast

    @property
    def global_batch(self) -> int:
        return self.state.micro_batch * self.info.world * self.state.accumulation

    def _announce(self) -> None:
        if self.device.type == "cpu" and sum(p.numel() for p in self.model.parameters()) > 20_000_000:
            warnings.warn("this model is sized for GPUs and will train very slowly on the CPU; use --preset tiny for a CPU run", stacklevel=2)
        s, w = self.state, self.info.world
        say(f"train: {len(self.train_volumes)} volumes, validate: {len(self.val_volumes)} | device {self.device} x{w}, {self.precision.name} | "
            f"global batch {self.global_batch} = {s.micro_batch} per device x {w} devices x {s.accumulation} accumulation", self.main)
        if s.step == 0:
            self.log.write({"step": 0, "event": "start", "global_batch": self.global_batch, "world": w, "precision": self.precision.name})
        self.net.train()

    def _log_progress(self, window: LogWindow, lr: float) -> LogWindow:
        elapsed = time.perf_counter() - window.start
        record = {
            "step": self.state.step,
            "loss": window.loss / window.steps,
            "grad_norm": window.grad_norm / window.steps,
            "lr": lr,
            "samples_per_s": window.steps * self.global_batch / elapsed,
            "data_wait": window.wait / elapsed,
            "elapsed_s": self.clock.elapsed(),
            **self.gpus.latest(),
        }
        self.totals["wait"] += window.wait
        self.totals["time"] += elapsed
        self.state.history.append({"step": self.state.step, "loss": record["loss"]})
        self.log.write(record)
        self.console.update(record, window.steps)
        return LogWindow()

    def _stop_requested(self, signals: StopSignals) -> str:
        stop = signals.received or ("time-limit" if self.clock.deadline_near() else None) or ("minutes" if self.clock.budget_spent() else None)
        stop = dist.broadcast_flag(bool(stop), self.info, self.device) and (stop or "peer")
        return stop or ""

    def _finish(self) -> TrainResult:
        self.batches = None
        self.console.stop_bar()
        step = self.state.step
        if step >= self.total_steps:
            self.stop_reason = "steps"
        if self.scorer is not None:
            if self.stop_reason == "steps":
                self._collect_scores(wait=True)
            self.scorer.close()  # a stopped run does not wait; its pending candidates are dropped
            self.run_dir.drop_candidates()
        if getattr(self, "totals", None) and self.totals["time"] > 0:
            summary = {"data_wait": self.totals["wait"] / self.totals["time"], **self.gpus.summary()}
            self.log.write({"step": step, "event": "summary", **summary})
        if self.stop_reason in ("time-limit", "peer") or self.stop_reason.startswith("SIG"):
            say(f"stopped at step {step} ({self.stop_reason}); checkpoint saved; training the same run again resumes from it", self.main)
        if self.main:
            end = run_summary(self.run_dir.root, self.data_dir, self.log.read(), step, self.total_steps, self.stop_reason,
                              self.clock.elapsed(), self.gpus.summary())
            write_summary(self.run_dir.root / "summary.json", end)
            say("\n".join(summary_lines(end)), self.progress)
            notify(self.observers, "finished", self.run_dir.root, end)
        self.console.close()
        dist.barrier(self.info)
        dist.shutdown(self.info)
        return TrainResult(self.run_dir.root, step, step >= self.total_steps, self.stop_reason, self.state.best_score)


def train(data_dir: Path | str, run_dir: Path | str, cfg: Config, progress: bool = True, strategy: str = "ddp",
          observers: tuple[RunObserver, ...] = ()) -> TrainResult:
    """Train (or resume) in this process; see :class:`Trainer`."""
    return Trainer(data_dir, run_dir, cfg, progress, strategy, observers).run()
