"""Time budgets, weight averaging, folds and splits, tuning by the metric, ensembles."""
import json

import numpy as np
import pytest
import torch
import yaml

from scrollseg import api
from scrollseg.checkpoint import RunDir, load_checkpoint, resolve_checkpoint
from scrollseg.config import DataConfig, InferenceConfig, build_config
from scrollseg.data.layout import VolumeRef
from scrollseg.data.split import split_volumes
from scrollseg.engine.budget import SAFETY, steps_that_fit
from scrollseg.engine.ema import WeightAverage
from scrollseg.engine.schedule import learning_rate
from scrollseg.engine.trainer import train
from scrollseg.export import export_weights
from scrollseg.inference import tune as tune_module
from scrollseg.inference.predict import probability_map

from conftest import tiny_overrides


def test_steps_that_fit_counts_steps_validations_and_checkpoints():
    # 100 s planned at 1 s a step, a 10 s validation every 10 steps, a 5 s checkpoint every 20:
    # N steps cost N + 10 ceil(N/10) + 5 ceil(N/20): 40 -> 90 s fits, 41 -> 106 s does not
    assert steps_that_fit(100 / SAFETY, 1.0, 10.0, 10, 5.0, 20) == 40
    # 30 steps already done: the next 10 cost 10 + 10 + 5 (the checkpoint at 40) = 25 s
    assert steps_that_fit(25 / SAFETY, 1.0, 10.0, 10, 5.0, 20, done=30) == 40


def test_steps_that_fit_exact_boundary():
    budget = 200.0
    n = steps_that_fit(budget, 2.0, 0.0, 1000, 0.0, 1000)
    assert n * 2.0 <= SAFETY * budget < (n + 1) * 2.0
    assert steps_that_fit(1.0, 5.0, 0.0, 10, 0.0, 10, done=7) == 8  # at least one more step


def test_time_budget_plans_the_schedule_to_its_end(small_dataset, tmp_path, monkeypatch):
    """The planner's count (measured costs in, steps out; the arithmetic is tested above) becomes
    the run's step count: the LR decays to its floor at that step and a resume keeps it."""
    seen = {}

    def plan(remaining_s, step_s, validation_s, val_every, checkpoint_s, checkpoint_every, done=0):
        seen.update(remaining_s=remaining_s, step_s=step_s, validation_s=validation_s, done=done)
        return done + 15

    monkeypatch.setattr("scrollseg.engine.trainer.steps_that_fit", plan)
    overrides = tiny_overrides(**{"train.steps": 0, "train.minutes": 30, "train.log_every": 1, "optim.warmup_steps": 5, "train.val_every": 4})
    cfg = build_config("tiny", overrides)
    result = train(small_dataset, tmp_path / "run", cfg, progress=False)
    assert seen["done"] == 5 and seen["step_s"] > 0 and seen["validation_s"] > 0 and 0 < seen["remaining_s"] <= 30 * 60
    ckpt = load_checkpoint(RunDir(tmp_path / "run").checkpoints / "last.pt")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["planned_steps"] for r in records if r.get("event") == "planned"] == [20] and ckpt["planned_steps"] == 20
    assert result.finished and result.stop_reason == "steps" and result.step == 20
    lrs = [r["lr"] for r in records if "lr" in r]  # planned within the warm-up: every step on the planned schedule
    assert lrs == pytest.approx([learning_rate(s, 20, cfg.optim) for s in range(20)], rel=1e-9)
    assert sum("val/leaderboard" in r for r in records) == 6  # steps 4, 5 (the planner's), 8, 12, 16, 20
    # a later session with the same budget flags continues the planned run; it is already done
    again = train(small_dataset, tmp_path / "run", cfg, progress=False)
    assert again.step == 20 and again.finished


