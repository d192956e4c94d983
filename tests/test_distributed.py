"""Two CPU processes (gloo) against one: torchrun, --devices, resume after a kill, prediction."""
import os
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from scrollseg.checkpoint import RunDir, load_checkpoint
from scrollseg.config import build_config
from scrollseg.data.io import read_volume
from scrollseg.engine.trainer import train

from conftest import tiny_overrides

STEPS = 5
COMMON = tiny_overrides(**{"train.steps": STEPS, "data.batch_size": 2, "train.seed": 11, "train.val_every": 1000, "train.threads": 1})


def run(args, **kw):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, **kw)


def max_weight_difference(a, b) -> float:
    wa, wb = load_checkpoint(RunDir(a).checkpoints / "last.pt")["model"], load_checkpoint(RunDir(b).checkpoints / "last.pt")["model"]
    return max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)


@pytest.fixture(scope="module")
def single_process_run(small_dataset, tmp_path_factory):
    """One process with 2-fold accumulation: the same global batch as 2 ranks x 1."""
    out = tmp_path_factory.mktemp("single") / "run"
    train(small_dataset, out, build_config("tiny", COMMON + ["optim.accumulation=2"]), progress=False)
    return out


def test_devices_2_equals_one_process(small_dataset, single_process_run, tmp_path):
    proc = run(["-m", "scrollseg", "train", small_dataset, tmp_path / "ddp", "--preset", "tiny", "--devices", "2", "--strategy", "ddp", *COMMON])
    assert proc.returncode == 0, proc.stderr
    assert "global batch 4 = 2 per device x 2 devices x 1 accumulation" in proc.stderr
    diff = max_weight_difference(single_process_run, tmp_path / "ddp")
    print(f"--devices 2 vs 1 process: largest weight difference {diff:.3e}")
    assert diff < 1e-5
    assert load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")["global_batch"] == 4
    # not trivially equal: half the global batch trains different weights
    train(small_dataset, tmp_path / "half", build_config("tiny", COMMON), progress=False)
    assert max_weight_difference(single_process_run, tmp_path / "half") > 1e-4


def test_torchrun_equals_one_process(small_dataset, single_process_run, tmp_path):
    proc = run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "scrollseg", "train", small_dataset, tmp_path / "tr", "--preset", "tiny", *COMMON])
    assert proc.returncode == 0, proc.stderr
    diff = max_weight_difference(single_process_run, tmp_path / "tr")
    print(f"torchrun 2 processes vs 1 process: largest weight difference {diff:.3e}")
    assert diff < 1e-5


def test_killed_ddp_run_resumes_every_rank_at_the_same_step(small_dataset, tmp_path):
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "scrollseg", "train", str(small_dataset), str(run_dir), "--preset", "tiny", "--devices", "2", "--strategy", "ddp",
            "--steps", "400", "--checkpoint-steps", "2", "data.num_workers=0", "train.threads=1"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 300
    while not any(s >= 6 for s, _ in RunDir(run_dir).step_files()) and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = max(s for s, _ in RunDir(run_dir).step_files())
    again = run(args[1:4] + args[4:6] + ["--preset", "tiny", "--devices", "2", "--strategy", "ddp", "--steps", str(saved + 2), "data.num_workers=0", "train.threads=1"])
    assert again.returncode == 0, again.stderr
    resumed = [line for line in again.stderr.splitlines() if "resuming" in line]
    assert sorted(resumed) == sorted([f"resuming {run_dir} at step {saved} (rank {r})" for r in range(2)]), again.stderr
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == saved + 2


def test_predict_on_two_processes_gives_the_same_submission(small_dataset, single_process_run, tmp_path):
    one, two = tmp_path / "one.zip", tmp_path / "two.zip"
    for out, devices in ((one, "1"), (two, "2")):
        proc = run(["-m", "scrollseg", "predict", single_process_run, small_dataset, "--out", out, "--devices", devices])
        assert proc.returncode == 0, proc.stderr
    with zipfile.ZipFile(one) as a, zipfile.ZipFile(two) as b:
        assert sorted(a.namelist()) == sorted(b.namelist()) == ["9000.tif", "9001.tif"]
        for name in a.namelist():
            assert np.array_equal(read_volume(a.read(name)), read_volume(b.read(name)))
