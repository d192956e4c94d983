"""An opened training volume, whichever form the cache keeps it in: its shape, intensity
statistics and surface index, padded patch reads, and the whole arrays for validation.

- ``DecodedVolume``: uncompressed .npy files, memory-mapped when read. Every map holds
  a file descriptor, so maps are kept in a small per-process table instead of one
  per volume (800 volumes x image and label would pass the usual limit of 1024).
- ``CompressedVolume``: zstd chunk files (``chunkstore``), decompressed per patch.
- ``SourceVolume``: the LZW TIFFs themselves, decoded whole in the process that reads
  them (a DataLoader worker) and kept in a small per-process LRU.
- ``ArrayVolume``: arrays already in memory, with no cache entry behind them.

Surface voxels are indexed by their count per 32^3 block: a draw picks a block in
proportion to its count and the k-th surface voxel inside it, which is exactly a
uniform draw over all surface voxels. The index costs 8 bytes per block (8 KB for a
320^3 volume); a list of the voxels would cost 8 bytes per surface voxel (about 20 MB).
"""
from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..constants import IGNORE_LABEL
from .chunkstore import ChunkedArray
from .io import read_volume

FOREGROUND_BLOCK = 32
OPEN_MAPS = 64  # memory maps a process keeps open (two per decoded volume)


class LRU:
    """The ``size`` most recently used values, made on demand."""

    def __init__(self, size: int):
        self.size = size
        self.items: OrderedDict = OrderedDict()

    def get(self, key, make, size: int | None = None):
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        value = make()
        self.items[key] = value
        while len(self.items) > (size or self.size):
            self.items.popitem(last=False)
        return value


_MAPS = LRU(OPEN_MAPS)  # path -> np.memmap
_DECODED = LRU(4)  # image path -> (image, label) of SourceVolumes


