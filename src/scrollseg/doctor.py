"""``scrollseg doctor``: what this machine has, whether it can read the competition's
files, the settings to train with here, and whether a dataset folder is sound.

The dataset check reads only TIFF headers (the first page and the page count,
about a millisecond per file) and decodes a few sampled labels, so it finishes in
seconds on the full competition set. Problems make the exit status 1.
"""
from __future__ import annotations

import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import tifffile

from . import __version__
from .data.cache import VALID_LABELS
from .data.io import encode_volume, read_volume
from .data.layout import read_ids
from .errors import DataError

LABEL_SAMPLES = 3
PACKAGES = ("torch", "numpy", "numba", "tifffile", "imagecodecs", "connected-components-3d", "tensorboard", "matplotlib", "nvidia-ml-py")


@dataclass
class Findings:
    """Lines of one section, each marked ok, warn or FAIL."""

    lines: list[tuple[str, str]] = field(default_factory=list)

    def ok(self, text: str) -> None:
        self.lines.append(("ok", text))

    def warn(self, text: str) -> None:
        self.lines.append(("warn", text))

    def fail(self, text: str) -> None:
        self.lines.append(("FAIL", text))

    @property
    def failed(self) -> bool:
        return any(level == "FAIL" for level, _ in self.lines)


def versions() -> list[str]:
    import torch

    lines = [f"scrollseg {__version__}, Python {platform.python_version()} ({sys.executable})"]
    found = []
    for name in PACKAGES:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} missing")
    lines.append(", ".join(found))
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    lines.append(f"torch CUDA {torch.version.cuda or 'none (CPU build)'}, cuDNN {cudnn or 'none'}")
    return lines


@dataclass
class Hardware:
    gpus: list[tuple[str, float, tuple[int, int]]]  # name, memory GiB, compute capability
    cores: int
    ram_gib: float
    ram_available_gib: float | None


def hardware() -> Hardware:
    import torch

    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append((p.name, p.total_memory / 2**30, (p.major, p.minor)))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 if hasattr(os, "sysconf") else 0.0
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) / 2**20
    except OSError:
        pass
    return Hardware(gpus, cores, ram, available)


def check_lzw() -> tuple[bool, str]:
    """Encode and decode a small LZW volume, as the competition's files are compressed."""
    volume = np.random.default_rng(0).integers(0, 3, (24, 32, 40), dtype=np.uint8)
    t0 = time.perf_counter()
    try:
        ok = np.array_equal(read_volume(encode_volume(volume), name="<LZW test>"), volume)
    except Exception as exc:
        return False, f"LZW encode/decode failed ({exc.__class__.__name__}: {exc}); reinstall imagecodecs"
    if not ok:
        return False, "LZW round trip returned other voxels; reinstall imagecodecs"
    return True, f"LZW encode/decode works ({(time.perf_counter() - t0) * 1000:.0f} ms for a 24x32x40 volume)"


