import json

import pytest
import torch

from scrollseg.checkpoint import RunDir, load_checkpoint
from scrollseg.api import resolve_train_config
from scrollseg.config import build_config
from scrollseg.engine.schedule import learning_rate
from scrollseg.engine.trainer import train
from scrollseg.errors import CheckpointError, ConfigError

from conftest import tiny_overrides


def weights(run):
    return load_checkpoint(RunDir(run).checkpoints / "last.pt")["model"]


def test_schedule_warmup_then_cosine_to_the_floor():
    cfg = build_config("tiny", ["optim.warmup_steps=10", "optim.lr=1.0", "optim.min_lr_ratio=0.1"]).optim
    lrs = [learning_rate(s, 110, cfg) for s in range(110)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert learning_rate(110, 110, cfg) == pytest.approx(0.1)


def test_short_training_run_loss_falls(small_dataset, tmp_path):
    # the tiny preset's own network and patch size
    cfg = build_config("tiny", ["train.steps=80", "train.val_every=80", "train.log_every=10", "data.num_workers=0", "inference.tile=[32,32,32]"])
    result = train(small_dataset, tmp_path / "run", cfg, progress=False)
    assert result.finished and result.step == 80
    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert sum(losses[-3:]) / 3 < 0.9 * losses[0], losses
    assert any("val/leaderboard" in r for r in records)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    board.Reload()
    assert [e.step for e in board.Scalars("loss")] == [r["step"] for r in records if "loss" in r]
    ckpts = {p.name for p in (tmp_path / "run" / "checkpoints").iterdir()}
    assert {"last.pt", "final.pt", "best.pt"} <= ckpts
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "final.pt")
    assert ckpt["config"]["model"]["features"] == [8, 16, 32, 64] and ckpt["step"] == 80
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_background_validation_scores_like_inline(small_dataset, tmp_path):
    """Scores computed in the worker process equal the inline ones; best.pt is the
    state of the best validation step, and no candidate checkpoint is left behind."""
    results = {}
    for mode in ("inline", "background"):
        cfg = build_config("tiny", tiny_overrides(**{"train.steps": 6, "train.val_every": 3, "train.val_scoring": mode}))
        train(small_dataset, tmp_path / mode, cfg, progress=False)
        records = [json.loads(l) for l in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()]
        results[mode] = [(r["step"], r["val/leaderboard"]) for r in records if "val/leaderboard" in r]
        names = {p.name for p in (tmp_path / mode / "checkpoints").iterdir()}
        assert "best.pt" in names and not any(n.startswith("candidate-") for n in names)
        best_step = max(results[mode], key=lambda sv: sv[1])[0]
        assert load_checkpoint(tmp_path / mode / "checkpoints" / "best.pt")["step"] == best_step
    assert [s for s, _ in results["background"]] == [s for s, _ in results["inline"]] == [3, 6]
    assert [v for _, v in results["background"]] == pytest.approx([v for _, v in results["inline"]], abs=1e-12)


def test_same_seed_same_weights_and_exact_resume(small_dataset, tmp_path):
    over = tiny_overrides(**{"train.steps": 12, "train.seed": 7})
    train(small_dataset, tmp_path / "a", build_config("tiny", over), progress=False)
    train(small_dataset, tmp_path / "b", build_config("tiny", over), progress=False)
    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    # 5 steps, stop, then continue the same run to 12
    train(small_dataset, tmp_path / "c", build_config("tiny", tiny_overrides(**{"train.steps": 12, "train.seed": 7, "train.minutes": 1e-9})), progress=False)
    first = load_checkpoint(RunDir(tmp_path / "c").checkpoints / "last.pt")["step"]
    assert 0 < first < 12
    result = train(small_dataset, tmp_path / "c", build_config("tiny", over), progress=False)
    assert result.step == 12
    wc = weights(tmp_path / "c")
    assert all(torch.equal(wa[k], wc[k]) for k in wa), "resumed run equals the uninterrupted one"


def test_resume_refuses_a_changed_config(small_dataset, tmp_path):
    run = tmp_path / "run"
    train(small_dataset, run, build_config("tiny", tiny_overrides(**{"train.steps": 2})), progress=False)
    assert resolve_train_config(run, None, ["train.steps=4"]).train.steps == 4  # budgets may change
    with pytest.raises(ConfigError, match="optim.lr"):
        resolve_train_config(run, None, ["optim.lr=0.5"])
    assert resolve_train_config(run, None, ["optim.lr=0.5"], ("optim.lr",)).optim.lr == 0.5


def test_damaged_newest_checkpoint_falls_back(small_dataset, tmp_path):
    run = tmp_path / "run"
    train(small_dataset, run, build_config("tiny", tiny_overrides(**{"train.steps": 4, "train.checkpoint_steps": 2})), progress=False)
    steps = RunDir(run).step_files()
    assert [s for s, _ in steps] == [2, 4]
    steps[-1][1].write_bytes(steps[-1][1].read_bytes()[:100])
    with pytest.warns(UserWarning, match="earlier checkpoint"):
        ckpt = RunDir(run).load_newest_valid()
    assert ckpt["step"] == 2


def test_pickled_code_in_a_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "x": Payload()}, evil)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(evil)
    assert not marker.exists()
