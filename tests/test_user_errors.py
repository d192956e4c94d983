"""Every mistake a new user makes: one line naming the thing and what to do, the exact
exit code, no traceback, and nothing written or lost. Run through the command line."""
import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import zipfile

import pytest
import torch

import scrollseg.api
from scrollseg.checkpoint import RunLock
from scrollseg.cli import main, make_parser
from scrollseg.data.synth import write_dataset
from scrollseg.errors import ScrollsegError

from conftest import tiny_overrides

TINY = ["--preset", "tiny", *tiny_overrides()]


def cli(capsys, *args) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``scrollseg ARGS`` run in this process."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def one_error(err: str) -> str:
    """The single error line of a failed command (and no traceback)."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def popen(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "scrollseg", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def trained_run(small_dataset, tmp_path_factory):
    """A finished 4-step tiny run with one validation (so best.pt has a score)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    main(["train", str(small_dataset), str(run), *TINY, "--steps", "4", "train.val_every=4"])
    return run


# ---- two processes, one run

def test_second_train_on_a_busy_run_exits_2_and_the_first_finishes_cleanly(small_dataset, tmp_path):
    run = tmp_path / "run"
    args = ["train", small_dataset, run, *TINY, "--steps", "100000", "--minutes", "0.15", "--checkpoint-steps", "50"]
    first = popen(*args)
    deadline = time.time() + 120
    while not ((run / "train.lock").is_file() and (run / "train.lock").read_text().strip()) and time.time() < deadline:
        time.sleep(0.05)
    assert (run / "train.lock").read_text().strip() == str(first.pid)
    second = subprocess.run([sys.executable, "-m", "scrollseg", *map(str, args)], capture_output=True, text=True, timeout=120)
    assert first.poll() is None, "the first run ended before the second tried"
    assert second.returncode == 2
    assert one_error(second.stderr) == (
        f"error: {run}: this run is being trained by another process (PID {first.pid}); wait for it to end, "
        f"stop it with `kill {first.pid}` (it checkpoints first), or give another RUN folder")
    assert first.wait(timeout=120) == 0, first.stderr.read()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["event"] for r in records if "event" in r].count("start") == 1
    logged = [r["step"] for r in records if "loss" in r]
    assert len(logged) >= 2 and logged == sorted(set(logged)), logged  # each step once, in order
    assert {"final.pt", "last.pt"} <= {p.name for p in (run / "checkpoints").iterdir()}


def test_a_held_run_refuses_train_but_not_predict(small_dataset, trained_run, tmp_path, capsys):
    with RunLock(trained_run):
        code, _, err = cli(capsys, "train", small_dataset, trained_run, *TINY, "--steps", "8")
        assert code == 2 and f"another process (PID {os.getpid()})" in one_error(err)
        sub = tmp_path / "sub.zip"
        code, out, _ = cli(capsys, "predict", trained_run, small_dataset, "--out", sub)
        assert code == 0 and out == f"wrote {sub}\n"


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from scrollseg.checkpoint import RunLock; "
                               "RunLock(sys.argv[1]).__enter__(); print('held', flush=True); time.sleep(120)", str(run)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(ScrollsegError, match=f"PID {holder.pid}"):
            RunLock(run).__enter__()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    with RunLock(run):  # the kernel released it with the process
        assert (run / "train.lock").read_text() == f"{os.getpid()}\n"


# ---- values checked before anything is written

