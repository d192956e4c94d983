"""Faults and hostile input: kills, signals, deadlines, out-of-memory, failing writes, bad files."""
import errno
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile
import torch

from scrollseg import checkpoint as ckpt_module
from scrollseg.checkpoint import RunDir, atomic_save, load_checkpoint
from scrollseg.config import build_config
from scrollseg.data.io import write_volume
from scrollseg.engine import trainer as trainer_module
from scrollseg.engine.deadline import parse_duration
from scrollseg.engine.trainer import train
from scrollseg.errors import CheckpointError

from conftest import tiny_overrides

KILL_RUN = ["--preset", "tiny", "--steps", "40", "--checkpoint-steps", "1", "train.threads=2", "train.val_every=1000",
            "data.num_workers=1", "train.log_every=5", "model.features=[8,16]", "model.encoder_blocks=[1,1]",
            "data.patch_size=[32,32,32]", "inference.tile=[32,32,32]"]


def cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "scrollseg", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def final_weights(run):
    return load_checkpoint(RunDir(run).checkpoints / "last.pt")


def test_sigkill_at_random_points_then_resume_is_bitwise_exact(small_dataset, tmp_path):
    ref = cli("train", small_dataset, tmp_path / "ref", *KILL_RUN)
    assert ref.wait(timeout=300) == 0, ref.stderr.read()
    rng = np.random.default_rng(int(time.time()))
    run = tmp_path / "killed"
    kills = []
    for target in sorted(rng.choice(np.arange(3, 38), 3, replace=False)):
        proc = cli("train", small_dataset, run, *KILL_RUN)
        # wait for the run to pass a random step, then kill it at a random moment
        while proc.poll() is None and not any(s >= target for s, _ in RunDir(run).step_files()):
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills.append(max(s for s, _ in RunDir(run).step_files()))
    done = cli("train", small_dataset, run, *KILL_RUN)
    assert done.wait(timeout=300) == 0, done.stderr.read()
    a, b = final_weights(tmp_path / "ref"), final_weights(run)
    assert a["step"] == b["step"] == 40
    assert any(0 < k < 40 for k in kills), f"no kill landed mid-run: {kills}"
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert not list((run / "checkpoints").glob(".*tmp*"))


def test_sigterm_checkpoints_and_says_how_to_resume(small_dataset, tmp_path):
    run = tmp_path / "run"
    proc = cli("train", small_dataset, run, "--preset", "tiny", "--steps", "100000", "--checkpoint-steps", "100000",
               "data.num_workers=0", "train.log_every=2")
    deadline = time.time() + 120
    metrics = run / "metrics.jsonl"
    # the loop is running (and its signal handlers installed) once a step is logged
    while not (metrics.is_file() and '"loss"' in metrics.read_text()) and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=120)
    err = proc.stderr.read()
    assert code == 3
    assert "SIGTERM" in err and "Resume with the same command" in err
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] > 0


def test_time_limit_stops_cleanly(small_dataset, tmp_path):
    proc = cli("train", small_dataset, tmp_path / "run", "--preset", "tiny", "--steps", "100000", "--time-limit", "3s", "data.num_workers=0")
    code = proc.wait(timeout=120)
    assert code == 3 and "time-limit" in proc.stderr.read()
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    assert parse_duration("11h45m") == 11 * 3600 + 45 * 60 and parse_duration("90") == 5400


