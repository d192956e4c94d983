"""The three forms of the volume cache: same patches from each (and from arrays in
memory), resumable parallel builds, the automatic choice by free space, and the
no-cache pool that amortises each decode."""
import json
import os

import numpy as np
import pytest

from scrollseg.config import build_config
from scrollseg.data import cache as cache_module
from scrollseg.data import volumes as volumes_module
from scrollseg.data.cache import FREE_SPACE_RESERVE, INDEX_BYTES, VolumeCache, choose_mode, default_cache_dir, prepare_cache
from scrollseg.data.chunkstore import ChunkedArray, write_chunked
from scrollseg.data.io import read_volume, write_volume
from scrollseg.data.layout import list_volumes
from scrollseg.data.sampler import PatchSampler, VolumePool, volume_pool
from scrollseg.data.volumes import ArrayVolume, CachedVolume, CompressedVolume, DecodedVolume, SourceVolume
from scrollseg.engine.trainer import train
from scrollseg.errors import DataError

from conftest import tiny_overrides


def test_chunked_arrays_read_any_box(tmp_path, rng):
    array = rng.integers(0, 255, (70, 33, 129), dtype=np.uint8)
    size = write_chunked(tmp_path / "a.chunks", array, chunk=16)
    assert size == (tmp_path / "a.chunks").stat().st_size
    stored = ChunkedArray(tmp_path / "a.chunks")
    assert stored.shape == (70, 33, 129) and stored.grid == (5, 3, 9)
    for lo, hi in [((0, 0, 0), (70, 33, 129)), ((15, 16, 17), (17, 17, 18)), ((3, 0, 100), (69, 33, 129)), ((64, 32, 128), (70, 33, 129))]:
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        assert np.array_equal(stored.read(lo, hi), array[box]), (lo, hi)
    labels = np.zeros((64, 64, 64), np.uint8)
    labels[10:12] = 1
    assert write_chunked(tmp_path / "l.chunks", labels) < 2000, "labels compress"


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_every_mode_gives_the_same_patches(small_dataset, tmp_path, fraction):
    refs = list_volumes(small_dataset, "train")
    batches = {}
    for mode in ("decoded", "compressed", "none"):
        cache = VolumeCache(tmp_path, 10**9, mode)
        cache.build(refs, progress=False)
        sampler = PatchSampler([cache.load(r) for r in refs], (24, 24, 24), 3, fraction, seed=7)
        batches[mode] = [sampler.batch(step) for step in range(4)]
    # arrays in memory, with the cache's statistics, give them too
    decoded = [VolumeCache(tmp_path, 10**9, "decoded").load(r) for r in refs]
    in_memory = [ArrayVolume.of(v.id, np.array(v.image), np.array(v.label), v.mean, v.std) for v in decoded]
    batches["arrays"] = [PatchSampler(in_memory, (24, 24, 24), 3, fraction, seed=7).batch(step) for step in range(4)]
    for mode in ("compressed", "none", "arrays"):
        for a, b in zip(batches["decoded"], batches[mode]):
            assert all(np.array_equal(a[k], b[k]) for k in a), mode
    if fraction:
        assert all((b["label"] == 1).reshape(3, -1).any(1).all() for b in batches["none"])
    # an entry opens on its own, in its own form
    for mode, kind in (("decoded", DecodedVolume), ("compressed", CompressedVolume), ("none", SourceVolume)):
        vol = CachedVolume.open(VolumeCache(tmp_path, 10**9, mode).entry(refs[1]))
        assert type(vol) is kind and vol.id == refs[1].id and np.array_equal(vol.label, read_volume(refs[1].label))
    files = {mode: sorted(p.name for p in next((tmp_path / mode).iterdir()).iterdir()) for mode in ("decoded", "compressed", "none")}
    assert files == {"decoded": ["foreground.npy", "image.npy", "label.npy", "meta.json"],
                     "compressed": ["foreground.npy", "image.chunks", "label.chunks", "meta.json"],
                     "none": ["foreground.npy", "meta.json"]}


