"""Decode each training volume once into a cache entry, in the form the disk can hold.

``data.cache_mode`` picks the form:

- ``decoded``: image and label as uncompressed .npy files, memory-mapped (a patch is a
  slice; 2 bytes per voxel on disk);
- ``compressed``: zstd chunks read patch by patch (``chunkstore``; about half the
  decoded size, since labels shrink ~30x and CT images ~10%);
- ``none``: only the index below; DataLoader workers decode the LZW TIFFs themselves
  (``volumes.SourceVolume`` and the sampler's volume pool);
- ``auto``: the first of these whose bytes still to write fit in the free space of the
  cache folder with ``FREE_SPACE_RESERVE`` to spare. The decoded size comes from the
  TIFF headers; the compressed size from compressing one volume and scaling by the
  TIFFs' sizes.

Every entry holds ``meta.json`` (shape, intensity statistics, file sizes) and the
surface-voxel counts per block that the sampler draws foreground centres from.
Entries are keyed by the source files' size and mtime, so an edited TIFF is decoded
again. Files are written under temporary names and renamed, ``meta.json`` last, and an
entry counts only when every file has the size its ``meta.json`` records: a killed
build keeps its finished entries and the next run builds the rest. The cache can always
be rebuilt, so nothing is fsynced. Builds decode in parallel processes.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..progress import Progress
from .chunkstore import write_chunked
from .io import read_header_shape, read_volume
from .layout import VolumeRef
from .volumes import CachedVolume, foreground_counts

CACHE_VERSION = 2
MODES = ("decoded", "compressed", "none")
VALID_LABELS = (0, 1, 2)
FREE_SPACE_RESERVE = 4 * 2**30  # left free beside the cache: checkpoints often share the disk
INDEX_BYTES = 4096  # meta.json and the block counts of one entry, about
PARALLEL_FROM_BYTES = 64 * 2**20  # less source data decodes faster than worker processes start


def intensity_stats(image: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of a volume on the [0, 1] scale, from a strided sample."""
    step = max(1, round((image.size / 2_000_000) ** (1 / 3)))
    sample = np.asarray(image[::step, ::step, ::step], dtype=np.float32) / 255.0
    return float(sample.mean()), float(max(sample.std(), 1e-3))


def check_label(label: np.ndarray, image_shape: tuple, path: Path) -> None:
    if label.shape != tuple(image_shape):
        raise DataError(f"{path}: label shape {label.shape} differs from its image {tuple(image_shape)}; re-export the pair")
    bad = np.setdiff1d(np.unique(label), VALID_LABELS)
    if bad.size:
        raise DataError(f"{path}: label values {bad[:5].tolist()} outside {{0, 1, 2}}; labels must be 0 background, 1 surface, 2 unlabelled")


def default_cache_dir(run_root: Path | str) -> Path:
    """RUN/cache; on Kaggle, when RUN is in the saved output (/kaggle/working), a folder
    under /tmp instead: the output keeps 20 GB and the cache need not be saved."""
    run_root = Path(run_root).resolve()
    if Path("/kaggle/working") in (run_root, *run_root.parents):
        return Path(tempfile.gettempdir()) / "scrollseg-cache"
    return run_root / "cache"


def _key(ref: VolumeRef, mode: str) -> str:
    parts = [ref.id, str(CACHE_VERSION), mode]
    for path in (ref.image, ref.label):
        if path is not None:
            st = path.stat()
            parts += [str(path.resolve()), str(st.st_size), str(st.st_mtime_ns)]
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]


def _save_npy(path: Path, arr: np.ndarray) -> int:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        np.save(fh, arr)
    os.replace(tmp, path)
    return path.stat().st_size


