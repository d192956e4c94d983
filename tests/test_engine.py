"""The training step, the deterministic switch, and the GPU presets' path run on the CPU."""
import json

import pytest
import torch

from scrollseg.checkpoint import RunDir, load_checkpoint
from scrollseg.config import TrainConfig, build_config
from scrollseg.engine.speed import resolve_speed, speed_up
from scrollseg.engine.step import optimizer_step
from scrollseg.engine.trainer import train
from scrollseg.precision import resolve_precision

from conftest import tiny_overrides


def _tiny_net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(2, 1, 1))


def _mse(out, y):
    return ((out - y) ** 2).mean()


def test_accumulated_micro_batches_equal_one_full_batch():
    x, y = torch.randn(4, 1, 6, 6, 6), torch.randn(4, 1, 6, 6, 6)
    fp32 = resolve_precision("fp32", torch.device("cpu"))
    results = []
    for chunks in (1, 2, 4):
        net = _tiny_net()
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        scaler = torch.amp.GradScaler("cuda", enabled=False)
        micro = list(zip(x.chunk(chunks), y.chunk(chunks)))
        result = optimizer_step(net, opt, scaler, fp32, _mse, micro, chunks, lr=0.1, grad_clip=0)
        results.append((result, torch.cat([p.detach().flatten() for p in net.parameters()])))
    (r1, w1), (r2, w2), (r4, w4) = results
    assert torch.allclose(w1, w2, atol=1e-6) and torch.allclose(w1, w4, atol=1e-6)
    assert r1.loss == pytest.approx(r2.loss, rel=1e-5) == pytest.approx(r4.loss, rel=1e-5)


def test_step_reports_the_gradient_norm_and_clips_it():
    x, y = torch.randn(2, 1, 6, 6, 6), torch.randn(2, 1, 6, 6, 6) * 10
    fp32 = resolve_precision("fp32", torch.device("cpu"))
    net = _tiny_net()
    _mse(net(x), y).backward()
    expected = torch.cat([p.grad.flatten() for p in net.parameters()]).norm().item()
    before = [p.detach().clone() for p in net.parameters()]
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    result = optimizer_step(net, opt, torch.amp.GradScaler("cuda", enabled=False), fp32, _mse, [(x, y)], 1, lr=1.0, grad_clip=0.5)
    assert result.grad_norm == pytest.approx(expected, rel=1e-4) and expected > 0.5
    moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(net.parameters(), before)]).norm().item()
    assert moved == pytest.approx(0.5, rel=1e-3)  # SGD with lr 1 moves by the clipped gradient


def test_deterministic_turns_cudnn_autotuning_off():
    cuda = torch.device("cuda")  # resolving and applying the options needs no GPU
    assert resolve_speed(TrainConfig(deterministic=False), cuda).cudnn_benchmark
    options = resolve_speed(TrainConfig(deterministic=True), cuda)
    assert not options.cudnn_benchmark
    torch.backends.cudnn.benchmark = True
    speed_up(torch.nn.Linear(2, 2), options)
    assert torch.backends.cudnn.benchmark is False


def test_deterministic_run_repeats_exactly(small_dataset, tmp_path):
    overrides = tiny_overrides(**{"train.steps": 3, "train.deterministic": "true"})
    for name in ("a", "b"):
        train(small_dataset, tmp_path / name, build_config("tiny", overrides), progress=False)
    assert torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)
    wa, wb = (load_checkpoint(RunDir(tmp_path / n).checkpoints / "last.pt")["model"] for n in ("a", "b"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


GPU_PATH_SHRINK = ["model.features=[4,8]", "model.encoder_blocks=[1,1]", "data.patch_size=[16,16,16]", "data.batch_size=2",
                   "data.num_workers=0", "inference.tile=[32,32,32]", "inference.tta=false", "train.val_every=2",
                   "train.val_volumes=1", "train.checkpoint_steps=2", "train.log_every=1"]


@pytest.mark.parametrize("preset", ["default", "kaggle_2xT4"])
@pytest.mark.parametrize("variant", [
    ["train.compile=on"],
    ["train.channels_last=on", "train.precision=bf16"],
])
def test_gpu_presets_path_runs_on_the_cpu(small_dataset, tmp_path, preset, variant):
    """The GPU presets, shrunk, with compile (inductor), channels_last_3d or bf16 autocast,
    their augmentation, validation in the background process, and a resume."""
    overrides = GPU_PATH_SHRINK + variant + ["train.val_scoring=background"]
    run = tmp_path / "run"
    first = train(small_dataset, run, build_config(preset, overrides + ["train.steps=2"]), progress=False)
    assert first.finished
    resumed = train(small_dataset, run, build_config(preset, overrides + ["train.steps=4"]), progress=False)
    assert resumed.finished and resumed.step == 4 and resumed.best_score is not None
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert sum("val/leaderboard" in r for r in records) == 2


def test_compiled_and_eager_steps_agree():
    x, y = torch.randn(2, 1, 8, 8, 8), torch.randn(2, 1, 8, 8, 8)
    fp32 = resolve_precision("fp32", torch.device("cpu"))
    losses = []
    for compiled in (False, True):
        net = _tiny_net()
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        runner = torch.compile(net) if compiled else net
        losses.append(optimizer_step(runner, opt, torch.amp.GradScaler("cuda", enabled=False), fp32, _mse, [(x, y)], 1, 0.1, 0).loss)
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


@pytest.mark.parametrize("amx, avx512_bf16, expected", [(True, False, "bf16"), (False, True, "bf16"), (False, False, "fp32")])
def test_auto_precision_on_the_cpu_is_bf16_only_where_it_is_native(monkeypatch, amx, avx512_bf16, expected):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu).name == expected
    assert resolve_precision("fp32", cpu).name == "fp32" and resolve_precision("bf16", cpu).name == "bf16"


def test_a_bf16_step_on_the_cpu_moves_the_weights_as_fp32_does():
    x, y = torch.randn(2, 1, 6, 6, 6), torch.randn(2, 1, 6, 6, 6)
    moved = {}
    for name in ("fp32", "bf16"):
        net = _tiny_net()
        before = torch.cat([p.detach().flatten() for p in net.parameters()])
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        optimizer_step(net, opt, torch.amp.GradScaler("cuda", enabled=False), resolve_precision(name, torch.device("cpu")), _mse, [(x, y)], 1, lr=0.1, grad_clip=0)
        moved[name] = torch.cat([p.detach().flatten() for p in net.parameters()]) - before
        assert all(p.dtype == torch.float32 for p in net.parameters())  # autocast keeps the master weights fp32
    assert moved["fp32"].norm() > 0
    assert torch.nn.functional.cosine_similarity(moved["fp32"], moved["bf16"], dim=0) > 0.99
