"""Time limits counted from the session start: the training reserve measured from real
checkpoint writes and steps, and predict lowering its flip TTA to finish in time."""
import os
import shutil
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import yaml

from scrollseg import api
from scrollseg.config import build_config
from scrollseg.data.io import read_volume
from scrollseg.engine import deadline as deadline_module
from scrollseg.engine.deadline import SESSION_START_ENV, Clock, process_start_time, session_start
from scrollseg.engine.trainer import train
from scrollseg.errors import ConfigError
from scrollseg.inference import time_budget
from scrollseg.inference.sliding_window import tile_starts
from scrollseg.inference.time_budget import SAFETY, TtaBudget

from conftest import tiny_overrides


def test_the_session_starts_with_the_process_or_the_environment(monkeypatch):
    psutil = pytest.importorskip("psutil")
    monkeypatch.delenv(SESSION_START_ENV, raising=False)
    assert abs(session_start() - psutil.Process().create_time()) < 1.5
    assert process_start_time() < time.time()
    monkeypatch.setenv(SESSION_START_ENV, "1700000000.5")
    assert session_start() == 1700000000.5
    monkeypatch.setenv(SESSION_START_ENV, "yesterday")
    with pytest.raises(ConfigError, match="epoch seconds"):
        session_start()


class FakeMonotonic:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_the_reserve_is_a_measured_checkpoint_and_step(monkeypatch):
    clock_now = FakeMonotonic()
    monkeypatch.setattr(deadline_module.time, "monotonic", clock_now)
    start = time.time()
    monkeypatch.setenv(SESSION_START_ENV, str(start - 1000))  # the session began 1000 s ago
    clock = Clock(0, "18m20s", 30, checkpoint_estimate_s=10)  # 1100 s: 100 s left
    assert clock.reserve_s() == 1.5 * 10 + 30  # 45 s before anything was timed
    assert clock.deadline_s == pytest.approx(100 - 45, abs=1)  # seconds after the clock's start
    assert not clock.deadline_near()
    clock_now.now += 12  # a 12 s loop pass ...
    clock.checkpointed(20)  # ... and a 20 s checkpoint after it
    clock_now.now += 20
    assert not clock.deadline_near()  # the pass is timed without the checkpoint: 12 s
    assert (clock.step_s, clock.checkpoint_s) == (12, 20)
    assert clock.reserve_s() == 1.5 * (20 + 12) + 30  # 78 s: still under the ~100 s left
    clock_now.now += 30  # a slow pass (a validation, say) widens the reserve to 105 s
    assert clock.deadline_near()
    assert Clock(0, "", 30).deadline == float("inf")


