"""About 800 volumes, as many as the competition's train set, small enough for seconds:
memory, open files and start-up stay bounded in every cache mode, and sampling stays
uniform across volumes."""
import json
import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import chisquare

from scrollseg.data.cache import VolumeCache
from scrollseg.data.io import write_volume
from scrollseg.data.layout import list_volumes
from scrollseg.data.sampler import PatchSampler, VolumePool
from scrollseg.data.volumes import OPEN_MAPS

N_VOLUMES = 800

PROBE = r"""
import json, os, sys, time
import numpy as np
from scrollseg.data.cache import VolumeCache
from scrollseg.data.layout import list_volumes
from scrollseg.data.sampler import PatchSampler, volume_pool

def status(field):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field + ":")) * 1024

def now():
    return {"rss": status("VmRSS"), "anon": status("RssAnon"), "fds": len(os.listdir("/proc/self/fd"))}

data, folder, mode = sys.argv[1:]
refs = list_volumes(data, "train")
cache = VolumeCache(folder, 10**9, mode)
before = now()
t0 = time.perf_counter()
volumes = [cache.load(r) for r in refs]
start_s = time.perf_counter() - t0
opened = now()
pool = volume_pool(4, 32, 8) if mode == "none" else None
sampler = PatchSampler(volumes, (12, 12, 12), 8, 0.5, seed=0, pool=pool)
seen = set()
t0 = time.perf_counter()
for step in range(300):
    seen |= {i for i, _ in sampler.draws(step)}
    sampler.batch(step)
sample_s = time.perf_counter() - t0
print(json.dumps({"before": before, "opened": opened, "sampled": now(), "start_s": start_s, "sample_s": sample_s, "seen": len(seen)}))
"""


@pytest.fixture(scope="module")
def many_volumes(tmp_path_factory):
    root = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(0)
    ids = [f"v{i:03d}" for i in range(N_VOLUMES)]
    for vid in ids:
        label = np.zeros((16, 16, 16), np.uint8)
        label[rng.integers(0, 16)] = 1  # one surface slice per volume
        label[:, :, :3] = 2
        write_volume(root / "train_images" / f"{vid}.tif", rng.integers(0, 255, (16, 16, 16), dtype=np.uint8))
        write_volume(root / "train_labels" / f"{vid}.tif", label)
    (root / "train.csv").write_text("id,scroll_id\n" + "".join(f"{vid},s\n" for vid in ids))
    return root


@pytest.fixture(scope="module")
def cache_root(many_volumes, tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize("mode", ["decoded", "compressed", "none"])
def test_800_volumes_keep_memory_files_and_start_up_bounded(many_volumes, cache_root, mode):
    refs = list_volumes(many_volumes, "train")
    VolumeCache(cache_root, 10**9, mode).build(refs, progress=False)
    out = subprocess.run([sys.executable, "-c", PROBE, str(many_volumes), str(cache_root), mode], capture_output=True, text=True, check=True)
    m = json.loads(out.stdout)
    print(f"\n{mode}: open 800 volumes in {m['start_s']:.2f} s; RSS +{(m['opened']['rss'] - m['before']['rss']) / 2**20:.1f} MiB "
          f"(anonymous +{(m['opened']['anon'] - m['before']['anon']) / 2**20:.1f} MiB) on opening, "
          f"+{(m['sampled']['rss'] - m['opened']['rss']) / 2**20:.1f} MiB after sampling {m['seen']} volumes in {m['sample_s']:.1f} s; "
          f"open files {m['before']['fds']} -> {m['opened']['fds']} -> {m['sampled']['fds']}")
    assert m["start_s"] < 5.0
    assert m["opened"]["fds"] == m["before"]["fds"], "opening holds no file"
    assert m["sampled"]["fds"] - m["before"]["fds"] <= (OPEN_MAPS if mode == "decoded" else 0)
    assert m["opened"]["anon"] - m["before"]["anon"] < N_VOLUMES * 16 * 1024, "at most 16 KB per volume: the index"
    # sampling hundreds of volumes keeps at most a few of them (maps or decoded volumes) in memory
    assert m["seen"] > (60 if mode == "none" else 700)
    assert m["sampled"]["rss"] - m["opened"]["rss"] < 16 * 2**20


def test_sampling_is_uniform_across_800_volumes(many_volumes, cache_root):
    volumes = VolumeCache(cache_root, 10**9, "none")
    refs = list_volumes(many_volumes, "train")
    volumes.build(refs, progress=False)
    opened = [volumes.load(r) for r in refs]
    sampler = PatchSampler(opened, (12, 12, 12), 8, 0.0, seed=3)
    counts = np.bincount([i for step in range(3000) for i, _ in sampler.draws(step)], minlength=N_VOLUMES)
    assert chisquare(counts).pvalue > 1e-3  # 30 draws per volume expected

    pool = VolumePool(4, 8)
    members = np.concatenate([pool.members(3, window * 8, N_VOLUMES) for window in range(6000)])
    assert chisquare(np.bincount(members, minlength=N_VOLUMES)).pvalue > 1e-3  # each volume in 30 pools expected
    pooled = PatchSampler(opened, (12, 12, 12), 8, 0.0, seed=3, pool=pool)
    positions = []
    for step in range(0, 4000, 4):
        members = list(pool.members(3, step, N_VOLUMES))
        positions += [members.index(i) for i, _ in pooled.draws(step)]
    assert chisquare(np.bincount(positions, minlength=4)).pvalue > 1e-3  # uniform inside the pool