def build_entry(ref: VolumeRef, entry: Path, mode: str, max_voxels: int) -> int:
    """Decode one volume into ``entry``; returns the bytes written."""
    image = read_volume(ref.image, max_voxels)
    label = None
    if ref.label is not None:
        label = read_volume(ref.label, max_voxels)
        check_label(label, image.shape, ref.label)
    try:
        entry.mkdir(parents=True, exist_ok=True)
        for stale in entry.glob("*.tmp*"):  # left by a killed build
            stale.unlink(missing_ok=True)
        files = {}
        if mode == "decoded":
            files["image.npy"] = _save_npy(entry / "image.npy", np.ascontiguousarray(image))
            if label is not None:
                files["label.npy"] = _save_npy(entry / "label.npy", np.ascontiguousarray(label))
        elif mode == "compressed":
            files["image.chunks"] = write_chunked(entry / "image.chunks", image)
            if label is not None:
                files["label.chunks"] = write_chunked(entry / "label.chunks", label)
        counts = foreground_counts(label) if label is not None else np.zeros((0,), np.int32)
        files["foreground.npy"] = _save_npy(entry / "foreground.npy", counts)
        mean, std = intensity_stats(image)
        meta = {"id": ref.id, "shape": list(image.shape), "has_label": label is not None, "mean": mean, "std": std, "mode": mode, "files": files,
                "image": str(ref.image.resolve()), "label": str(ref.label.resolve()) if ref.label is not None else "", "max_voxels": max_voxels}
        tmp = entry / f"meta.json.tmp{os.getpid()}"
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, entry / "meta.json")  # written last: its presence marks a complete entry
    except OSError as exc:
        raise DataError(f"{entry}: cannot write the volume cache ({exc.strerror}); free disk space, set data.cache_dir "
                        f"or data.cache_mode=compressed|none") from exc
    return sum(files.values())


def _entry_bytes(entry: Path) -> int:
    return sum(p.stat().st_size for p in entry.iterdir() if p.is_file())


def default_workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


class VolumeCache:
    """The entries of one mode in ``folder``: built in parallel, opened cheaply."""

    def __init__(self, folder: str | Path, max_voxels: int, mode: str = "decoded", volumes_in_memory: int = 4):
        if mode not in MODES:
            raise DataError(f"cache mode {mode!r}: use one of {', '.join(MODES)} (or auto in data.cache_mode)")
        self.folder = Path(folder)
        self.max_voxels = max_voxels
        self.mode = mode
        self.volumes_in_memory = volumes_in_memory

    def entry(self, ref: VolumeRef) -> Path:
        return self.folder / self.mode / f"{ref.id}-{_key(ref, self.mode)}"

    @staticmethod
    def entry_meta(entry: Path) -> dict | None:
        """The entry's metadata when the entry is complete, else None."""
        try:
            meta = json.loads((entry / "meta.json").read_text())
            if all((entry / name).stat().st_size == size for name, size in meta["files"].items()):
                return meta
        except (OSError, ValueError, KeyError):
            pass
        return None

    def missing(self, refs: list[VolumeRef]) -> list[VolumeRef]:
        return [r for r in refs if self.entry_meta(self.entry(r)) is None]

    def build(self, refs: list[VolumeRef], workers: int = 0, progress: bool = True) -> int:
        """Build the entries not yet complete, in ``workers`` processes (0: one per core, at
        most 8); returns how many were built."""
        todo = self.missing(refs)
        workers = min(len(todo), workers or default_workers())
        if sum(source_bytes(r) for r in todo) < PARALLEL_FROM_BYTES:
            workers = 1
        bar = Progress(total=len(todo), desc=f"cache ({self.mode})", unit="vol", enabled=progress and bool(todo), leave=False)
        try:
            if workers <= 1:
                for ref in todo:
                    build_entry(ref, self.entry(ref), self.mode, self.max_voxels)
                    bar.update()
                return len(todo)
            # spawn: the caller may hold CUDA or threads that a forked child must not inherit
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = [pool.submit(build_entry, ref, self.entry(ref), self.mode, self.max_voxels) for ref in todo]
                try:
                    for future in as_completed(futures):
                        future.result()
                        bar.update()
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
            return len(todo)
        finally:
            bar.close()

    def load(self, ref: VolumeRef) -> CachedVolume:
        """The opened volume; its entry is built first when missing."""
        entry = self.entry(ref)
        if self.entry_meta(entry) is None:
            build_entry(ref, entry, self.mode, self.max_voxels)
        return CachedVolume.open(entry, self.volumes_in_memory)


