"""Typed configuration: dataclass defaults <- YAML preset <- dotted command-line overrides.

Presets live in ``scrollseg/configs/*.yaml``. Every key is checked against the
dataclasses, so a misspelt override fails with the list of valid keys instead of
being silently ignored.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from .errors import ConfigError


@dataclass
class DataConfig:
    patch_size: list[int] = field(default_factory=lambda: [128, 128, 128])  # training patch (D, H, W); divisible by 2^(stages - 1)
    batch_size: int = 2  # per device and per micro-step
    foreground_fraction: float = 0.33  # share of patches centred on a surface voxel
    num_workers: int = 2  # loader processes that cut patches; 0: in the training process
    val_fraction: float = 0.2  # share of volumes (or scrolls) held out for validation
    split_by: str = "auto"  # "auto": by scroll when the train set has 4 or more scrolls; "scroll": when 2 or more; "volume"
    folds: int = 0  # > 1: N-fold cross-validation, this run holding out fold ``fold``
    fold: int = 0  # the fold held out when ``folds`` > 1 (0 .. folds - 1)
    val_ids: list[str] = field(default_factory=list)  # overrides the random split when set
    cache_mode: str = "auto"  # "decoded", "compressed", "none" or "auto": the first that fits the disk (scrollseg/data/cache.py)
    cache_dir: str = ""  # empty: RUN/cache, or /tmp/scrollseg-cache when RUN is in Kaggle's /kaggle/working
    cache_workers: int = 0  # processes that build the cache; 0: one per core, at most 8
    volumes_in_memory: int = 4  # cache_mode none: decoded volumes per loader worker, and the pool each window of steps draws from
    patches_per_volume: int = 32  # cache_mode none: patches each pooled volume serves per window
    max_voxels: int = 1024**3  # TIFFs announcing more are refused before decoding
    ignore_verso_background: bool = False  # training ignores label 0 on the verso side of each sheet, which the recto step (inference.recto_context) drops anyway (engine.verso)


@dataclass
class AugmentConfig:
    """Training augmentation; the defaults are nnU-Net v2's (``get_training_transforms``)."""

    # spatial: one resampling from the centre of an enlarged crop (see data.augment.spatial_crop_size)
    rotation_prob: float = 0.2  # share of samples rotated about all three axes
    rotation_deg: float = 30.0  # each of the three angles in U(-r, r)
    scale_prob: float = 0.2  # share of samples scaled (isotropically)
    scale_range: list[float] = field(default_factory=lambda: [0.7, 1.4])  # field-of-view factor; > 1 shows more, smaller
    crop_cap: float = 2.0  # the enlarged crop is at most this multiple of the patch per axis
    mirror_prob: float = 0.5  # per axis
    rot90: bool = False  # also turn by a random multiple of 90 degrees in the (H, W) plane when it is square
    # intensity, applied in this order
    noise_prob: float = 0.1  # share of samples with Gaussian noise added
    noise_std: list[float] = field(default_factory=lambda: [0.0, 0.1])  # nnU-Net's "noise_variance", used as the std
    blur_prob: float = 0.1  # nnU-Net: 0.2 x p_per_channel 0.5 for one channel
    blur_sigma: list[float] = field(default_factory=lambda: [0.5, 1.0])  # drawn per axis, in voxels
    brightness_prob: float = 0.15  # share of samples multiplied by a brightness factor
    brightness_range: list[float] = field(default_factory=lambda: [0.75, 1.25])  # multiplier
    contrast_prob: float = 0.15  # share of samples with contrast scaled about the mean
    contrast_range: list[float] = field(default_factory=lambda: [0.75, 1.25])  # about the mean, within the old range
    lowres_prob: float = 0.125  # nnU-Net: 0.25 x p_per_channel 0.5 for one channel
    lowres_zoom: list[float] = field(default_factory=lambda: [0.5, 1.0])  # nearest down to this size, trilinear back
    inverted_gamma_prob: float = 0.1  # gamma of the negated image
    gamma_prob: float = 0.3  # share of samples with a gamma curve on the [0, 1] range
    gamma_range: list[float] = field(default_factory=lambda: [0.7, 1.5])  # mean and std are kept


@dataclass
class ModelConfig:
    features: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 320, 320])  # channels per stage; its length = stages
    encoder_blocks: list[int] = field(default_factory=lambda: [1, 3, 4, 6, 6, 6])  # residual blocks per encoder stage
    decoder_blocks: int = 1  # convolution blocks per decoder stage (at least 1)
    deep_supervision: bool = True  # loss on every decoder resolution (the coarsest weighted 0)


@dataclass
class LossConfig:
    bce_weight: float = 1.0  # binary cross-entropy term
    dice_weight: float = 1.0  # soft Dice term
    skeleton_recall_weight: float = 0.0  # 1 - recall of the label's tubed skeleton, full resolution only
    cldice_weight: float = 0.0  # 1 - clDice, full resolution only
    cldice_iterations: int = 3  # soft-skeleton erosion levels of clDice