@pytest.mark.parametrize("flags,message", [
    (["--steps", "0"], "train.steps=0 needs a time budget: give --minutes M (or train.minutes)"),
    (["--steps", "-5"], "train.steps must be positive (or 0 with train.minutes: as many as fit)"),
    (["--minutes", "-1"], "train.minutes (--minutes) must be positive, or 0 for no bound; got -1"),
    (["--time-limit", "1x"], "train.time_limit (--time-limit): cannot read duration '1x'; write it like 11h45m, 90m or 30s"),
    (["data.batch_size=0"], "data.batch_size must be at least 1"),
    (["inference.hysteresis_low=0.7"], "inference.hysteresis_low must be 0 (off) or lie in (0, threshold=0.5), got 0.7"),
    (["inference.threshold=1"], "inference.threshold (--threshold) must lie in (0, 1), got 1"),
    (["data.ignore_verso_background=true", "inference.recto_context=0"],
     "data.ignore_verso_background needs inference.recto_context > 0: it ignores only what the recto step drops"),
])
def test_bad_training_values_exit_2_before_anything_is_written(small_dataset, tmp_path, capsys, flags, message):
    run = tmp_path / "run"
    code, _, err = cli(capsys, "train", small_dataset, run, *TINY, *flags)
    assert code == 2 and one_error(err) == f"error: {message}"
    assert not run.exists()


def test_a_patch_too_small_for_the_network_names_the_smallest(small_dataset, tmp_path, capsys):
    code, _, err = cli(capsys, "train", small_dataset, tmp_path / "run", "--preset", "default", "data.patch_size=[32,32,32]")
    assert code == 2
    assert one_error(err) == ("error: data.patch_size [32, 32, 32]: the 6-stage network needs three sizes divisible by 32 "
                              "and at least 64; the smallest valid is [64,64,64]")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("threshold", ["1.5", "-1", "0"])
def test_predict_threshold_outside_0_1_writes_nothing(trained_run, small_dataset, tmp_path, capsys, threshold):
    out = tmp_path / "sub.zip"
    code, _, err = cli(capsys, "predict", trained_run, small_dataset, "--out", out, "--threshold", threshold)
    assert code == 2
    assert one_error(err) == f"error: inference.threshold (--threshold) must lie in (0, 1), got {float(threshold):g}"
    assert list(tmp_path.iterdir()) == []


def test_several_cpu_processes_need_an_explicit_strategy(small_dataset, tmp_path, capsys, monkeypatch):
    started = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(scrollseg.api, "run_processes", lambda fn, args, n: started.append(n))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    code, _, err = cli(capsys, "train", small_dataset, tmp_path / "run", *TINY, "--devices", "4")
    assert code == 2 and one_error(err) == ("error: --devices 4: no GPU is visible, so this would train on 4 CPU processes; "
                                            "add --strategy ddp to do that on purpose, or leave out --devices")
    assert started == [] and not (tmp_path / "run").exists()
    with pytest.warns(UserWarning) as warned:
        code, _, err = cli(capsys, "train", small_dataset, tmp_path / "run", *TINY, "--devices", "4", "--strategy", "ddp")
    assert code == 0 and started == [4]
    assert [str(w.message) for w in warned] == [
        "training on 4 CPU processes (2 cores, more processes than cores, so each step is slower than in one process): "
        "the global batch is 4 x 2 x 1 = 8 samples and optim.lr stays 0.003; set optim.lr (or data.batch_size) "
        "if it was tuned for one process"]


# ---- existing data is never overwritten

def test_synth_refuses_a_folder_with_files_and_force_replaces_a_dataset(tmp_path, capsys):
    data = tmp_path / "data"
    write_dataset(data, n_train=4, n_test=1, size=(16, 16, 16), seed=0)
    before = (data / "train.csv").read_text()
    code, _, err = cli(capsys, "synth", data, "--train", "2", "--test", "1", "--size", "16", "16", "16")
    assert code == 2 and one_error(err) == (f"error: {data}: already holds test.csv, test_images, test_labels, train.csv ...; "
                                            f"give a new folder, or add --force to replace it")
    assert (data / "train.csv").read_text() == before
    code, out, _ = cli(capsys, "synth", data, "--train", "2", "--test", "1", "--size", "16", "16", "16", "--force")
    assert code == 0
    assert (data / "train.csv").read_text().splitlines() == ["id,scroll_id", "1000,synth0", "1001,synth1"]
    assert sorted(p.name for p in (data / "train_images").iterdir()) == ["1000.tif", "1001.tif"]  # 1002, 1003 are gone

    other = tmp_path / "project"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    code, _, err = cli(capsys, "synth", other, "--force")
    assert code == 2 and "notes.txt, which no dataset holds" in one_error(err)
    assert (other / "notes.txt").read_text() == "mine"