def block_grid(shape) -> tuple[int, int, int]:
    return tuple(-(-int(s) // FOREGROUND_BLOCK) for s in shape)


def foreground_counts(label: np.ndarray) -> np.ndarray:
    """Surface voxels (label 1) per FOREGROUND_BLOCK^3 block, int32 over the block grid."""
    grid, b = block_grid(label.shape), FOREGROUND_BLOCK
    padded = np.zeros([g * b for g in grid], bool)
    padded[tuple(slice(0, s) for s in label.shape)] = label == 1
    return padded.reshape(grid[0], b, grid[1], b, grid[2], b).sum((1, 3, 5), dtype=np.int64).astype(np.int32)


@dataclass(eq=False)
class CachedVolume:
    id: str
    shape: tuple[int, int, int]
    mean: float  # intensity statistics on the [0, 1] scale
    std: float
    has_label: bool
    foreground_ends: np.ndarray = field(repr=False)  # int64 running surface-voxel count over the blocks (C order)
    entry: Path = Path()  # the cache entry it was opened from
    ignored: "ChunkedArray | ArrayRegion | None" = field(default=None, repr=False)  # 1 where label 0 is read as ignored (engine.verso)

    @staticmethod
    def open(entry: Path | str, keep: int = 4) -> "CachedVolume":
        """The volume of a complete cache entry, in the entry's form; ``keep``: decoded
        volumes a process keeps when the entry has no voxels of its own."""
        entry = Path(entry)
        meta = json.loads((entry / "meta.json").read_text())
        counts = np.load(entry / "foreground.npy")
        common = dict(id=meta["id"], shape=tuple(meta["shape"]), mean=meta["mean"], std=meta["std"], has_label=meta["has_label"],
                      foreground_ends=np.cumsum(counts.ravel(), dtype=np.int64), entry=entry)
        if meta["mode"] == "decoded":
            return DecodedVolume(**common)
        if meta["mode"] == "compressed":
            return CompressedVolume(**common)
        label = Path(meta["label"]) if meta["label"] else None
        return SourceVolume(**common, image_path=Path(meta["image"]), label_path=label, max_voxels=meta["max_voxels"], keep=keep)

    @property
    def foreground_count(self) -> int:
        return int(self.foreground_ends[-1]) if self.foreground_ends.size else 0

    def region(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(image, label) of the box ``lo:hi``, which lies inside the volume."""
        raise NotImplementedError

    def label_region(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        return self.region(lo, hi)[1]

    @property
    def image(self) -> np.ndarray:
        return self.region(np.zeros(3, np.int64), np.asarray(self.shape))[0]

    @property
    def label(self) -> np.ndarray | None:
        return self.region(np.zeros(3, np.int64), np.asarray(self.shape))[1] if self.has_label else None

    def read(self, start, size) -> tuple[np.ndarray, np.ndarray]:
        """(image, label) patches of ``size`` at ``start``; voxels outside the volume are
        0 in the image and ignored in the label."""
        start, size = np.asarray(start, np.int64), tuple(int(s) for s in size)
        image = np.zeros(size, np.uint8)
        label = np.full(size, IGNORE_LABEL, np.uint8)
        lo, hi = np.maximum(start, 0), np.minimum(start + size, self.shape)
        if np.all(hi > lo):
            inside = tuple(slice(a, b) for a, b in zip(lo - start, hi - start))
            image_part, label_part = self.region(lo, hi)
            image[inside] = image_part
            if label_part is not None:
                if self.ignored is not None:
                    label_part = np.where((label_part == 0) & (self.ignored.read(lo, hi) == 1), IGNORE_LABEL, label_part)
                label[inside] = label_part
        return image, label

    def foreground_voxel(self, k: int) -> np.ndarray:
        """Coordinates of the k-th surface voxel (block by block, C order inside a block)."""
        block = int(np.searchsorted(self.foreground_ends, k, side="right"))
        before = int(self.foreground_ends[block - 1]) if block else 0
        lo = np.asarray(np.unravel_index(block, block_grid(self.shape))) * FOREGROUND_BLOCK
        hi = np.minimum(lo + FOREGROUND_BLOCK, self.shape)
        flat = np.flatnonzero(np.asarray(self.label_region(lo, hi)) == 1)[k - before]
        return lo + np.asarray(np.unravel_index(flat, tuple(hi - lo)))


def _box(lo, hi) -> tuple[slice, ...]:
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


@dataclass(eq=False)
class ArrayRegion:
    """An in-memory array read box by box, as a ``ChunkedArray`` is."""

    array: np.ndarray

    def read(self, lo, hi) -> np.ndarray:
        return self.array[_box(lo, hi)]


@dataclass(eq=False)
class DecodedVolume(CachedVolume):
    def _map(self, name: str) -> np.memmap:
        path = str(self.entry / name)
        return _MAPS.get(path, lambda: np.load(path, mmap_mode="r"))

    @property
    def image(self) -> np.memmap:
        return self._map("image.npy")

    @property
    def label(self) -> np.memmap | None:
        return self._map("label.npy") if self.has_label else None

    def region(self, lo, hi):
        box = _box(lo, hi)
        return self._map("image.npy")[box], (self._map("label.npy")[box] if self.has_label else None)

    def label_region(self, lo, hi):
        return self._map("label.npy")[_box(lo, hi)]


@dataclass(eq=False)
class CompressedVolume(CachedVolume):
    def region(self, lo, hi):
        label = ChunkedArray(self.entry / "label.chunks").read(lo, hi) if self.has_label else None
        return ChunkedArray(self.entry / "image.chunks").read(lo, hi), label

    def label_region(self, lo, hi):
        return ChunkedArray(self.entry / "label.chunks").read(lo, hi)


@dataclass(eq=False)
class SourceVolume(CachedVolume):
    image_path: Path = Path()
    label_path: Path | None = None
    max_voxels: int = 1024**3
    keep: int = 4  # decoded volumes this process keeps

    def _decoded(self) -> tuple[np.ndarray, np.ndarray | None]:
        def decode():
            label = read_volume(self.label_path, self.max_voxels) if self.label_path is not None else None
            return read_volume(self.image_path, self.max_voxels), label

        return _DECODED.get(str(self.image_path), decode, self.keep)

    def region(self, lo, hi):
        image, label = self._decoded()
        box = _box(lo, hi)
        return image[box], (label[box] if label is not None else None)


@dataclass(eq=False)
class ArrayVolume(CachedVolume):
    image_array: np.ndarray | None = field(default=None, repr=False)
    label_array: np.ndarray | None = field(default=None, repr=False)

    @staticmethod
    def of(id: str, image: np.ndarray, label: np.ndarray | None, mean: float, std: float) -> "ArrayVolume":
        """A volume over ``image`` and ``label`` as they are, with the given intensity statistics."""
        counts = foreground_counts(label) if label is not None else np.zeros(block_grid(image.shape), np.int32)
        return ArrayVolume(id=id, shape=tuple(image.shape), mean=mean, std=std, has_label=label is not None,
                           foreground_ends=np.cumsum(counts.ravel(), dtype=np.int64), image_array=image, label_array=label)

    def region(self, lo, hi):
        box = _box(lo, hi)
        return self.image_array[box], (self.label_array[box] if self.label_array is not None else None)
