import os
import socket
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from scrollseg.data.io import encode_volume, read_volume
from scrollseg.errors import DataError, ScrollsegError
from scrollseg.config import InferenceConfig
from scrollseg.inference.postprocess import postprocess
from scrollseg.inference.sliding_window import gaussian_weights, sliding_window, tile_starts
from scrollseg.inference.submission import SubmissionWriter
from scrollseg.inference.tta import with_flip_tta
from scrollseg.metrics.evaluate import PredictionSource, score_predictions


def test_tiles_end_at_the_border():
    for size, tile in [(100, 32), (64, 64), (65, 32), (10, 32)]:
        starts = tile_starts(size, tile, 0.5)
        assert starts[0] == 0
        assert starts[-1] == max(size - tile, 0)
        assert all(b - a <= tile // 2 for a, b in zip(starts, starts[1:]))


@pytest.mark.parametrize("shape", [(40, 33, 50), (10, 20, 12), (32, 32, 32)])
def test_identity_model_gives_back_its_input(shape):
    volume = torch.rand((1,) + shape)
    out = sliding_window(volume, lambda b: b, (16, 16, 16), overlap=0.5, batch_size=3)
    assert out.shape == volume.shape
    torch.testing.assert_close(out, volume)


def test_gaussian_has_no_zeros_and_peaks_in_the_centre():
    g = gaussian_weights((8, 8, 8), torch.device("cpu"))
    assert g.min() > 0 and g.max() == 1.0
    assert g[3:5, 3:5, 3:5].min() == g.max()


def test_flip_tta_of_an_equivariant_model_changes_nothing():
    volume = torch.rand(2, 1, 8, 8, 8)
    conv = torch.nn.Conv3d(1, 1, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.ones_like(conv.weight))  # symmetric kernel: flip-equivariant
        torch.testing.assert_close(with_flip_tta(conv)(volume), conv(volume))


def test_postprocess_threshold_hysteresis_and_dust():
    prob = np.zeros((20, 20, 20), np.float32)
    prob[2:10, 5, 2:10] = 0.6
    prob[5, 5, 5] = 0.9
    prob[15:17, 15, 15:17] = 0.6  # weak blob with no strong voxel
    prob[18, 18, 18] = 0.95  # single voxel
    assert postprocess(prob, InferenceConfig(threshold=0.5, postprocess=[])).sum() == 64 + 4 + 1
    assert postprocess(prob, InferenceConfig(threshold=0.8, hysteresis_low=0.5, postprocess=[])).sum() == 64 + 1
    assert postprocess(prob, InferenceConfig(threshold=0.5, min_component=10)).sum() == 64


def test_submission_is_all_or_nothing(tmp_path):
    out = tmp_path / "submission.zip"
    mask = np.zeros((4, 5, 6), np.uint8)
    with SubmissionWriter(out, {"a", "b"}) as w:
        w.add("a", mask, mask.shape)
        w.add("b", mask, mask.shape)
    before = out.read_bytes()
    with zipfile.ZipFile(out) as zf:
        assert sorted(zf.namelist()) == ["a.tif", "b.tif"]
        assert read_volume(zf.read("a.tif")).shape == (4, 5, 6)
    with pytest.raises(ScrollsegError, match="no mask"):
        with SubmissionWriter(out, {"a", "b"}) as w:
            w.add("a", mask, mask.shape)
    with pytest.raises(ScrollsegError, match="differs"):
        with SubmissionWriter(out, {"a"}) as w:
            w.add("a", mask, (4, 5, 7))
    assert out.read_bytes() == before, "the earlier submission is untouched"
    assert [p.name for p in tmp_path.iterdir()] == ["submission.zip"], "no temporary files left"


def test_the_next_writer_removes_the_temporary_zip_of_a_killed_one(tmp_path):
    out = tmp_path / "submission.zip"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    orphan = tmp_path / f".submission.zip.tmp.{host}.{dead.pid}"
    orphan.write_bytes(b"half a zip")
    alive = tmp_path / f".submission.zip.tmp.{host}.{os.getppid()}"  # a running process's: left alone
    alive.write_bytes(b"being written")
    elsewhere = tmp_path / f".submission.zip.tmp.another-host.{dead.pid}"  # another machine's, on a shared disk
    elsewhere.write_bytes(b"being written there")
    mask = np.zeros((4, 5, 6), np.uint8)
    with SubmissionWriter(out, {"a"}) as w:
        w.add("a", mask, mask.shape)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, elsewhere.name, "submission.zip"])


def test_hostile_zips_are_refused(tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "a.tif").write_bytes(encode_volume(np.zeros((4, 4, 4), np.uint8)))
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../a.tif", encode_volume(np.zeros((4, 4, 4), np.uint8)))
    with pytest.raises(DataError, match="top-level"):
        score_predictions(labels, evil)
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.tif", b"\0" * 5_000_000)
    with pytest.raises(DataError, match="zip bomb"):
        PredictionSource(bomb, max_bytes=1_000_000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.zip", "evil.zip", "labels"]


def test_score_reads_folders_and_zips(tmp_path):
    labels, preds = tmp_path / "labels", tmp_path / "preds"
    labels.mkdir(), preds.mkdir()
    label = np.zeros((12, 12, 12), np.uint8)
    label[2:10, 6, 2:10] = 1
    (labels / "v.tif").write_bytes(encode_volume(label))
    (preds / "v.tif").write_bytes(encode_volume(label))
    assert score_predictions(labels, preds)["mean"]["leaderboard"] == pytest.approx(1.0)
    with SubmissionWriter(tmp_path / "s.zip", {"v"}) as w:
        w.add("v", np.zeros_like(label), label.shape)
    result = score_predictions(labels, tmp_path / "s.zip")
    assert result["cases"]["v"]["surface_dice"] == 0.0


def test_score_with_worker_processes_matches_one(tmp_path):
    labels, preds = tmp_path / "labels", tmp_path / "preds"
    labels.mkdir(), preds.mkdir()
    rng = np.random.default_rng(1)
    for vid in ("a", "b", "c"):
        label = (rng.random((16, 18, 20)) < 0.2).astype(np.uint8)
        (labels / f"{vid}.tif").write_bytes(encode_volume(label))
        (preds / f"{vid}.tif").write_bytes(encode_volume(np.roll(label, 1, axis=0)))
    assert score_predictions(labels, preds, workers=3) == score_predictions(labels, preds, workers=1)