# ---- errors that say what is really wrong

def test_a_file_that_is_not_a_checkpoint(small_dataset, tmp_path, capsys):
    for name, content in (("notes.pt", b"id,scroll_id\n1,a\n"), ("submission.pt", None)):
        path = tmp_path / name
        if content is None:
            with zipfile.ZipFile(path, "w") as zf:
                zf.writestr("9000.tif", b"x")
        else:
            path.write_bytes(content)
        code, _, err = cli(capsys, "predict", path, small_dataset, "--out", tmp_path / "s.zip")
        assert code == 2 and one_error(err) == (f"error: {path}: not a scrollseg checkpoint (not a file written by torch.save); "
                                                f"give a .pt file from RUN/checkpoints")


def test_a_missing_checkpoint_file_is_named_as_given(trained_run, small_dataset, tmp_path, capsys):
    path = trained_run / "checkpoints" / "nothere.pt"
    code, _, err = cli(capsys, "predict", path, small_dataset, "--out", tmp_path / "s.zip")
    assert code == 2
    assert one_error(err) == (f"error: {path}: checkpoint not found ({path.parent} holds best.pt, final.pt, last.pt, step-00000004.pt); "
                              f"give an existing .pt file or the run folder")


def test_a_zip_given_as_data_says_unzip_it_first(small_dataset, tmp_path, capsys):
    archive = tmp_path / "comp.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(small_dataset / "train.csv", "train.csv")
    code, _, err = cli(capsys, "train", archive, tmp_path / "run", *TINY)
    assert code == 2
    assert one_error(err) == f"error: {archive}: a zip archive, not a folder; unzip it first (unzip -q {archive} -d {tmp_path / 'comp'}) and give {tmp_path / 'comp'}"
    assert not (tmp_path / "run").exists()


def test_score_given_the_dataset_root_uses_its_test_labels(small_dataset, capsys):
    code, out, err = cli(capsys, "score", small_dataset, small_dataset / "test_labels")
    assert code == 0
    assert err.splitlines()[0] == f"scoring against {small_dataset / 'test_labels'} (the labels of the dataset root {small_dataset})"
    assert [line.split()[:2] for line in out.splitlines()[1:4]] == [["9000", "1.0000"], ["9001", "1.0000"], ["mean", "1.0000"]]


def test_a_finished_run_says_so_and_exits_0(small_dataset, trained_run, capsys):
    log = (trained_run / "metrics.jsonl").read_text()
    code, _, err = cli(capsys, "train", small_dataset, trained_run, *TINY, "--steps", "4", "train.val_every=4")
    assert code == 0
    assert err.splitlines() == [f"{trained_run}: already finished at step 4; use --steps M with M > 4 to train further"]
    assert (trained_run / "metrics.jsonl").read_text() == log


def test_an_interrupted_run_prints_the_full_command_that_resumes_it(small_dataset, tmp_path, capsys):
    args = ["train", str(small_dataset), str(tmp_path / "run"), *TINY, "--steps", "100000", "--time-limit", "1s", "optim.lr=1e-3"]
    code, _, err = cli(capsys, *args)
    assert code == 3
    assert err.splitlines()[-1] == f"Resume with the same command: {shlex.join(['scrollseg', *args])}"
    assert "'data.patch_size=[16,16,16]'" in err.splitlines()[-1]


def test_the_dataloader_worker_warning_comes_once(small_dataset, tmp_path):
    workers = len(os.sched_getaffinity(0)) + 1  # more than torch suggests for this machine
    proc = popen("train", small_dataset, tmp_path / "run", *TINY, "--steps", "2", f"data.num_workers={workers}")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert sum("This DataLoader will create" in line for line in err.splitlines()) == 1


