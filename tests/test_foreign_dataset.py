"""The commands on a dataset in the competition layout made by another generator:
real Scroll 1 sheet geometry, odd non-cubic shapes, mostly unlabelled voxels, an id
without files, and a real CT crop among the test images."""
import csv
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from scrollseg.cli import main
from scrollseg.data.io import read_volume, write_volume

from conftest import tiny_overrides

DATA = Path(__file__).parent / "data"


def render(sheets: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    sheet = sheets > 0
    image = ndimage.gaussian_filter(sheet.astype(np.float32) * 150 + 30, 1.0) + rng.normal(0, 8, sheet.shape)
    face = sheet & ~np.roll(sheet, 1, axis=1)  # one face of every sheet
    label = np.where(face, 1, 0).astype(np.uint8)
    near = ndimage.distance_transform_edt(~sheet) <= 3
    label[~near] = 2  # only the surroundings of sheets are annotated
    label[sheets == sheets.max()] = 2  # one sheet was never traced
    return np.clip(image, 0, 255).astype(np.uint8), label


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    root = tmp_path_factory.mktemp("foreign")
    sheets = read_volume(DATA / "real_sheets_64.tif")
    rng = np.random.default_rng(5)
    crops = {"a7": (slice(0, 41), slice(3, 58), slice(0, 64)), "b2": (slice(5, 64), slice(0, 37), slice(9, 60)), "c9": (slice(0, 64), slice(0, 64), slice(0, 47))}
    rows = []
    for vid, sl in crops.items():
        image, label = render(sheets[sl], rng)
        write_volume(root / "train_images" / f"{vid}.tif", image)
        write_volume(root / "train_labels" / f"{vid}.tif", label)
        rows.append((vid, "s1"))
    rows.append(("missing1", "s1"))
    with open(root / "train.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("id", "scroll_id"), *rows])
    image, label = render(sheets[10:49, 20:64, 5:58], rng)
    write_volume(root / "test_images" / "t1.tif", image)
    write_volume(root / "test_labels" / "t1.tif", label)
    write_volume(root / "test_images" / "real_ct.tif", read_volume(DATA / "real_ct_crop_48.tif"))
    (root / "test.csv").write_text("id,scroll_id\nt1,s1\nreal_ct,s1\n")
    return root


def test_train_predict_score_on_a_foreign_dataset(foreign, tmp_path):
    labels = read_volume(foreign / "train_labels" / "a7.tif")
    assert (labels == 2).mean() > 0.5
    run = tmp_path / "run"
    with pytest.warns(UserWarning, match="missing1"):
        main(["train", str(foreign), str(run), "--preset", "tiny", "--steps", "8", *tiny_overrides(**{"train.val_every": 4})])
    sub = tmp_path / "submission.zip"
    main(["predict", str(run), str(foreign), "--out", str(sub)])
    with zipfile.ZipFile(sub) as zf:
        assert sorted(zf.namelist()) == ["real_ct.tif", "t1.tif"]
        assert read_volume(zf.read("real_ct.tif")).shape == (48, 48, 48)
        assert read_volume(zf.read("t1.tif")).shape == (39, 44, 53)
    main(["score", str(foreign / "test_labels"), str(sub), "--json", str(tmp_path / "s.json")])
    result = json.loads((tmp_path / "s.json").read_text())
    assert list(result["cases"]) == ["t1"]