def recommend(hw: Hardware) -> dict:
    """Preset, micro-batch, loader workers and devices for this machine."""
    n = len(hw.gpus)
    if n == 0:
        return {"preset": "tiny", "batch_size": 4, "accumulation": 1, "num_workers": max(0, min(2, hw.cores - 1)), "devices": 1,
                "why": "no GPU: the tiny preset trains in minutes on the CPU; the GPU presets would take days"}
    memory = min(g[1] for g in hw.gpus)
    no_bf16 = min(g[2] for g in hw.gpus) < (8, 0)
    preset = "kaggle_2xT4" if no_bf16 else "default"
    batch, accumulation = (4, 1) if memory >= 40 else (2, 1) if memory >= 12 else (1, 2)
    workers = max(1, min(8, hw.cores // n - 1))
    why = (f"{n} GPU(s) with {memory:.0f} GiB" + (" without bf16 (fp16 with a GradScaler)" if no_bf16 else " with bf16")
           + f"; {hw.cores} CPU cores shared by {n} process(es)")
    return {"preset": preset, "batch_size": batch, "accumulation": accumulation, "num_workers": workers, "devices": n, "why": why}


def header_shape(path: Path) -> tuple[tuple[int, ...], np.dtype, str]:
    """(shape, dtype, compression) from the first page and the page count only."""
    with tifffile.TiffFile(path) as tif:
        first = tif.pages.first
        pages = len(tif.pages)
        shape = ((pages,) if pages > 1 else ()) + tuple(first.shape)
        return tuple(s for s in shape if s != 1) or shape, first.dtype, getattr(first.compression, "name", str(first.compression))


def _split_files(root: Path, split: str, labelled: bool, f: Findings) -> list[tuple[str, Path, Path | None]]:
    """(id, image, label) of the ids of ``split`` whose files exist; reports the CSV and missing files."""
    csv_path, images, labels = root / f"{split}.csv", root / f"{split}_images", root / f"{split}_labels"
    if csv_path.is_file():
        try:
            ids = [vid for vid, _ in read_ids(csv_path)]
        except DataError as exc:
            f.fail(str(exc))
            return []
        duplicates = len(ids) - len(set(ids))
        if duplicates:
            f.warn(f"{csv_path.name}: {duplicates} repeated id(s)")
    elif images.is_dir():
        ids = sorted(p.stem for p in images.glob("*.tif"))
        f.warn(f"no {split}.csv: using the {len(ids)} .tif files of {images.name}/")
    else:
        (f.fail if split == "train" else f.warn)(f"neither {split}.csv nor {split}_images/ found")
        return []
    found, missing = [], []
    for vid in dict.fromkeys(ids):
        image, label = images / f"{vid}.tif", labels / f"{vid}.tif"
        if not image.is_file() or (labelled and not label.is_file()):
            missing.append(vid)
        else:
            found.append((vid, image, label if labelled else None))
    listed = f"{split}.csv lists {len(ids)} id(s)" if csv_path.is_file() else f"{len(ids)} image(s)"
    (f.ok if found else f.fail)(f"{listed}; {len(found)} with {'image and label' if labelled else 'an image'}")
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        (f.warn if found else f.fail)(f"{len(missing)} id(s) without their files (skipped by training): {shown}")
    if images.is_dir():
        extra = sorted({p.stem for p in images.glob("*.tif")} - set(ids))
        if extra:
            f.warn(f"{len(extra)} file(s) in {images.name}/ not listed in {split}.csv (ignored): {', '.join(extra[:5])}")
    return found


def check_dataset(root: Path | str, samples: int = LABEL_SAMPLES) -> tuple[Findings, int]:
    """Findings about a competition-layout folder, and the bytes its decoded cache needs."""
    root, f = Path(root), Findings()
    if not root.is_dir():
        f.fail(f"{root}: not a folder")
        return f, 0
    cache_bytes = 0
    for split, labelled in (("train", True), ("test", False)):
        files = _split_files(root, split, labelled, f)
        shapes, bad, compressions = set(), [], set()
        for vid, image, label in files:
            try:
                shape, dtype, compression = header_shape(image)
                if label is not None:
                    label_shape, label_dtype, _ = header_shape(label)
                    if label_shape != shape:
                        bad.append(f"{vid}: label shape {label_shape} differs from the image {shape}")
                    dtype = dtype if label_dtype == np.uint8 else label_dtype
            except Exception as exc:  # any unreadable header is the finding
                bad.append(f"{vid}: unreadable TIFF header ({exc.__class__.__name__})")
                continue
            if len(shape) != 3 or dtype != np.uint8:
                bad.append(f"{vid}: {dtype} {shape}, expected a 3D uint8 volume")
                continue
            shapes.add(shape)
            compressions.add(compression)
            cache_bytes += int(np.prod(shape)) * (2 if label is not None else 1)
        if bad:
            f.fail(f"{split}: {len(bad)} volume(s) with bad headers: " + "; ".join(bad[:3]) + (" ..." if len(bad) > 3 else ""))
        if shapes:
            sizes = sorted(shapes, key=lambda s: int(np.prod(s)))
            f.ok(f"{split} shapes: {len(shapes)} distinct, from {sizes[0]} to {sizes[-1]}; compression {', '.join(sorted(compressions))}")
        if labelled and files:
            _sample_labels(files, samples, f)
    return f, cache_bytes


def _sample_labels(files: list[tuple[str, Path, Path | None]], samples: int, f: Findings) -> None:
    picks = sorted({round(i * (len(files) - 1) / max(samples - 1, 1)) for i in range(min(samples, len(files)))})
    shares = []
    for i in picks:
        vid, _, label_path = files[i]
        try:
            label = read_volume(label_path)
        except DataError as exc:
            f.fail(str(exc))
            continue
        values = np.unique(label)
        outside = np.setdiff1d(values, VALID_LABELS)
        if outside.size:
            f.fail(f"label {vid}: values {outside[:5].tolist()} outside {{0, 1, 2}} (0 background, 1 surface, 2 unlabelled)")
            continue
        shares.append((vid, float((label == 1).mean()), float((label == 2).mean())))
    if shares:
        f.ok("labels sampled: " + "; ".join(f"{vid} surface {s1:.1%}, unlabelled {s2:.1%}" for vid, s1, s2 in shares))
        if all(s1 == 0 for _, s1, _ in shares):
            f.warn("no sampled label holds surface voxels (1); check that these are the labels")


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.1f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.1f} MiB"


def report(data: Path | str | None = None, run: Path | str = ".", out=None) -> int:
    """Print the checks; 1 when a check failed, else 0."""
    out = out or sys.stdout

    def section(title: str, lines: list[tuple[str, str]]) -> None:
        out.write(f"{title}\n" + "".join(f"  {level:<4}  {text}\n" for level, text in lines))

    section("versions", [("", line) for line in versions()])
    hw = hardware()
    machine = Findings()
    if hw.gpus:
        for i, (name, memory, cc) in enumerate(hw.gpus):
            machine.ok(f"GPU {i}: {name}, {memory:.1f} GiB, compute capability {cc[0]}.{cc[1]}")
    else:
        machine.warn("no CUDA GPU visible: training runs on the CPU")
    ram = f"{hw.ram_gib:.1f} GiB RAM" + (f" ({hw.ram_available_gib:.1f} GiB available)" if hw.ram_available_gib is not None else "")
    machine.ok(f"{hw.cores} usable CPU cores, {ram}")
    cache_at = Path(run).resolve()
    probe = next((p for p in (cache_at, *cache_at.parents) if p.exists()), Path("/"))
    free = shutil.disk_usage(probe).free
    machine.ok(f"{_size(free)} free disk at {probe} (where RUN/cache would go; --run names another place)")
    ok, text = check_lzw()
    (machine.ok if ok else machine.fail)(text)
    section("machine", machine.lines)

    rec = recommend(hw)
    command = f"scrollseg train DATA RUN --preset {rec['preset']} data.batch_size={rec['batch_size']} data.num_workers={rec['num_workers']}"
    command += (f" optim.accumulation={rec['accumulation']}" if rec["accumulation"] > 1 else "") + (f" --devices {rec['devices']}" if rec["devices"] > 1 else "")
    section("recommended here", [("", rec["why"]), ("", command)])

    failed = machine.failed
    if data is not None:
        findings, cache_bytes = check_dataset(data)
        need = f"its decoded cache needs {_size(cache_bytes)}; {_size(free)} free at {probe}"
        if cache_bytes > free:
            findings.warn(need + ": too little; data.cache_mode=auto then keeps zstd chunks or no cache "
                          "(`scrollseg plan` sizes each), or set data.cache_dir to a larger disk")
        elif cache_bytes:
            findings.ok(need)
        section(f"dataset {data}", findings.lines)
        failed |= findings.failed
        out.write("dataset: " + ("problems found (FAIL above)\n" if findings.failed else "looks sound\n"))
    return 1 if failed else 0
