"""The benchmark's cheap paths: the loader stage on tiny volumes, the one-line notes when the
peers venv is missing, the report with skipped comparisons, and the performance doc script."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from scrollseg.data.synth import write_dataset

ROOT = Path(__file__).resolve().parents[1]


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load(ROOT / "benchmarks" / "bench.py", "scrollseg_bench")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench_data")
    write_dataset(root, n_train=2, n_test=0, size=(32, 40, 36), seed=5)
    return root


TINY = {"preset": "tiny", "overrides": ("data.patch_size=[16,16,16]",)}


def test_loader_without_peers_venv_notes_each_peer_in_one_line(bench, tiny_data, tmp_path, capsys):
    missing = tmp_path / "no-venv"
    result = bench.bench_loader(tiny_data, workers=0, batches=4, peers_venv=missing, **TINY, warmup=1, windows=2)
    assert result["loader_patches_per_s"] > 0
    for key in ("loader_speedup", "loader_vs_nnunet", "loader_vs_monai", "nnunet_loader_patches_per_s", "monai_loader_patches_per_s"):
        assert key in result and result[key] is None
    assert result["notes"] == [f"{peer}: skipped, no peers venv at {missing} (make it with scripts/peers.sh)" for peer in ("nnU-Net", "MONAI")]
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if "skipped" in line] == result["notes"]
    setup = result["loader_setup"]
    assert (setup["patch"], setup["batch"], setup["workers"], setup["batches_timed"], setup["windows"]) == ([16, 16, 16], 2, 0, 4, 2)
    assert len(result["scrollseg_loader_details"]["window_patches_per_s"]) == 2


def test_a_failing_peer_becomes_a_note(bench, tiny_data, tmp_path):
    venv = tmp_path / "broken-venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text("#!/bin/sh\necho 'ModuleNotFoundError: No module named nnunetv2' >&2\nexit 1\n")
    python.chmod(0o755)
    result = bench.bench_loader(tiny_data, workers=0, batches=2, peers_venv=venv, **TINY, warmup=1)
    assert result["notes"][0] == "nnU-Net: loader failed, exit 1: ModuleNotFoundError: No module named nnunetv2"
    assert result["loader_speedup"] is None


def test_strongest_peer_sets_loader_speedup(bench, tiny_data, tmp_path, monkeypatch):
    venv = tmp_path / "fake-venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    rates = {"nnunet_loader.py": 2.0, "monai_loader.py": 5.0}
    monkeypatch.setattr(bench, "run_side", lambda python, args: {"patches_per_s": rates[Path(args[0]).name], "patches": 4, "seconds": 1.0})
    result = bench.bench_loader(tiny_data, workers=0, batches=2, peers_venv=venv, **TINY, warmup=1)
    ours = result["loader_patches_per_s"]
    assert result["loader_vs_nnunet"] == pytest.approx(ours / 2.0)
    assert result["loader_vs_monai"] == pytest.approx(ours / 5.0)
    assert result["loader_strongest_peer"] == "MONAI" and result["loader_speedup"] == result["loader_vs_monai"]
    assert result["notes"] == []


@pytest.mark.skipif(not (ROOT / ".venv-peers" / "bin" / "python").exists(), reason="no peers venv (scripts/peers.sh)")
def test_peer_loaders_run_on_tiny_volumes(bench, tiny_data):
    result = bench.bench_loader(tiny_data, workers=0, batches=2, peers_venv=ROOT / ".venv-peers", **TINY, warmup=1)
    assert result["notes"] == []
    for peer in ("nnunet", "monai"):
        assert result[f"{peer}_loader_patches_per_s"] > 0
        assert result[f"loader_vs_{peer}"] == pytest.approx(result["loader_patches_per_s"] / result[f"{peer}_loader_patches_per_s"])
    # nnU-Net crops the patch enlarged for 30-degree rotations and a scale of 0.85: 16 (cos 30 + sin 30) / 0.85 = 25.7
    assert result["nnunet_loader_details"]["initial_patch"] == [25, 25, 25]


def test_time_batches_counts_the_whole_span_and_shows_the_windows():
    import time

    import torch

    sys.path.insert(0, str(ROOT / "benchmarks" / "peers"))
    from loader_common import time_batches

    def batches():
        for pause in (0.0, 0.04, 0.04, 0.004, 0.004):  # warm-up, a slow window, a fast window
            time.sleep(pause)
            yield torch.zeros(2, 1, 4, 4, 4), None

    result = time_batches(batches(), warmup=1, timed=4, windows=2)
    slow, fast = result["window_patches_per_s"]
    assert slow < 4 / 0.08 and fast > 3 * slow  # 4 patches in >= 80 ms, then in ~8 ms
    assert result["patches"] == 8
    assert result["patches_per_s"] == pytest.approx(8 / result["seconds"])
    assert slow < result["patches_per_s"] < fast
    assert result["cpu_s_per_patch"] < 0.5 * result["seconds"] / result["patches"]  # sleeping costs no CPU time


def sample_results(**changes) -> dict:
    """Results as run_all writes them, with the peers skipped."""
    r = {
        "device": "cpu", "cpu_count": 1, "torch": "2.13.0+cpu", "quick": True,
        "notes": ["nnU-Net: skipped, no peers venv at /x/.venv-peers (make it with scripts/peers.sh)"],
        "loader_patches_per_s": 12.5, "cache_build_s": 1.0, "loader_strongest_peer": None, "loader_speedup": None,
        "nnunet_loader_patches_per_s": None, "loader_vs_nnunet": None, "monai_loader_patches_per_s": None, "loader_vs_monai": None,
        "loader_setup": {"preset": "default", "patch": [128, 128, 128], "batch": 2, "workers": 2, "batches_timed": 8,
                         "foreground_fraction": 0.33, "volumes": [[192, 192, 192]] * 2, "device": "cpu", "augment": {"flip": True}},
        "train_preset": "tiny", "train_plain_samples_per_s": 20.0, "train_tuned_samples_per_s": 25.0, "train_step_speedup": 1.25,
        "augment_ms": 6.0, "augment_flips_ms": 0.5, "augment_share_of_step": 0.07,
        "train_tuned_options": {"precision": "fp32", "batch": 4, "compile": False, "channels_last": False},
        "inference_voxels_per_s": 4.3e5, "monai_voxels_per_s": None, "inference_speedup": None, "inference_peak_mib": 300.0,
        "monai_peak_mib": None, "inference_peak_memory_ratio": None, "inference_max_abs_difference": None,
        "blend_peak_mib_320": 145.0, "monai_blend_peak_mib_320": None, "inference_blend_peak_memory_ratio": None,
        "inference_setup": {"volume": [192, 192, 192], "tile": [64, 64, 64], "overlap": 0.5, "tile_batch": 4, "model": "tiny preset"},
        "score_compile_seconds": 9.0,
        "score_cases": {"synthetic": {"seconds": 2.0, "parts": {"topology": 1.0, "surface_dice": 0.6, "voi": 0.4}, "peak_mib": 320.0}},
        "data_wait_fraction": 0.012,
    }
    r.update(changes)
    return r


def test_report_marks_skipped_comparisons_and_prints_notes(bench):
    text = bench.format_report(sample_results())
    loader = next(line for line in text.splitlines() if line.startswith("loader"))
    assert "12.50 p/s" in loader and "n/a" in loader
    assert "note: nnU-Net: skipped, no peers venv" in text
    assert "official" not in text  # no typed-in baseline
    augment = next(line for line in text.splitlines() if line.startswith("augment"))
    assert "6.0 ms" in augment and "12.00x" in augment and "7.0% of a step" in augment


def test_performance_doc_renders_the_sections_present(tmp_path):
    results = sample_results(
        nnunet_loader_patches_per_s=2.5, loader_vs_nnunet=5.0, monai_loader_patches_per_s=6.25, loader_vs_monai=2.0,
        loader_speedup=2.0, loader_strongest_peer="MONAI", notes=[],
        nnunet_loader_details={"version": "2.8.1", "initial_patch": [205, 205, 205]}, monai_loader_details={"version": "1.6.1"},
    )
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(results))
    doc = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_performance_doc.py"), str(path)],
                         capture_output=True, text=True, check=True).stdout
    assert doc.startswith("# Performance")
    assert "| nnU-Net v2.8.1 | 2.50 |" in doc and "**5.00x**" in doc
    assert "| MONAI 1.6.1 | 6.25 |" in doc and "**2.00x**" in doc
    assert "| scrollseg | 12.50 |" in doc
    assert "25.00 samples/s" in doc and "**1.25x**" in doc
    assert "6.0 ms a batch, 12.0x mirroring only (0.5 ms): 7.0% of a training step" in doc
    assert "1.2% of step time" in doc
    assert "2.00 s" in doc and "topology 1.00 s" in doc
    # inference against MONAI was skipped: its row says so instead of inventing a ratio
    inference = next(line for line in doc.splitlines() if line.startswith("| inference |"))
    assert "skipped" in inference

    del results["score_cases"], results["score_compile_seconds"]
    path.write_text(json.dumps(results))
    partial = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_performance_doc.py"), str(path)],
                             capture_output=True, text=True, check=True).stdout
    assert "## Scoring" in doc and "## Scoring" not in partial
    assert "## Loader and augmentation" in partial