def cache_folder(cache_dir: str, run_root: Path | str) -> Path:
    return Path(cache_dir) if cache_dir else default_cache_dir(run_root)


def free_bytes(folder: Path) -> int:
    """Free space on the filesystem that holds (or will hold) ``folder``."""
    path = Path(folder).resolve()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if abs(n) >= 1e9 else f"{n / 1e6:.1f} MB"


@dataclass
class CacheChoice:
    mode: str
    folder: Path
    free: int
    needed: dict  # bytes still to write, by mode, for the modes considered
    auto: bool = True

    def describe(self) -> str:
        how = "chosen for the free space" if self.auto else "set by data.cache_mode"
        sizes = "".join(f", {m} needs {_gb(b)}" for m, b in self.needed.items())
        return f"cache {self.mode} in {self.folder} ({how}: {_gb(self.free)} free{sizes})"


def source_bytes(ref: VolumeRef) -> int:
    return ref.image.stat().st_size + (ref.label.stat().st_size if ref.label is not None else 0)


def decoded_bytes(refs: list[VolumeRef], max_voxels: int) -> int:
    """Bytes a decoded cache of ``refs`` takes, from the TIFF headers."""
    return sum(int(np.prod(read_header_shape(r.image, max_voxels))) * (2 if r.label is not None else 1) + INDEX_BYTES for r in refs)


def compressed_bytes(refs: list[VolumeRef], cache: VolumeCache) -> int:
    """Bytes a compressed cache of ``refs`` still needs: the TIFFs' sizes scaled by the ratio of
    one entry to its TIFFs, from a complete entry or from compressing the first volume."""
    todo = cache.missing(refs)
    if not todo:
        return 0
    sample = next((r for r in refs if r not in todo), None)
    if sample is None:
        sample = todo[0]
        build_entry(sample, cache.entry(sample), cache.mode, cache.max_voxels)
    ratio = _entry_bytes(cache.entry(sample)) / source_bytes(sample)
    return int(ratio * sum(source_bytes(r) for r in todo))


def choose_mode(refs: list[VolumeRef], folder: Path, max_voxels: int, free: int | None = None) -> CacheChoice:
    """The first form whose bytes still to write fit on the disk with FREE_SPACE_RESERVE to
    spare: decoded, else compressed, else none."""
    free = free_bytes(folder) if free is None else free
    needed = {"decoded": decoded_bytes(VolumeCache(folder, max_voxels, "decoded").missing(refs), max_voxels)}
    if needed["decoded"] + FREE_SPACE_RESERVE <= free:
        return CacheChoice("decoded", folder, free, needed)
    compressed = VolumeCache(folder, max_voxels, "compressed")
    measured = not any(compressed.entry_meta(compressed.entry(r)) for r in refs)
    needed["compressed"] = compressed_bytes(refs, compressed)
    if needed["compressed"] + FREE_SPACE_RESERVE <= free:
        return CacheChoice("compressed", folder, free, needed)
    if measured:  # the entry compressed to measure the ratio is not kept
        shutil.rmtree(compressed.entry(refs[0]), ignore_errors=True)
    needed["none"] = INDEX_BYTES * len(VolumeCache(folder, max_voxels, "none").missing(refs))
    return CacheChoice("none", folder, free, needed)


def prepare_cache(refs: list[VolumeRef], mode: str, folder: Path, max_voxels: int) -> CacheChoice:
    """The mode to use, ``auto`` resolved against the free space; an explicit decoded cache
    that cannot fit is refused before anything is written."""
    if mode == "auto":
        return choose_mode(refs, folder, max_voxels)
    if mode not in MODES:
        raise DataError(f"data.cache_mode {mode!r}: use auto, decoded, compressed or none")
    free, needed = free_bytes(folder), {}
    if mode == "decoded":
        needed[mode] = decoded_bytes(VolumeCache(folder, max_voxels, mode).missing(refs), max_voxels)
        if needed[mode] > free:
            raise DataError(f"{folder}: a decoded cache needs {_gb(needed[mode])} more, {_gb(free)} free; "
                            f"set data.cache_dir to a larger disk or data.cache_mode=auto")
    return CacheChoice(mode, folder, free, needed, auto=False)
