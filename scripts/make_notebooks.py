"""Write notebooks/kaggle_train.ipynb and notebooks/kaggle_submit.ipynb from the cells below.

Paths follow Kaggle's conventions (/kaggle/input, /kaggle/working); environment
variables override them, which is how the test suite runs both notebooks on synthetic data.
"""
from pathlib import Path

import nbformat

INSTALL = '''# Install scrollseg offline from the wheelhouse dataset (built with `scrollseg wheelhouse OUT`).
import importlib.util, os, subprocess, sys
WHEELS = os.environ.get("SCROLLSEG_WHEELS", "/kaggle/input/scrollseg-wheels")
if importlib.util.find_spec("scrollseg") is None:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--no-index", "--find-links", WHEELS, "scrollseg"])
import scrollseg
print("scrollseg", scrollseg.__version__)'''

PATHS = '''import json, os, shutil
from pathlib import Path
INPUT = Path(os.environ.get("SCROLLSEG_INPUT", "/kaggle/input/vesuvius-challenge-surface-detection"))
WORK = Path(os.environ.get("SCROLLSEG_WORKING", "/kaggle/working"))
RUN = WORK / "run"
PRESET = os.environ.get("SCROLLSEG_PRESET", "kaggle_2xT4")
OVERRIDES = json.loads(os.environ.get("SCROLLSEG_OVERRIDES", "[]"))
DEVICES = os.environ.get("SCROLLSEG_DEVICES", "auto")  # auto: both T4s
print(INPUT, RUN, PRESET, DEVICES)'''

TRAIN_CELLS = [
    "# scrollseg on Kaggle: train on both GPUs, resume across 12-hour sessions\n"
    "Attach the competition data, the `scrollseg-wheels` dataset and, from the second session on, the previous "
    "session's output as `scrollseg-run`. Run all cells; the run checkpoints before the session's limit and the "
    "same notebook continues it next time. docs/kaggle.md has the whole procedure.",
    INSTALL,
    PATHS,
    '''# Resume: bring the previous session's run folder into /kaggle/working (read-only inputs cannot be written).
# last.pt names the same file as the newest step file; the next checkpoint recreates it.
PREVIOUS = Path(os.environ.get("SCROLLSEG_PREVIOUS_RUN", "/kaggle/input/scrollseg-run/run"))
if PREVIOUS.is_dir() and not RUN.exists():
    shutil.copytree(PREVIOUS, RUN, ignore=shutil.ignore_patterns("cache", "tune", "last.pt"))
print("resuming" if (RUN / "checkpoints").is_dir() else "starting", RUN)''',
    '''# DDP on every GPU, started by fork from this kernel. The data path (decoded cache, compressed cache or none)
# is chosen by the free disk and printed; the preset stops 11h45m after this kernel started, with a checkpoint.
result = scrollseg.train(PRESET, INPUT, RUN, devices=DEVICES, strategy="ddp", overrides=OVERRIDES)
print(result)''',
    '''# fp16 weights and config for the submission notebook; on Kaggle the cache is under /tmp, elsewhere drop RUN/cache.
from scrollseg.export import export_weights
shutil.rmtree(RUN / "cache", ignore_errors=True)
model = export_weights(RUN, WORK / "model.pt", say=print)
print(model, round(model.stat().st_size / 2**20, 1), "MiB;", sorted(p.name for p in (RUN / "checkpoints").iterdir()))''',
    '''# Once training has finished: threshold and post-processing chosen by the exact metric on up to TUNE_VOLUMES
# held-out volumes, then model.pt again with them. Only when the session has TUNE_HOURS left (docs/kaggle.md);
# otherwise model.pt stays untuned and the next session, with training done, goes straight here.
import time
from scrollseg.checkpoint import load_checkpoint, resolve_checkpoint
from scrollseg.engine.deadline import session_start
from scrollseg.inference.tune import tuned_settings
TUNE_VOLUMES = int(os.environ.get("SCROLLSEG_TUNE_VOLUMES", "32"))
TUNE_HOURS = float(os.environ.get("SCROLLSEG_TUNE_HOURS", "3"))
checkpoint = resolve_checkpoint(RUN)
already_tuned, note = tuned_settings(checkpoint, load_checkpoint(checkpoint))
hours_left = 12 - (time.time() - session_start()) / 3600
if not result.finished:
    print("not tuning: training is not finished")
elif already_tuned:
    print("already tuned:", note)
elif hours_left < TUNE_HOURS:
    print(f"not tuning: {hours_left:.1f} h left in this session, {TUNE_HOURS} h wanted; run the notebook again")
else:
    tuned = scrollseg.tune(RUN, INPUT, max_volumes=TUNE_VOLUMES)
    shutil.rmtree(RUN / "tune", ignore_errors=True)  # cached probabilities, GBs the saved output need not keep
    print("tuned:", tuned["best"].settings, "leaderboard", round(tuned["best"].scores["leaderboard"], 4))
    model = export_weights(RUN, WORK / "model.pt", say=print)''',
]

SUBMIT_CELLS = [
    "# scrollseg on Kaggle: predict the test set into submission.zip\n"
    "Attach the competition data, the `scrollseg-wheels` dataset and a trained run's output as `scrollseg-run`. "
    "No internet is needed. The prediction finishes 8h30m after the kernel started, lowering the flip TTA if it must.",
    INSTALL,
    PATHS,
    '''import scrollseg
CHECKPOINT = Path(os.environ.get("SCROLLSEG_CHECKPOINT", "/kaggle/input/scrollseg-run/model.pt"))
submission = scrollseg.predict(CHECKPOINT, INPUT / "test_images", WORK / "submission.zip", INPUT / "test.csv", devices=DEVICES,
                               time_limit="8h30m")
print(submission, submission.stat().st_size, "bytes")''',
    '''# Local score, where test labels exist (they do not on Kaggle's hidden test set).
if (INPUT / "test_labels").is_dir():
    from scrollseg.metrics.evaluate import format_table, score_predictions
    print(format_table(score_predictions(INPUT / "test_labels", submission)))''',
]


def notebook(cells: list[str]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell(cells[0])] + [nbformat.v4.new_code_cell(c) for c in cells[1:]]
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i}"  # fixed, so a regenerated notebook differs only where its cells do
    return nb


if __name__ == "__main__":
    out = Path(__file__).parents[1] / "notebooks"
    nbformat.write(notebook(TRAIN_CELLS), out / "kaggle_train.ipynb")
    nbformat.write(notebook(SUBMIT_CELLS), out / "kaggle_submit.ipynb")
