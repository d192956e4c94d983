"""Both Kaggle notebooks, executed in a real Jupyter kernel on synthetic data, with a
2-worker DDP training started from inside the kernel."""
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import yaml
from nbclient import NotebookClient

from scrollseg.checkpoint import load_checkpoint, resolve_checkpoint

from conftest import tiny_overrides

NOTEBOOKS = Path(__file__).parents[1] / "notebooks"


def test_the_notebooks_are_those_the_script_writes():
    import runpy

    script = runpy.run_path(str(NOTEBOOKS.parent / "scripts" / "make_notebooks.py"))
    for name, cells in (("kaggle_train.ipynb", script["TRAIN_CELLS"]), ("kaggle_submit.ipynb", script["SUBMIT_CELLS"])):
        written = nbformat.read(NOTEBOOKS / name, as_version=4)
        expected = script["notebook"](cells)
        assert [(c.id, c.cell_type, c.source) for c in written.cells] == [(c.id, c.cell_type, c.source) for c in expected.cells], \
            f"{name} is stale: run python scripts/make_notebooks.py"


def execute(name: str, cwd: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def outputs(nb) -> str:
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def test_train_then_submit_notebooks(small_dataset, tmp_path, monkeypatch):
    work = tmp_path / "working"
    work.mkdir()
    monkeypatch.setenv("SCROLLSEG_INPUT", str(small_dataset))
    monkeypatch.setenv("SCROLLSEG_WORKING", str(work))
    monkeypatch.setenv("SCROLLSEG_PRESET", "tiny")
    monkeypatch.setenv("SCROLLSEG_DEVICES", "2")
    monkeypatch.setenv("SCROLLSEG_OVERRIDES", json.dumps(tiny_overrides(**{"train.steps": 4, "train.threads": 1})))
    monkeypatch.setenv("SCROLLSEG_PREVIOUS_RUN", str(tmp_path / "none"))
    nb = execute("kaggle_train.ipynb", tmp_path)
    assert "TrainResult" in outputs(nb) and "finished=True" in outputs(nb)
    state = load_checkpoint(work / "run" / "checkpoints" / "final.pt")
    assert state["step"] == 4 and state["global_batch"] == 2 * 2  # 2 per device x 2 workers
    assert "tuned:" in outputs(nb) and not (work / "run" / "tune").exists()

    # a second session with a larger budget resumes the saved run
    monkeypatch.setenv("SCROLLSEG_OVERRIDES", json.dumps(tiny_overrides(**{"train.steps": 6, "train.threads": 1})))
    nb = execute("kaggle_train.ipynb", tmp_path)
    assert "resuming" in outputs(nb)
    assert load_checkpoint(work / "run" / "checkpoints" / "final.pt")["step"] == 6

    # tuned for the checkpoint predict reads (tuned again only when that changed), and the export carries it
    tuned = yaml.safe_load((work / "run" / "tuned.yaml").read_text())
    assert tuned["step"] == load_checkpoint(resolve_checkpoint(work / "run"))["step"]
    assert load_checkpoint(work / "model.pt")["tuned"] == tuned["inference"]  # the fp16 export the submission notebook reads
    monkeypatch.setenv("SCROLLSEG_CHECKPOINT", str(work / "model.pt"))
    nb = execute("kaggle_submit.ipynb", tmp_path)
    assert (work / "submission.zip").is_file()
    # the notebook's printed mean equals `scrollseg score` of the same zip, run separately
    printed = [line.split() for line in outputs(nb).splitlines() if line.split()[:1] == ["mean"]]
    assert len(printed) == 1, outputs(nb)
    scored = subprocess.run([sys.executable, "-m", "scrollseg", "score", str(small_dataset / "test_labels"), str(work / "submission.zip")],
                            capture_output=True, text=True, check=True).stdout
    mean_line = [line.split() for line in scored.splitlines() if line.split()[:1] == ["mean"]][0]
    assert float(printed[0][1]) == float(mean_line[1]) and 0.0 < float(mean_line[1]) <= 1.0
