"""What a run leaves to look at: TensorBoard events, progress.png, slice pictures,
train.log, summary.json and report.html (opened in a real headless Chromium);
``scrollseg show`` and ``scrollseg score --explain``."""
import json
import os
import re
import shutil
import subprocess
import warnings
import zipfile

import numpy as np
import pytest
from PIL import Image

import scrollseg
from scrollseg.cli import main
from scrollseg.data.io import encode_volume, read_volume, write_volume
from scrollseg.report.html import write_report
from scrollseg.report.slices import PREDICTED, SURFACE

from conftest import tiny_overrides

VALIDATION_TAGS = {"val/leaderboard", "val/topo", "val/surface_dice", "val/voi_score"}
TRAINING_TAGS = {"loss", "lr", "grad_norm", "samples_per_s", "data_wait"}


@pytest.fixture(scope="module")
def run(small_dataset, tmp_path_factory):
    """A tiny run of 6 steps validating two held-out volumes at steps 3 and 6, and its report."""
    folder = tmp_path_factory.mktemp("vis") / "run"
    overrides = tiny_overrides(**{"train.steps": 6, "train.val_every": 3, "train.log_every": 2, "data.val_fraction": 0.5})
    scrollseg.train("tiny", small_dataset, folder, devices=1, overrides=overrides, progress=False)
    write_report(folder)
    return folder


def read_png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def has_colour(rgb: np.ndarray, colour, alpha: float) -> bool:
    """Whether some pixel is ``colour`` painted with ``alpha`` over some gray level."""
    target = np.asarray(colour) * 255 * alpha
    gray = (rgb.astype(np.float64) - target) / (1 - alpha)
    spread = gray.max(axis=2) - gray.min(axis=2)
    return bool(((spread < 4) & (gray.min(axis=2) > -4) & (gray.max(axis=2) < 259)).any())


def test_tensorboard_has_the_training_and_validation_tags(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(run / "tensorboard"))
    board.Reload()
    tags = set(board.Tags()["scalars"])
    assert TRAINING_TAGS | VALIDATION_TAGS <= tags, tags
    assert [e.step for e in board.Scalars("val/leaderboard")] == [3, 6]
    assert [e.step for e in board.Scalars("grad_norm")] == [2, 4, 6]


def test_progress_plot_and_slice_pictures_show_the_data(run):
    plot = read_png(run / "progress.png")
    assert plot.shape[:2] == (700, 1100) and len(np.unique(plot.reshape(-1, 3), axis=0)) > 50
    pictures = sorted((run / "pictures").glob("step-*.png"))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val_ids = sorted(next(r for r in records if "val/cases" in r)["val/cases"])
    assert len(val_ids) == 2
    assert [p.name for p in pictures] == [f"step-{s:08d}-{vid}.png" for s in (3, 6) for vid in val_ids]
    picture = read_png(pictures[-1])
    assert picture.shape[:2] == (1010, 1230)  # four columns and three rows of 3-inch panels at 100 dpi, with margins
    assert picture.std() > 20
    assert has_colour(picture, SURFACE, 0.65), "the label's surface is drawn"
    latest = json.loads((run / "pictures" / "latest.json").read_text())
    assert latest["step"] == 6 and [v["id"] for v in latest["volumes"]] == val_ids


def test_train_log_and_summary(run, small_dataset):
    log = (run / "train.log").read_text().splitlines()
    stamp = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d "
    assert all(re.match(stamp, line) for line in log)
    assert any(re.match(stamp + r"step +2/6 loss \d", line) for line in log)
    assert sum("validation leaderboard" in line for line in log) == 2
    summary = json.loads((run / "summary.json").read_text())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    scores = {r["step"]: r["val/leaderboard"] for r in records if "val/leaderboard" in r}
    assert summary["finished"] and summary["step"] == 6
    assert summary["best_score"] == max(scores.values()) and scores[summary["best_step"]] == summary["best_score"]
    assert summary["samples_per_s"] > 0 and 0 <= summary["data_wait"] <= 1
    assert all(os.path.isfile(p) for p in summary["checkpoints"].values()) and "best.pt" in summary["checkpoints"]
    assert summary["commands"]["resume"] == f"scrollseg train {small_dataset} {run}"
    assert summary["commands"]["predict"] == f"scrollseg predict {run} {small_dataset} --out submission.zip"
    assert any(summary["commands"]["predict"] in line for line in log)