@dataclass
class OptimConfig:
    name: str = "sgd"  # "sgd" (Nesterov) or "adamw"
    lr: float = 1e-2  # peak learning rate, reached after the warmup
    weight_decay: float = 3e-5  # L2 penalty (decoupled for adamw)
    momentum: float = 0.99  # SGD momentum
    schedule: str = "cosine"  # "cosine", "poly" or "constant"
    warmup_steps: int = 100  # steps of linear warmup up to lr
    min_lr_ratio: float = 0.01  # the schedule ends at lr x this
    grad_clip: float = 12.0  # clip the gradient norm to this; 0: no clipping
    accumulation: int = 1  # micro-batches per optimizer step (global batch = batch_size x devices x this)


@dataclass
class TrainConfig:
    steps: int = 100_000  # 0: as many as fit in ``minutes``, fixed after a measured warm-up
    minutes: float = 0.0  # 0: no wall-clock bound
    seed: int = 0  # seeds the split, the patches, the augmentation and the weights
    precision: str = "auto"  # "auto", "bf16", "fp16" or "fp32"
    val_every: int = 1000  # validate every this many steps (and at the last)
    val_volumes: int = 0  # at most this many held-out volumes per validation; 0: all
    ema_decay: float = 0.0  # > 0: keep an exponential moving average of the weights, validated and used for prediction
    val_scoring: str = "auto"  # "background" (a CPU process), "inline", or "auto": background on accelerators
    log_every: int = 20  # a metrics.jsonl record and a progress update every this many steps
    checkpoint_steps: int = 1000  # save a checkpoint every this many steps
    checkpoint_minutes: float = 30.0  # and every this many minutes; 0: not by time
    keep_last: int = 2  # step-N.pt files kept besides last, best and final
    time_limit: str = ""  # e.g. "11h45m": checkpoint and stop before this much wall time
    deterministic: bool = False  # deterministic kernels (slower; bitwise-repeatable runs)
    threads: int = 0  # CPU threads for torch; 0: torch's default
    compile: str = "auto"  # torch.compile: "auto" (on CUDA), "on" or "off"
    channels_last: str = "auto"  # channels_last_3d: "auto" (on CUDA), "on" or "off"


@dataclass
class InferenceConfig:
    tile: list[int] = field(default_factory=list)  # empty: the training patch size
    overlap: float = 0.5  # share of a tile shared with its neighbour in the sliding window
    tile_batch: int = 4  # tiles predicted at once
    tta: bool = False  # average over the flips (up to 8x slower)
    tta_flips: int = 8  # flips averaged with tta: 8 (all), 4 (identity and single axes) or 1
    threshold: float = 0.5  # probability above which a voxel is surface
    hysteresis_low: float = 0.0  # > 0: keep components above it that reach ``threshold``
    min_component: int = 64  # remove_dust: 6-connected components smaller than this are removed
    postprocess: list[str] = field(default_factory=lambda: ["remove_dust"])  # steps after thresholding, in order: remove_dust, plug_holes, close_sheets, fill_cavities
    hole_max: int = 16  # plug_holes: largest hole filled, in voxels of one slice
    close_radius: list[int] = field(default_factory=lambda: [1, 1, 1])  # close_sheets: box radius (z, y, x)
    recto_context: float = 0.0  # > 0: keep only the recto face of each sheet, the fibre cue pooled over this many voxels (inference.recto; the scroll axis along z)


# the post-processing steps inference.postprocess may list (scrollseg.inference.postprocess.STEPS)
POSTPROCESS_STEPS = ("remove_dust", "plug_holes", "close_sheets", "fill_cavities")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def tile_size(self) -> list[int]:
        return list(self.inference.tile or self.data.patch_size)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = get_origin(hint)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r} expects a list, got {value!r}")
        (item,) = get_args(hint)
        return [_coerce(v, item, key) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key {key!r} expects true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"config key {key!r} expects an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {key!r} expects a number, got {value!r}")
        return float(value)
    if hint is str:
        if isinstance(value, bool):  # YAML 1.1 reads on/off as booleans
            return "on" if value else "off"
        return str(value)
    raise ConfigError(f"config key {key!r} has an unsupported type")


def _apply(obj: Any, values: dict, prefix: str = "") -> None:
    hints = get_type_hints(type(obj))
    for key, value in values.items():
        name = f"{prefix}{key}"
        if key not in hints:
            valid = ", ".join(f"{prefix}{k}" for k in hints)
            raise ConfigError(f"unknown config key {name!r}; valid keys here: {valid}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {name!r} is a section; set its fields, e.g. {name}.<field>=...")
            _apply(current, value, f"{name}.")
        else:
            setattr(obj, key, _coerce(value, hints[key], name))