def test_injected_out_of_memory_keeps_the_effective_batch(small_dataset, tmp_path, monkeypatch):
    real_build = trainer_module.build_model
    raised = []

    class FlakyNet(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            if x.shape[0] > 1 and not raised:
                raised.append(x.shape[0])
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
            return self.inner(x)

    monkeypatch.setattr(trainer_module, "build_model", lambda cfg: FlakyNet(real_build(cfg)))
    cfg = build_config("tiny", tiny_overrides(**{"train.steps": 4, "data.batch_size": 2}))
    result = train(small_dataset, tmp_path / "run", cfg, progress=False)
    assert result.finished and raised == [2]
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert (state["micro_batch"], state["accumulation"]) == (1, 2)
    assert state["global_batch"] == 2
    assert '"event": "out_of_memory"' in (tmp_path / "run" / "metrics.jsonl").read_text()


def test_failing_checkpoint_write_leaves_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"model": {"w": torch.ones(3)}, "config": {}, "step": 1}, path)

    def disk_full(obj, fh):
        fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_module.torch, "save", disk_full)
    with pytest.raises(CheckpointError, match="No space left"):
        atomic_save({"model": {}, "config": {}, "step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_full_disk_during_training_exits_with_a_message(small_dataset, tmp_path, monkeypatch):
    def disk_full(obj, fh):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_module.torch, "save", disk_full)
    cfg = build_config("tiny", tiny_overrides(**{"train.steps": 2}))
    with pytest.raises(CheckpointError, match="free disk space"):
        train(small_dataset, tmp_path / "run", cfg, progress=False)


def _bad_dataset(root, small_dataset, image_bytes=None, label=None):
    """One volume ``v``: the first synthetic pair, with its image bytes or label replaced."""
    (root / "train_images").mkdir(parents=True, exist_ok=True)
    (root / "train_images" / "v.tif").write_bytes(image_bytes or (small_dataset / "train_images" / "1000.tif").read_bytes())
    write_volume(root / "train_labels" / "v.tif", tifffile.imread(small_dataset / "train_labels" / "1000.tif") if label is None else label)
    (root / "train.csv").write_text("id,scroll_id\nv,s\n")


@pytest.mark.parametrize(
    "case,needle",
    [
        ("corrupt", "v.tif: unreadable or truncated TIFF"),
        ("shape", "differs from its image"),
        ("values", "outside {0, 1, 2}"),
        ("empty", "train set is empty"),
        ("no_csv", "neither train.csv nor train_images"),
    ],
)
def test_bad_training_input(small_dataset, tmp_path, case, needle):
    root = tmp_path / "data"
    root.mkdir()
    if case == "corrupt":
        good = (small_dataset / "train_images" / "1000.tif").read_bytes()
        _bad_dataset(root, small_dataset, image_bytes=good[: len(good) // 3])
    elif case == "shape":
        _bad_dataset(root, small_dataset, label=np.zeros((8, 8, 8), np.uint8))
    elif case == "values":
        _bad_dataset(root, small_dataset, label=np.full((48, 56, 64), 7, np.uint8))
    elif case == "empty":
        (root / "train.csv").write_text("id,scroll_id\nghost,s\n")
    proc = cli("train", root, tmp_path / "run", "--preset", "tiny", "--steps", "2")
    code = proc.wait(timeout=120)
    err = proc.stderr.read()
    assert code == 2, err
    assert needle in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: ")


def test_small_volumes_are_padded(tmp_path):
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    write_volume(root / "train_images" / "s.tif", rng.integers(0, 255, (12, 20, 9), dtype=np.uint8))
    write_volume(root / "train_labels" / "s.tif", rng.integers(0, 3, (12, 20, 9), dtype=np.uint8))
    (root / "train.csv").write_text("id,scroll_id\ns,x\n")
    result = train(root, tmp_path / "run", build_config("tiny", tiny_overrides(**{"train.steps": 2})), progress=False)
    assert result.finished


def test_unwritable_outputs_and_earlier_outputs_stay(small_dataset, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = cli("train", small_dataset, blocker / "run", "--preset", "tiny", "--steps", "1")
    assert proc.wait(timeout=120) == 2 and "cannot write the run folder" in proc.stderr.read()

    run = tmp_path / "run"
    train(small_dataset, run, build_config("tiny", tiny_overrides(**{"train.steps": 1})), progress=False)
    proc = cli("predict", run, small_dataset, "--out", blocker / "sub.zip")
    assert proc.wait(timeout=120) == 2 and "choose a writable --out" in proc.stderr.read()

    # a corrupt test image: the earlier submission is untouched and nothing else is written
    sub = tmp_path / "out" / "submission.zip"
    assert cli("predict", run, small_dataset, "--out", sub).wait(timeout=120) == 0
    before = sub.read_bytes()
    bad = tmp_path / "bad_test"
    (bad / "test_images").mkdir(parents=True)
    (bad / "test_images" / "9000.tif").write_bytes((small_dataset / "test_images" / "9000.tif").read_bytes()[:500])
    (bad / "test.csv").write_text("id,scroll_id\n9000,s\n")
    proc = cli("predict", run, bad, "--out", sub)
    assert proc.wait(timeout=120) == 2 and "9000.tif" in proc.stderr.read()
    assert sub.read_bytes() == before
    assert sorted(p.name for p in sub.parent.iterdir()) == ["submission.zip"]


def test_oversized_tiff_is_refused_before_decoding(tmp_path):
    path = tmp_path / "huge.tif"
    # a header announcing 1.1e9 voxels; the file is sparse, so it costs no disk
    with tifffile.TiffWriter(path) as tw:
        tw.write(shape=(1100, 1000, 1000), dtype=np.uint8)
    from scrollseg.data.io import read_volume
    from scrollseg.errors import DataError

    with pytest.raises(DataError, match="over the limit"):
        read_volume(path)


def test_yaml_is_read_safely(tmp_path):
    from scrollseg.config import read_yaml
    from scrollseg.errors import ConfigError

    evil = tmp_path / "evil.yaml"
    evil.write_text("train: !!python/object/apply:os.system ['touch " + str(tmp_path / "ran") + "']\n")
    with pytest.raises(ConfigError):
        read_yaml(evil)
    assert not (tmp_path / "ran").exists()


def test_inference_out_of_memory_falls_back_to_smaller_tile_batches():
    from scrollseg.config import InferenceConfig
    from scrollseg.inference.predict import probability_map

    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 1, 3, padding=1).eval()
    calls = []

    def flaky(batch):
        calls.append(batch.shape[0])
        if batch.shape[0] > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return net(batch)

    image = np.random.default_rng(0).integers(0, 255, (40, 40, 40), dtype=np.uint8)
    cfg = InferenceConfig(tile_batch=4, overlap=0.5)
    expected = probability_map(net, image, cfg, [16, 16, 16], torch.device("cpu"))
    got = probability_map(flaky, image, cfg, [16, 16, 16], torch.device("cpu"))
    assert calls[:2] == [4, 2] and set(calls[2:]) == {1}
    np.testing.assert_allclose(got, expected, atol=1e-6)