def test_weight_average_follows_the_formula():
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    avg = WeightAverage(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    avg.update(model)  # warm decay min(0.9, 1/10) = 0.1: 0 + 0.9 * (1 - 0)
    assert avg.model.weight.flatten().tolist() == pytest.approx([0.9, 0.9])
    for _ in range(20):
        avg.update(model)
    with torch.no_grad():
        model.weight.fill_(3.0)
    avg.update(model)  # update 21: decay min(0.9, 22/31); w is within 1e-6 of 1 after the 21 updates towards 1
    assert avg.model.weight[0, 0].item() == pytest.approx(1.0 + (1 - 22 / 31) * (3.0 - 1.0), abs=1e-5)
    for _ in range(100):
        avg.update(model)
    with torch.no_grad():
        model.weight.fill_(4.0)
    before = avg.model.weight[0, 0].item()
    avg.update(model)  # past update 80 the decay is capped at 0.9
    assert avg.model.weight[0, 0].item() == pytest.approx(before + 0.1 * (4.0 - before), abs=1e-5)


def test_ema_run_checkpoints_and_validates_the_average(small_dataset, tmp_path):
    cfg = build_config("tiny", tiny_overrides(**{"train.steps": 4, "train.ema_decay": 0.9, "train.val_every": 4}))
    train(small_dataset, tmp_path / "run", cfg, progress=False)
    ckpt = load_checkpoint(RunDir(tmp_path / "run").checkpoints / "final.pt")
    assert ckpt["ema"]["updates"] == 4
    assert any(not torch.equal(ckpt["ema"]["model"][k], ckpt["model"][k]) for k in ckpt["model"])


def _refs(n, scrolls):
    return [VolumeRef(f"v{i}", f"s{i % scrolls}", None, None) for i in range(n)]


@pytest.mark.parametrize("split_by, scrolls, by_scroll", [("auto", 4, True), ("auto", 3, False), ("scroll", 2, True), ("scroll", 1, False),
                                                          ("volume", 6, False)])
def test_split_by_scroll_or_volume(split_by, scrolls, by_scroll):
    refs = _refs(12, scrolls)
    train_refs, val_refs = split_volumes(refs, DataConfig(val_fraction=0.25, split_by=split_by), seed=0)
    held_scrolls = {r.scroll_id for r in val_refs}
    assert sorted(r.id for r in train_refs + val_refs) == sorted(r.id for r in refs) and val_refs
    if by_scroll:
        assert len(held_scrolls) == 1 and not held_scrolls & {r.scroll_id for r in train_refs}
    else:
        assert len(val_refs) == 3  # a quarter of the volumes


@pytest.mark.parametrize("scrolls, folds", [(4, 4), (2, 3)])
def test_folds_partition_the_volumes(scrolls, folds):
    refs = _refs(12, scrolls)
    held = [split_volumes(refs, DataConfig(folds=folds, fold=k), seed=1)[1] for k in range(folds)]
    ids = [r.id for fold in held for r in fold]
    assert sorted(ids) == sorted(r.id for r in refs) and all(held)  # every volume held out exactly once
    if scrolls >= folds:  # by scroll: a scroll never straddles folds
        assert all(len({r.scroll_id for r in fold}) == 1 for fold in held)


def test_ensemble_averages_the_models_probabilities():
    from scrollseg.models import build_model

    cfg = build_config("tiny", tiny_overrides())
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(build_model(cfg.model).eval())
    image = np.random.default_rng(0).integers(0, 255, (20, 24, 28), dtype=np.uint8)
    inf = InferenceConfig(tile=[32, 32, 32], tile_batch=2)
    single = [probability_map(m, image, inf, [32, 32, 32], torch.device("cpu"), (0.5, 0.2)) for m in models]
    both = probability_map(models, image, inf, [32, 32, 32], torch.device("cpu"), (0.5, 0.2))
    np.testing.assert_allclose(both, (single[0] + single[1]) / 2, atol=1e-6)
    assert np.abs(single[0] - single[1]).max() > 1e-3


def test_tune_finds_settings_no_worse_and_predict_uses_them(small_dataset, tmp_path, monkeypatch):
    run = tmp_path / "run"
    cfg = build_config("tiny", tiny_overrides(**{"train.steps": 30, "model.features": "[4,8,16]", "model.encoder_blocks": "[1,1,1]",
                                                 "data.patch_size": "[32,32,32]", "optim.lr": 0.01}))
    train(small_dataset, run, cfg, progress=False)
    monkeypatch.setattr("scrollseg.inference.tune.AXES", {k: v[:3] for k, v in __import__("scrollseg.inference.tune", fromlist=["AXES"]).AXES.items()})
    result = api.tune(run, workers=1, progress=False)
    assert result["best"].scores["leaderboard"] >= result["start"].scores["leaderboard"]
    assert result["start"].settings["threshold"] == cfg.inference.threshold  # the first trial is the trained setting
    saved = yaml.safe_load((run / "tuned.yaml").read_text())
    assert saved["inference"] == result["best"].settings and saved["scores"]["leaderboard"] == result["best"].scores["leaderboard"]
    _, used = api.load_predictor(run, torch.device("cpu"))
    assert all(getattr(used.inference, k) == v for k, v in saved["inference"].items())
    _, plain = api.load_predictor(run, torch.device("cpu"), use_tuned=False)
    assert plain.inference.postprocess == cfg.inference.postprocess
    # the probabilities are cached and reused for the same checkpoint
    cached = sorted(p.name for p in (run / "tune").glob("*/*.npy"))
    assert cached and api.tune(run, workers=1, progress=False)["best"].scores == result["best"].scores


def test_tune_chooses_between_best_and_final_and_predict_follows(small_dataset, tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(small_dataset, run, build_config("tiny", tiny_overrides(**{"train.steps": 30, "optim.lr": 0.01})), progress=False)
    monkeypatch.setattr("scrollseg.inference.tune.AXES", {"threshold": tune_module.AXES["threshold"][:3]})
    folder = RunDir(run).checkpoints
    final = load_checkpoint(folder / "final.pt")
    # a best.pt from an earlier step whose network predicts the same constant everywhere: an empty or full mask
    zeros = {k: torch.zeros_like(v) for k, v in final["model"].items()}
    constant = {**final, "step": 3, "model": zeros, "ema": {**final["ema"], "model": zeros} if final.get("ema") else None}
    torch.save(constant, folder / "best.pt")
    assert resolve_checkpoint(run) == folder / "best.pt"  # before tuning: best.pt, as always
    result = api.tune(run, workers=1, progress=False)
    scores = {name: score for name, (_, score) in result["checkpoints"].items()}
    assert set(scores) == {"best.pt", "final.pt"} and scores["final.pt"] > scores["best.pt"]
    assert result["checkpoint"] == folder / "final.pt"
    saved = yaml.safe_load((run / "tuned.yaml").read_text())
    assert saved["checkpoint"] == "final.pt" and saved["step"] == final["step"]
    assert sorted(p.name for p in (run / "tune").iterdir()) == ["best", "final"]  # one cache per checkpoint
    # predict and export take the tuned checkpoint, with its settings
    assert resolve_checkpoint(run) == folder / "final.pt"
    _, used = api.load_predictor(run, torch.device("cpu"))
    assert all(getattr(used.inference, k) == v for k, v in saved["inference"].items())
    exported = load_checkpoint(export_weights(run, tmp_path / "model.pt"))
    assert exported["exported_from"] == "final.pt" and exported["step"] == final["step"] and exported["tuned"] == saved["inference"]
    # given best.pt itself, predict is told where the tuned settings belong
    with pytest.warns(UserWarning, match="give the run folder .* to use final.pt"):
        api.load_predictor(folder / "best.pt", torch.device("cpu"))
    # training went on after the tune (final.pt is another step now): back to best.pt, and a re-tune is advised
    torch.save({**final, "step": final["step"] + 10}, folder / "final.pt")
    assert resolve_checkpoint(run) == folder / "best.pt"
    with pytest.warns(UserWarning, match="run scrollseg tune"):
        api.load_predictor(run, torch.device("cpu"))
    # a tuned.yaml naming a file that is gone: back to best.pt
    (folder / "final.pt").unlink()
    assert resolve_checkpoint(run) == folder / "best.pt"


def test_tune_on_a_subset_takes_volumes_spread_over_the_ids():
    ids = [f"{i:03d}" for i in range(10)]
    assert tune_module.spread_subset(ids[::-1], 4, key=str) == ["000", "003", "006", "009"]
    assert tune_module.spread_subset(ids, 1, key=str) == ["005"]
    assert tune_module.spread_subset(ids, 20, key=str) == ids


def test_tune_keeps_a_change_only_when_it_gains_more_than_noise(monkeypatch):
    # a fake metric: threshold 0.4 is better by 0.003 (noise on a few volumes), hole plugging by 0.02
    def fake_score(job):
        index, settings, _ = job
        score = 0.5 + (0.003 if settings["threshold"] == 0.4 and not settings["hysteresis_low"] else 0.0)
        score += 0.02 if "plug_holes" in settings["postprocess"] else 0.0
        return index, {"leaderboard": score}, 0.0

    monkeypatch.setattr(tune_module, "_score_setting", fake_score)
    start = InferenceConfig(threshold=0.5, hysteresis_low=0.0, postprocess=["remove_dust"])
    trials, chosen = tune_module.tune([], start, workers=1)
    assert chosen.settings["threshold"] == 0.5 and "plug_holes" in chosen.settings["postprocess"]
    assert chosen.scores["leaderboard"] == pytest.approx(0.52)
    assert max(t.scores["leaderboard"] for t in trials) > chosen.scores["leaderboard"]  # the 0.523 trial was seen, not taken
    _, greedy = tune_module.tune([], start, workers=1, min_gain=0.0)
    assert greedy.settings["threshold"] == 0.4
