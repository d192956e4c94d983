"""Per-volume cost of each data path on full-size chunks, extrapolated to the train set.

For a few synthetic 320^3 chunks written as LZW TIFFs (as the competition ships them):
seconds to decode one (image and label), seconds and bytes to cache it in each
``data.cache_mode``, and 128^3 patches per second read from each (one process, the
sampler's own reads, foreground fraction 0.33; without a cache each window of steps
decodes its pool afresh, as it would among 800 volumes, and each pooled volume serves
32 patches). ``--stores`` also times the chunked stores the compressed mode was chosen
against (python-blosc2 and zarr, when installed).

    taskset -c 1 python benchmarks/bench_data.py --volumes 3 --json data.json [--stores]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from scrollseg.data.cache import MODES, VolumeCache, source_bytes
from scrollseg.data.io import read_volume, write_volume
from scrollseg.data.layout import list_volumes
from scrollseg.data.sampler import PatchSampler, volume_pool
from scrollseg.data.synth import synth_chunk
from scrollseg.data import volumes as volumes_module

SHAPE = (320, 320, 320)
PATCH = (128, 128, 128)
TRAIN_SET = 800


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def write_chunks(root: Path, n: int) -> None:
    ids = []
    for i in range(n):
        vid = f"c{i}"
        if not (root / "train_labels" / f"{vid}.tif").is_file():
            say(f"synthesising {vid} ({'x'.join(map(str, SHAPE))})")
            image, label = synth_chunk(SHAPE, np.random.default_rng(i))
            write_volume(root / "train_images" / f"{vid}.tif", image)
            write_volume(root / "train_labels" / f"{vid}.tif", label)
        ids.append(vid)
    (root / "train.csv").write_text("id,scroll_id\n" + "".join(f"{v},s\n" for v in ids))


def patches_per_s(volumes, seconds: float, pool=None, batch: int = 2) -> float:
    """Patches per second; with a pool every window starts with nothing decoded."""
    sampler = PatchSampler(volumes, PATCH, batch, 0.33, seed=0, pool=pool)
    started, n, step = time.perf_counter(), 0, 0
    while time.perf_counter() - started < seconds or (pool is not None and step % pool.steps):
        if pool is not None and step % pool.steps == 0:
            volumes_module._DECODED.items.clear()
        sampler.batch(step)
        n += batch
        step += 1
    return n / (time.perf_counter() - started)


def drop_page_cache_hint(folder: Path) -> None:
    """Ask the kernel to forget the cached pages of ``folder``'s files (best effort)."""
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def bench_modes(root: Path, seconds: float) -> dict:
    refs = list_volumes(root, "train")
    started = time.perf_counter()
    for ref in refs:
        read_volume(ref.image)
        read_volume(ref.label)
    out = {"volumes": len(refs), "shape": list(SHAPE), "patch": list(PATCH),
           "tiff_mb": np.mean([source_bytes(r) for r in refs]) / 1e6, "decode_s": (time.perf_counter() - started) / len(refs)}
    for mode in MODES:
        folder = Path(tempfile.mkdtemp(dir=root))
        cache = VolumeCache(folder, 1024**3, mode)
        started = time.perf_counter()
        cache.build(refs, workers=1, progress=False)
        out[f"{mode}_build_s"] = (time.perf_counter() - started) / len(refs)
        out[f"{mode}_mb"] = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / len(refs) / 1e6
        volumes = [cache.load(r) for r in refs]
        pool = volume_pool(len(refs), 32, 2) if mode == "none" else None
        drop_page_cache_hint(folder)
        out[f"{mode}_patches_per_s"] = patches_per_s(volumes, seconds, pool)
        say(f"{mode}: build {out[f'{mode}_build_s']:.2f} s, {out[f'{mode}_mb']:.1f} MB, {out[f'{mode}_patches_per_s']:.1f} patches/s")
        shutil.rmtree(folder)
    return out


