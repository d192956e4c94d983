"""The end-of-run summary: what the run reached, at what speed, where its checkpoints
are, and the exact commands to resume it and to predict with it."""
from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import numpy as np

from ..checkpoint import RunDir
from ..progress import format_duration


def best_validation(records: list[dict]) -> tuple[float | None, int | None]:
    """(score, step) of the best validation in ``records``; the earliest wins a tie."""
    scored = [(r["val/leaderboard"], -r["step"]) for r in records if r.get("val/leaderboard") is not None]
    if not scored:
        return None, None
    score, neg_step = max(scored)
    return score, -neg_step


def run_summary(run_dir: Path | str, data_dir: Path | str, records: list[dict], step: int, total_steps: int, stop_reason: str,
                seconds: float, extra: dict | None = None) -> dict:
    """The summary of a run from its metrics records and this session's figures."""
    run = RunDir(run_dir)
    best_score, best_step = best_validation(records)
    logged = [r for r in records if "samples_per_s" in r]
    checkpoints = {name: str(run.checkpoints / name) for name in ("best.pt", "final.pt", "last.pt") if (run.checkpoints / name).is_file()}
    newest = run.step_files()
    if newest:
        checkpoints["newest_step"] = str(newest[-1][1])
    return {
        "run": str(run.root),
        "finished": step >= total_steps,
        "stop_reason": stop_reason,
        "step": step,
        "total_steps": total_steps,
        "best_score": best_score,
        "best_step": best_step,
        "session_seconds": seconds,
        "samples_per_s": float(np.mean([r["samples_per_s"] for r in logged])) if logged else None,
        "data_wait": float(np.mean([r["data_wait"] for r in logged])) if logged else None,
        **(extra or {}),
        "checkpoints": checkpoints,
        "commands": {
            "resume": shlex.join(["scrollseg", "train", os.fspath(data_dir), os.fspath(run.root)]),
            "predict": shlex.join(["scrollseg", "predict", os.fspath(run.root), os.fspath(data_dir), "--out", "submission.zip"]),
        },
    }


def summary_lines(summary: dict) -> list[str]:
    s = summary
    best = f"best validation {s['best_score']:.4f} at step {s['best_step']}" if s["best_score"] is not None else "no validation yet"
    speed = (f"{s['samples_per_s']:.1f} samples/s, data-wait {s['data_wait']:.0%}" if s["samples_per_s"] is not None else "no step logged")
    state = "finished" if s["finished"] else f"stopped ({s['stop_reason'] or 'not finished'})"
    lines = [
        f"run {s['run']}: {state} at step {s['step']}/{s['total_steps']}; {best}",
        f"  this session {format_duration(s['session_seconds'])}; {speed}",
    ]
    gpus = {k: v for k, v in s.items() if k.startswith("gpu")}
    if gpus:
        lines.append("  " + ", ".join(f"{k} {v:.3g}" for k, v in gpus.items()))
    lines += [f"  {name}: {path}" for name, path in s["checkpoints"].items()]
    more = " (raise --steps to train longer)" if s["finished"] else ""
    lines += [f"  resume{more}: {s['commands']['resume']}", f"  predict: {s['commands']['predict']}"]
    return lines


def write_summary(path: Path | str, summary: dict) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, path)