@pytest.fixture(scope="session")
def chromium():
    """Chromium from the distribution's packages, installed here when missing and possible."""
    names = ("chromium", "chromium-browser")
    found = next((shutil.which(n) for n in names if shutil.which(n)), None)
    if found is None and shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"], env=env, capture_output=True, timeout=900)
        found = next((shutil.which(n) for n in names if shutil.which(n)), None)
    if found is None:
        message = "report.html browser test skipped: no Chromium and it cannot be installed here (apt-get install chromium as root)"
        warnings.warn(message)
        pytest.skip(message)
    return found


def test_report_opens_in_a_browser_without_errors(run, chromium, tmp_path):
    page = run / "report.html"
    text = page.read_text()
    assert not re.search(r"(src|href)=[\"'](https?:)?//", text), "self-contained: no external resources"
    proc = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
                           "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    dom = proc.stdout
    # the script ran: every sortable table is marked ready, and the volumes table is sorted worst first
    assert dom.count('data-ready="1"') == 3  # validations, volumes, errors
    volumes = re.search(r'<table class="sortable" id="volumes".*?</table>', dom, re.S).group(0)
    rows = re.findall(r"<tr><td>([^<]+)</td><td data-value=\"([^\"]+)\"", volumes)
    assert len(rows) == 2 and float(rows[0][1]) <= float(rows[1][1])
    assert dom.count("data:image/png;base64,") >= 1 + 2 + 2  # curves, two slice pictures, two error maps
    assert "scrollseg predict" in dom and "features:" in dom  # the commands and the config


def test_show_draws_a_submission_member(small_dataset, tmp_path):
    vid = "1000"
    image, label = small_dataset / "train_images" / f"{vid}.tif", small_dataset / "train_labels" / f"{vid}.tif"
    pred = (read_volume(label) == 1).astype(np.uint8)
    with zipfile.ZipFile(tmp_path / "submission.zip", "w") as zf:
        zf.writestr(f"{vid}.tif", encode_volume(pred))
    main(["show", str(image), "--label", str(label), "--pred", f"{tmp_path / 'submission.zip'}:{vid}", "--out", str(tmp_path / "a.png")])
    main(["show", str(image), "--pred", str(tmp_path / "submission.zip"), "--out", str(tmp_path / "b.png")])
    full, pred_only = read_png(tmp_path / "a.png"), read_png(tmp_path / "b.png")
    assert full.shape[1] == 1230 and pred_only.shape[1] == 630  # image, label, prediction, errors / image, prediction
    assert has_colour(full, SURFACE, 0.65) and has_colour(pred_only, PREDICTED, 0.65)
    with pytest.raises(SystemExit) as exit_info:
        main(["show", str(image), "--pred", f"{tmp_path / 'submission.zip'}:9999", "--out", str(tmp_path / "c.png")])
    assert exit_info.value.code == 2


def test_score_explain_writes_maps_that_match_the_scores(small_dataset, tmp_path, capsys):
    label_dir, preds = tmp_path / "labels", tmp_path / "pred"
    label_dir.mkdir()
    for path in sorted((small_dataset / "train_labels").glob("*.tif"))[:2]:
        moved = np.roll(read_volume(path) == 1, 4, axis=2)  # a shifted copy: loses surface Dice, VOI and Betti points
        write_volume(preds / path.name, moved.astype(np.uint8))
        shutil.copy(path, label_dir / path.name)
    main(["score", str(label_dir), str(preds), "--json", str(tmp_path / "s.json"), "--explain", str(tmp_path / "why")])
    result = json.loads((tmp_path / "s.json").read_text())
    for vid, case in result["cases"].items():
        folder = tmp_path / "why" / vid
        counts = json.loads((folder / "counts.json").read_text())
        for key in ("leaderboard", "surface_dice", "voi_split", "voi_merge", "topo"):
            assert counts["scores"][key] == pytest.approx(case[key], abs=1e-9), key
        assert counts["betti"]["unmatched"] == [p + g - 2 * m for m, p, g in (case["topo_counts"][str(k)] for k in range(3))]
        surface_map = read_volume(folder / "surface_dice.tif")
        assert (surface_map != 0).any() and set(np.unique(surface_map)) <= {0, 1, 2, 3}
        assert read_png(folder / "errors.png").std() > 20
    assert "error maps" in capsys.readouterr().out