def from_dict(values: dict) -> Config:
    cfg = Config()
    _apply(cfg, values or {})
    validate(cfg)
    return cfg


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("scrollseg").joinpath("configs").iterdir() if p.name.endswith(".yaml"))


def read_yaml(path: Path | str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            values = yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror}); check the path") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc.__class__.__name__}); fix the file") from exc
    if values is not None and not isinstance(values, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections")
    return values or {}


def load_preset(name: str) -> dict:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return read_yaml(path)
    if name not in preset_names():
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(preset_names())} or give a .yaml file")
    return read_yaml(resources.files("scrollseg").joinpath("configs").joinpath(f"{name}.yaml"))


def parse_overrides(overrides: list[str]) -> dict:
    """``["optim.lr=1e-3", "data.patch_size=[64,64,64]"]`` -> nested dict (values read as YAML)."""
    nested: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def build_config(preset: str = "default", overrides: list[str] | None = None) -> Config:
    return from_dict(merge(load_preset(preset), parse_overrides(overrides or [])))


def validate(cfg: Config) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    need(len(cfg.data.patch_size) == 3 and min(cfg.data.patch_size) > 0, "data.patch_size needs three positive sizes")
    need(len(cfg.model.features) >= 1 and min(cfg.model.features) >= 1, "model.features needs at least one positive width")
    stride = 2 ** (len(cfg.model.features) - 1)
    smallest = 2 * stride  # the deepest stage needs more than one voxel per axis (instance norm, 3^3 convolutions)

    def fits_network(key: str, sizes: list[int]) -> None:
        need(
            len(sizes) == 3 and all(p % stride == 0 and p >= smallest for p in sizes),
            f"{key} {sizes}: the {len(cfg.model.features)}-stage network needs three sizes divisible by {stride} and at least "
            f"{smallest}; the smallest valid is [{smallest},{smallest},{smallest}]",
        )

    fits_network("data.patch_size", cfg.data.patch_size)
    need(len(cfg.model.encoder_blocks) == len(cfg.model.features), "model.encoder_blocks needs one entry per stage")
    need(cfg.data.batch_size >= 1, "data.batch_size must be at least 1")
    need(0.0 <= cfg.data.foreground_fraction <= 1.0, "data.foreground_fraction must lie in [0, 1]")
    need(cfg.data.split_by in ("auto", "volume", "scroll"), "data.split_by must be auto, scroll or volume")
    need(cfg.data.folds == 0 or (cfg.data.folds >= 2 and 0 <= cfg.data.fold < cfg.data.folds),
         f"data.fold {cfg.data.fold} of data.folds {cfg.data.folds}: give folds >= 2 and 0 <= fold < folds (e.g. --fold 0/5)")
    need(cfg.train.minutes >= 0, f"train.minutes (--minutes) must be positive, or 0 for no bound; got {cfg.train.minutes:g}")
    need(cfg.train.steps >= 0, "train.steps must be positive (or 0 with train.minutes: as many as fit)")
    need(cfg.train.steps > 0 or cfg.train.minutes > 0, "train.steps=0 needs a time budget: give --minutes M (or train.minutes)")
    need(0.0 <= cfg.train.ema_decay < 1.0, "train.ema_decay must lie in [0, 1), e.g. 0.999")
    need(cfg.data.cache_mode in ("auto", "decoded", "compressed", "none"), "data.cache_mode must be auto, decoded, compressed or none")
    need(cfg.data.cache_workers >= 0, "data.cache_workers must be at least 0")
    need(cfg.data.volumes_in_memory >= 1 and cfg.data.patches_per_volume >= 1, "data.volumes_in_memory and data.patches_per_volume must be at least 1")
    need(cfg.optim.name in ("sgd", "adamw"), "optim.name must be 'sgd' or 'adamw'")
    need(cfg.optim.schedule in ("cosine", "poly", "constant"), "optim.schedule must be cosine, poly or constant")
    need(cfg.optim.accumulation >= 1, "optim.accumulation must be at least 1")
    need(cfg.train.precision in ("auto", "bf16", "fp16", "fp32"), "train.precision must be auto, bf16, fp16 or fp32")
    need(0.0 <= cfg.inference.overlap < 1.0, "inference.overlap must lie in [0, 1)")
    need(1 <= cfg.inference.tta_flips <= 8, "inference.tta_flips must lie in 1..8")
    aug = cfg.augment
    for name in ("rotation", "scale", "mirror", "noise", "blur", "brightness", "contrast", "lowres", "inverted_gamma", "gamma"):
        need(0.0 <= getattr(aug, f"{name}_prob") <= 1.0, f"augment.{name}_prob must lie in [0, 1]")
    for name, low_may_be_zero in (("scale_range", False), ("noise_std", True), ("blur_sigma", False), ("brightness_range", True),
                                  ("contrast_range", True), ("lowres_zoom", False), ("gamma_range", False)):
        bounds = getattr(aug, name)
        ok = len(bounds) == 2 and 0.0 <= bounds[0] <= bounds[1] and (low_may_be_zero or bounds[0] > 0)
        need(ok, f"augment.{name} needs [low, high] with {'0 <=' if low_may_be_zero else '0 <'} low <= high, got {bounds}")
    need(aug.lowres_zoom[1] <= 1.0, f"augment.lowres_zoom must lie in (0, 1], got {aug.lowres_zoom}")
    need(0.0 <= aug.rotation_deg <= 180.0, f"augment.rotation_deg must lie in [0, 180], got {aug.rotation_deg}")
    need(aug.crop_cap >= 1.0, f"augment.crop_cap must be at least 1 (the patch itself), got {aug.crop_cap}")
    need(cfg.train.compile in ("auto", "on", "off"), "train.compile must be auto, on or off")
    need(cfg.train.val_scoring in ("auto", "background", "inline"), "train.val_scoring must be auto, background or inline")
    need(cfg.train.channels_last in ("auto", "on", "off"), "train.channels_last must be auto, on or off")
    for key in ("bce_weight", "dice_weight", "skeleton_recall_weight", "cldice_weight"):
        need(getattr(cfg.loss, key) >= 0, f"loss.{key} must be at least 0")
    need(cfg.loss.cldice_iterations >= 1, "loss.cldice_iterations must be at least 1")
    inf = cfg.inference
    need(0.0 < inf.threshold < 1.0, f"inference.threshold (--threshold) must lie in (0, 1), got {inf.threshold:g}")
    need(
        inf.hysteresis_low == 0.0 or 0.0 < inf.hysteresis_low < inf.threshold,
        f"inference.hysteresis_low must be 0 (off) or lie in (0, threshold={inf.threshold}), got {inf.hysteresis_low}",
    )
    need(inf.min_component >= 0, "inference.min_component must be >= 0")
    need(inf.recto_context >= 0, f"inference.recto_context must be 0 (off) or a pooling width in voxels > 0, got {inf.recto_context}")
    need(inf.hole_max >= 0, "inference.hole_max must be >= 0")
    need(
        len(inf.close_radius) == 3 and min(inf.close_radius) >= 0,
        f"inference.close_radius needs three radii >= 0 (z, y, x), got {inf.close_radius}",
    )
    unknown = [name for name in inf.postprocess if name not in POSTPROCESS_STEPS]
    need(not unknown, f"inference.postprocess has unknown step(s) {unknown}; known: {', '.join(POSTPROCESS_STEPS)}")
    fits_network("inference.tile", cfg.tile_size())
    # intervals a flag or override sets: refused before a run writes anything
    need(cfg.train.checkpoint_minutes >= 0, f"train.checkpoint_minutes must be positive, or 0 for none; got {cfg.train.checkpoint_minutes:g}")
    for key in ("checkpoint_steps", "val_every", "log_every"):
        need(getattr(cfg.train, key) >= 1, f"train.{key} must be at least 1, got {getattr(cfg.train, key)}")
    need(cfg.data.num_workers >= 0, "data.num_workers must be at least 0")
    need(inf.tile_batch >= 1, "inference.tile_batch must be at least 1")


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def diff(a: Config, b: Config) -> list[str]:
    """Dotted keys whose values differ, as ``key: old -> new``."""
    out: list[str] = []

    def walk(x: dict, y: dict, prefix: str) -> None:
        for key in x:
            if isinstance(x[key], dict):
                walk(x[key], y[key], f"{prefix}{key}.")
            elif x[key] != y[key]:
                out.append(f"{prefix}{key}: {x[key]!r} -> {y[key]!r}")

    walk(a.to_dict(), b.to_dict(), "")
    return out


# settings that may differ between sessions of one run: budgets, bookkeeping, inference
RESUMABLE_CHANGES = ("train.steps", "train.minutes", "train.time_limit", "train.checkpoint", "train.val_every", "train.val_scoring",
                     "train.log_every", "train.keep_last", "train.threads", "data.num_workers", "data.cache", "inference.")


def check_resumable(saved: Config, wanted: Config, allow_change=(), where: str | Path = "run") -> None:
    """Refuse to continue a run with a config that differs beyond ``RESUMABLE_CHANGES`` and ``allow_change``."""
    changes = [c for c in diff(saved, wanted) if not c.startswith(RESUMABLE_CHANGES + tuple(allow_change))]
    if changes:
        raise ConfigError(
            f"{where}: the run was started with another config ({'; '.join(changes)}); "
            f"use a new run folder, drop these settings, or name them with --allow-change KEY"
        )
