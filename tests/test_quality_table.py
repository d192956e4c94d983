"""docs/quality.md's table (benchmarks/quality.py render): which rows a run's record lands in."""
import importlib.util
import json
from pathlib import Path

_spec = importlib.util.spec_from_file_location("quality", Path(__file__).resolve().parents[1] / "benchmarks" / "quality.py")
quality = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(quality)


def record(arm: str, score: float, **extra) -> dict:
    parts = {"leaderboard": score, "topo": 0.4, "surface_dice": 0.9, "voi_score": 0.6}
    return {"dataset": "alt", "arm": arm, "seed": 0, "threads": 2, "precision": "bf16", "tuned": {"recto_context": 64.0},
            "test": {"tuned": parts}, **extra}


def test_a_recipe_run_of_the_preset_that_ignores_the_verso_background_counts_as_that_arm(tmp_path):
    records = [record("recipe", 0.68), record("recipe", 0.72, ignore_verso_background=True), record("verso_ignored", 0.74)]
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in records))
    rows = [line for line in quality.render(results).splitlines() if line.startswith("| alt")]
    assert rows[0].startswith("| alt | recipe (2 threads, bf16) | tuned | 1 | 0.680 |")
    assert rows[1].startswith("| alt | verso_ignored (2 threads, bf16) | tuned | 2 | 0.730 (0.720-0.740) |")
    targets = quality.render(results).split("\n\n")[1]
    assert "- alt: verso_ignored (2 threads, bf16), tuned: 0.730 (0.720-0.740) over 2 runs" in targets
