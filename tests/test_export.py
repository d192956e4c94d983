"""One file per checkpoint save (last.pt and final.pt are links), pruning, and the
weights-only fp16 export that predict reads."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from scrollseg import precision
from scrollseg.checkpoint import RunDir, load_checkpoint
from scrollseg.config import build_config
from scrollseg.data.io import read_volume
from scrollseg.engine.trainer import train
from scrollseg.export import export_weights
from scrollseg.inference.predict import load_model, probability_map

from conftest import tiny_overrides


def test_each_save_writes_one_file_and_keeps_keep_last(small_dataset, tmp_path):
    run = tmp_path / "run"
    train(small_dataset, run, build_config("tiny", tiny_overrides(**{"train.steps": 4, "train.checkpoint_steps": 1, "train.keep_last": 2})),
          progress=False)
    ckpts = RunDir(run).checkpoints
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.pt", "final.pt", "last.pt", "step-00000003.pt", "step-00000004.pt"]
    assert os.path.samefile(ckpts / "last.pt", ckpts / "step-00000004.pt")
    assert os.path.samefile(ckpts / "final.pt", ckpts / "step-00000004.pt")
    assert len({p.stat().st_ino for p in ckpts.iterdir()}) == 3  # two step files and best.pt
    assert load_checkpoint(ckpts / "last.pt")["step"] == 4


def test_without_hard_links_last_is_a_copy(small_dataset, tmp_path, monkeypatch):
    def no_links(*_):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    run = tmp_path / "run"
    train(small_dataset, run, build_config("tiny", tiny_overrides(**{"train.steps": 2, "train.checkpoint_steps": 1})), progress=False)
    ckpts = RunDir(run).checkpoints
    assert not os.path.samefile(ckpts / "last.pt", ckpts / "step-00000002.pt")
    assert (ckpts / "last.pt").read_bytes() == (ckpts / "step-00000002.pt").read_bytes()
    assert not list(ckpts.glob(".*tmp*"))


def test_the_fp16_export_predicts_like_the_run(small_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)  # fp32 inference: only the weights' rounding differs
    run = tmp_path / "run"
    train(small_dataset, run, build_config("tiny", tiny_overrides(**{"train.steps": 3})), progress=False)
    proc = subprocess.run([sys.executable, "-m", "scrollseg", "export", str(run), str(tmp_path / "model.pt")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "MiB, fp16 weights" in proc.stdout
    exported = load_checkpoint(tmp_path / "model.pt")
    assert set(exported) == {"model", "config", "step", "version", "exported_from", "tuned"} and exported["exported_from"] == "best.pt"
    assert exported["tuned"] is None and "no tuned post-processing" in proc.stdout
    assert all(t.dtype == torch.float16 for t in exported["model"].values() if t.is_floating_point())
    assert (tmp_path / "model.pt").stat().st_size < 0.5 * (RunDir(run).checkpoints / "best.pt").stat().st_size

    image = read_volume(small_dataset / "test_images" / "9000.tif")
    probs = []
    for source in (run, tmp_path / "model.pt"):
        model, cfg = load_model(source, torch.device("cpu"))
        probs.append(probability_map(model, image, cfg.inference, cfg.tile_size(), torch.device("cpu")))
    assert np.abs(probs[0] - probs[1]).max() < 5e-3
    assert export_weights(tmp_path / "model.pt", tmp_path / "again.pt").stat().st_size == (tmp_path / "model.pt").stat().st_size


def test_a_weight_average_is_what_is_exported(tmp_path):
    from scrollseg.checkpoint import atomic_save
    from scrollseg.models import build_model

    cfg = build_config("tiny", tiny_overrides())
    weights = build_model(cfg.model).state_dict()
    average = {k: v + 1 if v.is_floating_point() else v for k, v in weights.items()}
    atomic_save({"model": weights, "ema": {"model": average}, "config": cfg.to_dict(), "step": 5}, tmp_path / "run.pt")
    exported = load_checkpoint(export_weights(tmp_path / "run.pt", tmp_path / "model.pt"))["model"]
    assert all(torch.equal(exported[k], average[k].half() if average[k].is_floating_point() else average[k]) for k in average)


def test_the_export_carries_the_tuned_post_processing_of_its_step(small_dataset, tmp_path):
    import yaml

    from scrollseg.api import predictor_config

    run = tmp_path / "run"
    train(small_dataset, run, build_config("tiny", tiny_overrides(**{"train.steps": 2})), progress=False)
    tuned = {"threshold": 0.62, "hysteresis_low": 0.3, "min_component": 50, "postprocess": ["remove_dust", "plug_holes"]}
    (run / "tuned.yaml").write_text(yaml.safe_dump({"inference": tuned, "scores": {"leaderboard": 0.6}, "step": 2}))

    def export(*extra):
        proc = subprocess.run([sys.executable, "-m", "scrollseg", "export", *map(str, extra)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert "post-processing tuned in" in export(run, tmp_path / "model.pt") and "threshold=0.62" in export(run, tmp_path / "model.pt")
    exported = load_checkpoint(tmp_path / "model.pt")
    assert exported["tuned"] == tuned and exported["config"]["inference"]["threshold"] != 0.62  # the config stays as trained

    # away from its run, the exported file predicts with them, unless told not to; a re-export keeps them
    moved = tmp_path / "elsewhere" / "model.pt"
    moved.parent.mkdir()
    (tmp_path / "model.pt").rename(moved)
    inference = predictor_config(moved).inference
    assert (inference.threshold, inference.hysteresis_low, inference.min_component, list(inference.postprocess)) == (0.62, 0.3, 50, ["remove_dust", "plug_holes"])
    assert predictor_config(moved, use_tuned=False).inference.threshold == exported["config"]["inference"]["threshold"]
    assert "tuned before the export" in export(moved, tmp_path / "again.pt") and load_checkpoint(tmp_path / "again.pt")["tuned"] == tuned

    assert "left out" in export(run, tmp_path / "plain.pt", "--no-tuned") and load_checkpoint(tmp_path / "plain.pt")["tuned"] is None

    # settings tuned at another step belong to another model: neither exported nor used by predict
    (run / "tuned.yaml").write_text(yaml.safe_dump({"inference": tuned, "step": 1}))
    assert "was tuned at step 1" in export(run, tmp_path / "stale.pt") and load_checkpoint(tmp_path / "stale.pt")["tuned"] is None
    with pytest.warns(UserWarning, match="tuned at step 1"):
        assert predictor_config(run).inference.threshold != 0.62