def test_a_killed_build_keeps_its_finished_entries(small_dataset, tmp_path, monkeypatch):
    refs = list_volumes(small_dataset, "train")
    cache = VolumeCache(tmp_path, 10**9, "compressed")
    real = cache_module.build_entry
    built = []

    def dies_on_the_third(ref, entry, mode, max_voxels):
        if len(built) == 2:
            entry.mkdir(parents=True)
            (entry / "image.chunks.tmp123").write_bytes(b"half")  # what a kill mid-write leaves
            raise KeyboardInterrupt
        built.append(ref.id)
        return real(ref, entry, mode, max_voxels)

    monkeypatch.setattr(cache_module, "build_entry", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        cache.build(refs, workers=1, progress=False)
    monkeypatch.undo()
    assert [r.id for r in cache.missing(refs)] == [r.id for r in refs[2:]]
    # a file that lost its tail (say, a crash before the disk caught up) makes its entry incomplete
    image = cache.entry(refs[0]) / "image.chunks"
    image.write_bytes(image.read_bytes()[:-1])
    assert [r.id for r in cache.missing(refs)] == [refs[0].id] + [r.id for r in refs[2:]]
    # the rest is built in parallel worker processes
    monkeypatch.setattr(cache_module, "PARALLEL_FROM_BYTES", 0)
    assert cache.build(refs, workers=2, progress=False) == 3
    assert cache.missing(refs) == [] and not list(tmp_path.rglob("*.tmp*"))
    vol = cache.load(refs[2])
    assert np.array_equal(vol.image, read_volume(refs[2].image)) and np.array_equal(vol.label, read_volume(refs[2].label))


def test_a_bad_volume_stops_a_parallel_build_with_its_name(small_dataset, tmp_path, monkeypatch):
    for sub in ("train_images", "train_labels"):
        (tmp_path / "data" / sub).mkdir(parents=True)
    for i in range(3):
        for sub in ("train_images", "train_labels"):
            (tmp_path / "data" / sub / f"v{i}.tif").write_bytes((small_dataset / sub / "1000.tif").read_bytes())
    write_volume(tmp_path / "data" / "train_labels" / "v1.tif", np.full((48, 56, 64), 5, np.uint8))
    (tmp_path / "data" / "train.csv").write_text("id,scroll_id\nv0,a\nv1,a\nv2,a\n")
    monkeypatch.setattr(cache_module, "PARALLEL_FROM_BYTES", 0)
    with pytest.raises(DataError, match="v1.tif: label values"):
        VolumeCache(tmp_path / "c", 10**9).build(list_volumes(tmp_path / "data", "train"), workers=2, progress=False)


def test_auto_takes_the_first_form_that_fits(small_dataset, tmp_path, monkeypatch):
    refs = list_volumes(small_dataset, "train")
    decoded = 4 * (2 * 48 * 56 * 64 + INDEX_BYTES)  # 4 volumes, image and label, one byte a voxel
    choice = choose_mode(refs, tmp_path, 10**9, free=FREE_SPACE_RESERVE + decoded)
    assert (choice.mode, choice.needed) == ("decoded", {"decoded": decoded})
    assert not (tmp_path / "compressed").exists()

    choice = choose_mode(refs, tmp_path, 10**9, free=FREE_SPACE_RESERVE + decoded - 1)
    assert choice.mode == "compressed" and 0 < choice.needed["compressed"] < decoded
    assert len(os.listdir(tmp_path / "compressed")) == 1, "one volume compressed to measure the ratio, and kept"
    assert "cache compressed in" in choice.describe() and "decoded needs 1.4 MB" in choice.describe()

    choice = choose_mode(refs, tmp_path / "other", 10**9, free=FREE_SPACE_RESERVE + 1000)
    assert choice.mode == "none" and choice.needed["none"] == 4 * INDEX_BYTES
    assert not os.listdir(tmp_path / "other" / "compressed"), "the measurement is removed when compressed does not fit either"

    real = cache_module.shutil.disk_usage
    monkeypatch.setattr(cache_module.shutil, "disk_usage", lambda path: real(path)._replace(free=1000))
    with pytest.raises(DataError, match="decoded cache needs 1.4 MB more, 0.0 MB free"):
        prepare_cache(refs, "decoded", tmp_path / "small_disk", 10**9)


def test_kaggle_runs_keep_the_cache_out_of_the_saved_output(tmp_path):
    assert default_cache_dir("/kaggle/working/run").name == "scrollseg-cache"
    assert not str(default_cache_dir("/kaggle/working/run")).startswith("/kaggle/working")
    assert default_cache_dir(tmp_path / "run") == (tmp_path / "run").resolve() / "cache"


def test_without_a_cache_each_decode_serves_a_window_of_patches(small_dataset, tmp_path, monkeypatch):
    refs = list_volumes(small_dataset, "train")
    cache = VolumeCache(tmp_path, 10**9, "none", volumes_in_memory=2)
    cache.build(refs, progress=False)
    volumes = [cache.load(r) for r in refs]
    decodes = []
    real = volumes_module.read_volume
    monkeypatch.setattr(volumes_module, "read_volume", lambda path, *a: decodes.append(path) or real(path, *a))
    volumes_module._DECODED.items.clear()
    pool = volume_pool(volumes_in_memory=2, patches_per_volume=6, global_batch=3)
    assert pool == VolumePool(2, 4)  # 2 volumes x 6 patches = 12 patches = 4 steps of 3
    sampler = PatchSampler(volumes, (16, 16, 16), 3, 0.5, seed=1, pool=pool)
    used = set()
    for step in range(4):
        used |= {i for i, _ in sampler.draws(step)}
        sampler.batch(step)
    # 12 patches from the window's 2 volumes; image and label decoded once per volume
    assert used <= set(pool.members(1, 0, 4).tolist()) and len(decodes) == 2 * len(used)


@pytest.mark.parametrize("mode", ["compressed", "none"])
def test_training_reads_each_mode(small_dataset, tmp_path, mode, capfd):
    cfg = build_config("tiny", tiny_overrides(**{"train.steps": 3, "data.cache_mode": mode}))
    result = train(small_dataset, tmp_path / "run", cfg, progress=False)
    assert result.finished
    assert f"cache {mode} in {tmp_path / 'run' / 'cache'} (set by data.cache_mode" in capfd.readouterr().err
    meta = json.loads(next((tmp_path / "run" / "cache" / mode).glob("*/meta.json")).read_text())
    assert meta["mode"] == mode