# ---- help, names and what predict and score print

def test_every_option_has_help_and_shows_its_default():
    parser = make_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(commands) == {"synth", "train", "tune", "predict", "score", "show", "report", "doctor", "wheelhouse", "bench", "demo", "export", "plan"}
    for name, sub in commands.items():
        text = " ".join(sub.format_help().split())
        for action in sub._actions:
            if action.help == argparse.SUPPRESS:
                assert action.dest.startswith("old_"), (name, action.dest)  # only the renamed options are hidden
                continue
            assert action.help, (name, action.dest)
            if not action.option_strings or action.default is argparse.SUPPRESS or action.default is False:
                continue  # positionals, -h, on/off flags
            if action.default is None or action.default == []:
                if action.dest not in ("allow_change", "json", "csv", "explain", "data"):  # these add something only when given
                    assert "(default:" in action.help, (name, action.dest)  # no value: the help says what applies
            else:
                assert f"(default: {action.default})" in text, (name, action.dest)


def test_predict_names_its_checkpoint_and_takes_ids_and_a_device(trained_run, small_dataset, tmp_path, capsys):
    out = tmp_path / "sub.zip"
    code, _, err = cli(capsys, "predict", trained_run, small_dataset, "--out", out, "--ids", small_dataset / "test.csv", "--devices", "cpu")
    assert code == 0
    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    (score,) = [r for r in records if "val/leaderboard" in r and r["step"] == 4]
    assert err.splitlines()[0] == (f"checkpoint {trained_run / 'checkpoints' / 'best.pt'} "
                                   f"(step 4, validation leaderboard {score['val/leaderboard']:.4f})")
    with zipfile.ZipFile(out) as zf:
        assert sorted(zf.namelist()) == ["9000.tif", "9001.tif"]

    one_id = tmp_path / "one.csv"
    one_id.write_text("id,scroll_id\n9001,s\n")
    with pytest.warns(FutureWarning) as warned:
        code, _, err = cli(capsys, "predict", trained_run, small_dataset, "--out", out, "--csv", one_id, "--device", "cpu")
    assert code == 0
    with zipfile.ZipFile(out) as zf:
        assert zf.namelist() == ["9001.tif"]
    assert [str(w.message) for w in warned] == ["predict --csv is now called --ids; the old name will be removed",
                                                "predict --device is now called --devices; the old name will be removed"]

    code, _, err = cli(capsys, "predict", trained_run, small_dataset, "--out", out, "--devices", "gpu")
    assert code == 2 and one_error(err) == "error: --devices 'gpu': give a number of processes, 'auto', or a device such as cpu or cuda:1"


def test_score_prints_a_legend_under_its_table(small_dataset, capsys):
    code, out, _ = cli(capsys, "score", small_dataset / "test_labels", small_dataset / "test_labels")
    assert code == 0
    lines = out.splitlines()
    assert lines[3].split()[:2] == ["mean", "1.0000"]  # labels scored against themselves
    legend = "\n".join(lines[4:])
    for column in ("leaderboard", "topo", "F1_0", "sdice", "voi", "split", "merge", '"-"'):
        assert column in legend


def test_score_needs_at_least_one_worker(small_dataset, capsys):
    code, out, err = cli(capsys, "score", small_dataset / "test_labels", small_dataset / "test_labels", "--workers", "0")
    assert code == 2 and out == "" and one_error(err) == "error: --workers 0: give at least 1 process"


def test_tune_needs_at_least_one_volume(trained_run, capsys):
    code, out, err = cli(capsys, "tune", trained_run, "--volumes", "0")
    assert code == 2 and one_error(err) == "error: --volumes 0: tune on at least 1 volume"
    assert not (trained_run / "tuned.yaml").exists()