def bench_stores(root: Path, patches: int = 20) -> dict:
    """Seconds per 128^3 image+label patch and MB per volume for the candidate chunked stores."""
    from scrollseg.data.chunkstore import ChunkedArray, write_chunked

    ref = list_volumes(root, "train")[0]
    image, label = read_volume(ref.image), read_volume(ref.label)
    rng = np.random.default_rng(0)
    boxes = [tuple(slice(int(s), int(s) + 128) for s in rng.integers(0, 320 - 128, 3)) for _ in range(patches)]
    folder = Path(tempfile.mkdtemp(dir=root))
    out = {}

    def timed(read) -> float:
        started = time.perf_counter()
        for box in boxes:
            read(box)
        return (time.perf_counter() - started) / len(boxes) * 1000

    size = write_chunked(folder / "i", image) + write_chunked(folder / "l", label)
    ours = (ChunkedArray(folder / "i"), ChunkedArray(folder / "l"))
    out["scrollseg_zstd64"] = {"ms": timed(lambda b: [a.read([s.start for s in b], [s.stop for s in b]) for a in ours]), "mb": size / 1e6}
    try:
        import blosc2

        blosc2.set_nthreads(1)
        params = {"codec": blosc2.Codec.ZSTD, "clevel": 1, "filters": [blosc2.Filter.NOFILTER], "nthreads": 1}
        arrays = [blosc2.asarray(a, chunks=(64,) * 3, blocks=(32,) * 3, urlpath=str(folder / f"{n}.b2nd"), cparams=params)
                  for n, a in (("i", image), ("l", label))]
        arrays = [blosc2.open(str(folder / f"{n}.b2nd")) for n in ("i", "l")]
        out["blosc2_zstd64_32"] = {"ms": timed(lambda b: [a[b] for a in arrays]),
                                   "mb": sum((folder / f"{n}.b2nd").stat().st_size for n in ("i", "l")) / 1e6}
    except ImportError:
        say("python-blosc2 not installed: skipped")
    try:
        import zarr
        from zarr.codecs import ZstdCodec

        arrays = []
        for n, a in (("i", image), ("l", label)):
            z = zarr.create_array(str(folder / f"{n}.zarr"), shape=a.shape, chunks=(64,) * 3, dtype="u1", compressors=ZstdCodec(level=1))
            z[:] = a
            arrays.append(zarr.open_array(str(folder / f"{n}.zarr")))
        out["zarr_zstd64"] = {"ms": timed(lambda b: [a[b] for a in arrays]),
                              "mb": sum(p.stat().st_size for p in folder.rglob("*.zarr/**/*") if p.is_file()) / 1e6}
    except ImportError:
        say("zarr not installed: skipped")
    shutil.rmtree(folder)
    return out


def extrapolate(r: dict, volumes: int = TRAIN_SET, build_processes: int = 4, loader_workers: int = 4) -> dict:
    """The train set's disk, build time (``build_processes`` in parallel) and loader memory per mode."""
    decoded_volume = 2 * int(np.prod(SHAPE))
    return {
        mode: {"disk_gb": r[f"{mode}_mb"] * volumes / 1e3, "build_min": r[f"{mode}_build_s"] * volumes / build_processes / 60,
               "loader_ram_gb": (loader_workers * 4 * decoded_volume if mode == "none" else 0) / 1e9}
        for mode in MODES
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volumes", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0, help="reading time per mode")
    parser.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "scrollseg-bench-data"), help="where the synthetic chunks are kept")
    parser.add_argument("--stores", action="store_true", help="also time python-blosc2 and zarr when installed")
    parser.add_argument("--json")
    args = parser.parse_args()
    root = Path(args.data)
    write_chunks(root, args.volumes)
    result = bench_modes(root, args.seconds)
    result["train_set"] = extrapolate(result)
    if args.stores:
        result["stores"] = bench_stores(root)
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