def test_training_stops_before_a_deadline_counted_from_the_session_start(small_dataset, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv(SESSION_START_ENV, str(time.time() - 3600))  # an hour of the session has passed
    cfg = build_config("tiny", tiny_overrides(**{"train.steps": 50, "train.time_limit": "1h0m20s"}))
    result = train(small_dataset, tmp_path / "run", cfg, progress=False)
    # 20 s left, less than the reserve of a (not yet timed) checkpoint: 1.5 x 5 s + 30 s
    assert (result.stop_reason, result.step) == ("time-limit", 1)
    monkeypatch.setenv(SESSION_START_ENV, str(time.time()))
    cfg = build_config("tiny", tiny_overrides(**{"train.steps": 3, "train.time_limit": "1h1m"}))
    assert train(small_dataset, tmp_path / "run2", cfg, progress=False).finished


def test_the_budget_steps_down_through_8_4_1_and_empty_masks():
    budget = TtaBudget(deadline=1000.0, most_flips=8)
    assert budget.choose([100, 100], now=0.0) == 8  # nothing measured yet
    budget.record(voxels=100, flips=8, forward_s=80.0, total_s=100.0)  # 20 s fixed + 10 s per flip
    # 4 volumes left: 8 flips need 4 x 100 s x 1.15 = 460 s, 4 flips 276 s, 1 flip 138 s
    assert SAFETY == 1.15 and budget.seconds(400, 8) == pytest.approx(460)
    assert budget.choose([100] * 4, now=1000 - 460) == 8
    assert budget.choose([100] * 4, now=1000 - 459) == 4
    assert budget.choose([100] * 4, now=1000 - 276) == 4
    assert budget.choose([100] * 4, now=1000 - 275) == 1
    assert budget.choose([100] * 4, now=1000 - 138) == 1
    assert budget.choose([100] * 4, now=1000 - 40) == 1  # not all four fit, this one does (34.5 s)
    assert budget.choose([100] * 4, now=1000 - 34) == 0
    assert budget.choose([100], now=1001) == 0
    assert budget.summary() == "volumes: 2 with 8 flips, 2 with 4 flips, 3 with 1 flip, 2 empty (out of time)"
    assert TtaBudget(1000.0, most_flips=1).choose([100], now=0.0) == 1  # without TTA only one flip


@pytest.fixture(scope="module")
def tiny_run(small_dataset, tmp_path_factory):
    run = tmp_path_factory.mktemp("run") / "run"
    train(small_dataset, run, build_config("tiny", tiny_overrides(**{"train.steps": 2})), progress=False)
    return run


def _zip_masks(path, data):
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == ["9000.tif", "9001.tif"]
        masks = {n: read_volume(zf.read(n)) for n in zf.namelist()}
    for name, mask in masks.items():
        assert mask.shape == read_volume(data / "test_images" / name).shape and set(np.unique(mask)) <= {0, 1}
    return masks


def test_a_short_limit_lowers_the_tta_and_still_writes_a_complete_submission(small_dataset, tiny_run, tmp_path, monkeypatch, capfd):
    # simulated time: 10 s per volume outside the model, 1 s per tile and flip inside it
    class FakeTime:
        clock = 0.0
        time = staticmethod(time.time)

        @classmethod
        def monotonic(cls):
            cls.clock += 10.0
            return cls.clock

    class FakeForward(time_budget.TimedForward):
        def forward(self, x):
            self.seconds += x.shape[0]
            FakeTime.clock += x.shape[0]
            return self.model(x)

    monkeypatch.setattr(api, "time", FakeTime)
    monkeypatch.setattr(time_budget, "TimedForward", FakeForward)
    inference = build_config("tiny", tiny_overrides()).inference
    tiles = np.prod([len(tile_starts(s, 32, inference.overlap)) for s in (48, 56, 64)])
    # the first volume (8 flips) ends at 30 + 8 x tiles s; leave the second the time of 6 flips
    left = SAFETY * (10 + 6 * tiles)
    limit = 20 + 8 * tiles + left + api.finish_reserve_s(2, 1)
    monkeypatch.setenv(SESSION_START_ENV, str(time.time()))
    api.predict(tiny_run, small_dataset, tmp_path / "sub.zip", overrides={"tta": True}, progress=False, time_limit=f"{limit:.3f}s")
    assert "predict: volumes: 1 with 8 flips, 1 with 4 flips" in capfd.readouterr().err
    _zip_masks(tmp_path / "sub.zip", small_dataset)


def test_predict_past_its_limit_writes_empty_masks_from_the_command_line(small_dataset, tiny_run, tmp_path):
    env = {**os.environ, SESSION_START_ENV: str(time.time() - 7200)}
    proc = subprocess.run([sys.executable, "-m", "scrollseg", "predict", str(tiny_run), str(small_dataset), "--out", str(tmp_path / "s.zip"),
                           "--tta", "--time-limit", "1h"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "2 empty (out of time)" in proc.stderr
    assert all(not m.any() for m in _zip_masks(tmp_path / "s.zip", small_dataset).values())


def test_an_ensemble_with_tuned_settings_keeps_them_under_a_time_limit(small_dataset, tiny_run, tmp_path):
    # a copy of the run whose tuned settings turn every voxel on (no probability of the 2-step model is that low)
    tuned_run = tmp_path / "tuned"
    shutil.copytree(tiny_run, tuned_run)
    (tuned_run / "tuned.yaml").write_text(yaml.safe_dump({"inference": {"threshold": 1e-6, "postprocess": [], "recto_context": 0.0}}))
    ensemble = [tuned_run, tiny_run]
    api.predict(ensemble, small_dataset, tmp_path / "tuned.zip", progress=False, time_limit="1h")
    assert all(m.all() for m in _zip_masks(tmp_path / "tuned.zip", small_dataset).values())
    # without the tuned settings, the limit changes nothing when there is time for every flip
    api.predict(ensemble, small_dataset, tmp_path / "timed.zip", overrides={"tta": True}, progress=False, use_tuned=False, time_limit="1h")
    api.predict(ensemble, small_dataset, tmp_path / "free.zip", overrides={"tta": True}, progress=False, use_tuned=False)
    timed, free = _zip_masks(tmp_path / "timed.zip", small_dataset), _zip_masks(tmp_path / "free.zip", small_dataset)
    assert all(np.array_equal(timed[n], free[n]) for n in free)
    assert not all(m.all() for m in free.values())
