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
    patch_size: list[int] = field(default_factory=lambda: [128, 128, 128])
    batch_size: int = 2  # per device and per micro-step
    foreground_fraction: float = 0.33  # share of patches centred on a surface voxel
    num_workers: int = 2
    val_fraction: float = 0.2
    split_by: str = "volume"  # "volume" or "scroll"
    val_ids: list[str] = field(default_factory=list)  # overrides the random split when set
    cache_mode: str = "auto"  # "decoded", "compressed", "none" or "auto": the first that fits the disk (scrollseg/data/cache.py)
    cache_dir: str = ""  # empty: RUN/cache, or /tmp/scrollseg-cache when RUN is in Kaggle's /kaggle/working
    cache_workers: int = 0  # processes that build the cache; 0: one per core, at most 8
    volumes_in_memory: int = 4  # cache_mode none: decoded volumes per loader worker, and the pool each window of steps draws from
    patches_per_volume: int = 32  # cache_mode none: patches each pooled volume serves per window
    max_voxels: int = 1024**3  # TIFFs announcing more are refused before decoding


@dataclass
class AugmentConfig:
    flip: bool = True
    rot90: bool = True
    intensity_scale: float = 0.15  # multiply by U(1 - s, 1 + s)
    intensity_shift: float = 0.1  # add U(-s, s) standard deviations
    gamma: float = 0.3  # gamma in U(1 - g, 1 + g), applied on the [0, 1] range
    noise_std: float = 0.05
    spatial_prob: float = 0.0  # share of samples also rotated in-plane and scaled (resampled on the device)
    rotation_deg: float = 15.0  # rotation in U(-r, r) degrees about the depth axis
    scale_range: float = 0.15  # isotropic zoom in U(1 - s, 1 + s)


@dataclass
class ModelConfig:
    features: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 320, 320])
    encoder_blocks: list[int] = field(default_factory=lambda: [1, 3, 4, 6, 6, 6])
    decoder_blocks: int = 1
    deep_supervision: bool = True


@dataclass
class LossConfig:
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    skeleton_recall_weight: float = 0.0  # 1 - recall of the label's tubed skeleton, full resolution only
    cldice_weight: float = 0.0  # 1 - clDice, full resolution only
    cldice_iterations: int = 3  # soft-skeleton erosion levels of clDice


@dataclass
class OptimConfig:
    name: str = "sgd"  # "sgd" (Nesterov) or "adamw"
    lr: float = 1e-2
    weight_decay: float = 3e-5
    momentum: float = 0.99
    schedule: str = "cosine"  # "cosine", "poly" or "constant"
    warmup_steps: int = 100
    min_lr_ratio: float = 0.01
    grad_clip: float = 12.0
    accumulation: int = 1


@dataclass
class TrainConfig:
    steps: int = 100_000
    minutes: float = 0.0  # 0: no wall-clock bound
    seed: int = 0
    precision: str = "auto"  # "auto", "bf16", "fp16" or "fp32"
    val_every: int = 1000
    val_volumes: int = 4  # at most this many held-out volumes per validation; 0: all
    val_scoring: str = "auto"  # "background" (a CPU process), "inline", or "auto": background on accelerators
    log_every: int = 20
    checkpoint_steps: int = 1000
    checkpoint_minutes: float = 30.0
    keep_last: int = 2
    time_limit: str = ""  # e.g. "11h45m": checkpoint and stop before this much wall time
    deterministic: bool = False
    threads: int = 0  # CPU threads for torch; 0: torch's default
    compile: str = "auto"  # torch.compile: "auto" (on CUDA), "on" or "off"
    channels_last: str = "auto"  # channels_last_3d: "auto" (on CUDA), "on" or "off"


@dataclass
class InferenceConfig:
    tile: list[int] = field(default_factory=list)  # empty: the training patch size
    overlap: float = 0.5
    tile_batch: int = 4
    tta: bool = False
    tta_flips: int = 8  # flips averaged with tta: 8 (all), 4 (identity and single axes) or 1
    threshold: float = 0.5
    hysteresis_low: float = 0.0  # > 0: keep components above it that reach ``threshold``
    min_component: int = 64  # 26-connected components smaller than this are removed


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
    stride = 2 ** (len(cfg.model.features) - 1)
    need(
        all(p % stride == 0 for p in cfg.data.patch_size),
        f"data.patch_size {cfg.data.patch_size} must be divisible by {stride} for {len(cfg.model.features)} stages",
    )
    need(len(cfg.model.encoder_blocks) == len(cfg.model.features), "model.encoder_blocks needs one entry per stage")
    need(cfg.data.batch_size >= 1, "data.batch_size must be at least 1")
    need(0.0 <= cfg.data.foreground_fraction <= 1.0, "data.foreground_fraction must lie in [0, 1]")
    need(cfg.data.split_by in ("volume", "scroll"), "data.split_by must be 'volume' or 'scroll'")
    need(cfg.data.cache_mode in ("auto", "decoded", "compressed", "none"), "data.cache_mode must be auto, decoded, compressed or none")
    need(cfg.data.cache_workers >= 0, "data.cache_workers must be at least 0")
    need(cfg.data.volumes_in_memory >= 1 and cfg.data.patches_per_volume >= 1, "data.volumes_in_memory and data.patches_per_volume must be at least 1")
    need(cfg.optim.name in ("sgd", "adamw"), "optim.name must be 'sgd' or 'adamw'")
    need(cfg.optim.schedule in ("cosine", "poly", "constant"), "optim.schedule must be cosine, poly or constant")
    need(cfg.optim.accumulation >= 1, "optim.accumulation must be at least 1")
    need(cfg.train.precision in ("auto", "bf16", "fp16", "fp32"), "train.precision must be auto, bf16, fp16 or fp32")
    need(0.0 <= cfg.inference.overlap < 1.0, "inference.overlap must lie in [0, 1)")
    need(1 <= cfg.inference.tta_flips <= 8, "inference.tta_flips must lie in 1..8")
    need(0.0 <= cfg.augment.spatial_prob <= 1.0, "augment.spatial_prob must lie in [0, 1]")
    need(cfg.train.compile in ("auto", "on", "off"), "train.compile must be auto, on or off")
    need(cfg.train.val_scoring in ("auto", "background", "inline"), "train.val_scoring must be auto, background or inline")
    need(cfg.train.channels_last in ("auto", "on", "off"), "train.channels_last must be auto, on or off")
    for key in ("bce_weight", "dice_weight", "skeleton_recall_weight", "cldice_weight"):
        need(getattr(cfg.loss, key) >= 0, f"loss.{key} must be at least 0")
    need(cfg.loss.cldice_iterations >= 1, "loss.cldice_iterations must be at least 1")
    tile = cfg.tile_size()
    need(len(tile) == 3 and all(t % stride == 0 for t in tile), f"inference.tile must be three sizes divisible by {stride}")


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
