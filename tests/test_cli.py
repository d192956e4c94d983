import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from scrollseg.cli import main
from scrollseg.data.io import read_volume

from conftest import tiny_overrides


def run_cli(*args):
    proc = subprocess.run([sys.executable, "-m", "scrollseg", *map(str, args)], capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def test_synth_train_predict_score(tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    main(["synth", str(data), "--train", "3", "--test", "2", "--size", "40", "48", "36", "--seed", "1"])
    main(["train", str(data), str(run), "--preset", "tiny", "--steps", "6", *tiny_overrides()])
    assert (run / "checkpoints" / "final.pt").is_file()
    sub = tmp_path / "submission.zip"
    main(["predict", str(run), str(data), "--out", str(sub), "--ids", str(data / "test.csv")])
    with zipfile.ZipFile(sub) as zf:
        assert sorted(zf.namelist()) == ["9000.tif", "9001.tif"]
        mask = read_volume(zf.read("9000.tif"))
    assert mask.shape == (40, 48, 36) and set(np.unique(mask)) <= {0, 1}
    main(["score", str(data / "test_labels"), str(sub), "--json", str(tmp_path / "s.json"), "--csv", str(tmp_path / "s.csv")])
    result = json.loads((tmp_path / "s.json").read_text())
    assert set(result["cases"]) == {"9000", "9001"}
    case = result["cases"]["9000"]
    assert {"leaderboard", "topo", "surface_dice", "voi_score", "voi_total", "topo_counts"} <= set(case)
    assert 0.0 <= result["mean"]["leaderboard"] <= 1.0
    assert (tmp_path / "s.csv").read_text().startswith("id,leaderboard")


@pytest.mark.parametrize(
    "args,needle",
    [
        (["train", "{tmp}/nope", "{tmp}/run", "--preset", "tiny"], "dataset folder not found"),
        (["score", "{tmp}/nope", "{tmp}/x.zip"], "label folder not found"),
        (["predict", "{tmp}/norun", "{tmp}", "--out", "{tmp}/s.zip"], "no checkpoint found"),
        (["train", "{tmp}", "{tmp}/run", "--preset", "tiny", "optim.bogus=1"], "unknown config key"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(tmp_path, args, needle):
    code, out, err = run_cli(*[a.format(tmp=tmp_path) for a in args])
    assert code == 2
    assert needle in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
