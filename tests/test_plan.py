"""scrollseg plan on a synthetic dataset, on this machine."""
import json
import math

import pytest

from scrollseg.cli import main
from scrollseg.data.cache import INDEX_BYTES
from scrollseg.inference.tta import TTA_LEVELS


def test_plan_reports_disk_memory_steps_sessions_and_submission_time(small_dataset, tmp_path, capsys):
    main(["plan", str(small_dataset), "--preset", "tiny", "--hours", "0.5", "--steps", "1", "--test-volumes", "10",
          "--cache-dir", str(tmp_path / "cache"), "--json", str(tmp_path / "plan.json")])
    text = capsys.readouterr().out
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["train_volumes"] == 4 and plan["train_shapes"] == {"48x56x64": 4} and plan["test_shape"] == [48, 56, 64]
    assert plan["disk_bytes"]["decoded"] == 4 * (2 * 48 * 56 * 64 + INDEX_BYTES)
    assert 0 < plan["disk_bytes"]["compressed"] < plan["disk_bytes"]["decoded"] and plan["disk_bytes"]["none"] == 4 * INDEX_BYTES
    assert plan["auto_mode"] == "decoded"  # a few MB on a disk with gigabytes free
    assert plan["ram_bytes"]["none"] == 1 * 4 * 2 * 48 * 56 * 64  # one loader worker keeps 4 volumes, image and label
    assert plan["steps_per_hour"] == pytest.approx(3600 / plan["step_s"])
    for mode, steps in plan["steps_per_session"].items():
        assert 0 < steps <= 1800 / plan["step_s"] and plan["sessions"][mode] == math.ceil(1500 / steps)
    per_volume = {int(k): v for k, v in plan["predict_s_per_volume"].items()}
    assert per_volume[8] == pytest.approx(plan["predict_fixed_s"] + 8 * plan["predict_forward_s_per_flip"])
    assert [plan["predict_s_total"][str(level)] for level in TTA_LEVELS] == pytest.approx([10 * per_volume[level] for level in TTA_LEVELS])
    assert [line.split()[0] for line in text.splitlines() if not line.startswith(" ")] == ["dataset", "disk", "memory", "train", "sessions", "predict"]
    assert "data.cache_mode=auto picks decoded" in text and "within 8h30m: 8 flips" in text
