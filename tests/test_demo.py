"""The embedded demo end to end: the trained model must beat the untrained one and the
tuned intensity-threshold baseline on its test split."""
import json

from scrollseg.demo import run_demo


def test_demo_trained_model_beats_both_yardsticks(tmp_path):
    summary = run_demo(tmp_path / "demo", minutes=30, steps=150, n_train=6, n_test=2)
    assert json.loads((tmp_path / "demo" / "summary.json").read_text()) == summary
    assert summary["steps"] == 150
    assert summary["leaderboard"] > summary["untrained"] + 0.05
    assert summary["leaderboard"] > summary["threshold_baseline"]
    assert summary["leaderboard"] >= summary["leaderboard_fixed_threshold"] - 0.02  # tuning on held-out volumes does not hurt much
    assert (tmp_path / "demo" / "submission.zip").is_file()
