import io
import shutil

import numpy as np
import pytest
import torch

from scrollseg.cli import main
from scrollseg.data.io import read_volume, write_volume
from scrollseg.doctor import check_dataset, recommend, Hardware, report


def test_doctor_on_this_machine_and_a_sound_dataset(small_dataset, tmp_path):
    out = io.StringIO()
    assert report(small_dataset, tmp_path, out) == 0
    text = out.getvalue()
    for needle in ("versions", "torch ", "numba ", "imagecodecs ", "cuDNN", "usable CPU cores", "GiB RAM", "free disk at",
                   "LZW encode/decode works", "recommended here", "scrollseg train DATA RUN --preset", "looks sound"):
        assert needle in text, needle
    if not torch.cuda.is_available():
        assert "no CUDA GPU visible" in text and "--preset tiny" in text
    assert "train.csv lists 4 id(s); 4 with image and label" in text
    assert "train shapes: 1 distinct, from (48, 56, 64) to (48, 56, 64); compression LZW" in text
    assert "FAIL" not in text


def test_a_broken_dataset_fails_with_each_problem_named(small_dataset, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(small_dataset, data)
    ids = [line.split(",")[0] for line in (data / "train.csv").read_text().splitlines()[1:]]
    with open(data / "train.csv", "a") as fh:
        fh.write("4242,1\n")  # listed, no files
    label = read_volume(data / "train_labels" / f"{ids[0]}.tif")
    label[0, 0, 0] = 7
    write_volume(data / "train_labels" / f"{ids[0]}.tif", label)
    image = data / "train_images" / f"{ids[1]}.tif"
    image.write_bytes(image.read_bytes()[:64])  # truncated
    write_volume(data / "train_labels" / f"{ids[2]}.tif", np.zeros((8, 8, 8), np.uint8))  # another shape than its image
    findings, _ = check_dataset(data, samples=4)
    lines = "\n".join(f"{level} {text}" for level, text in findings.lines)
    assert findings.failed
    assert "warn 1 id(s) without their files (skipped by training): 4242" in lines
    assert f"{ids[1]}: unreadable TIFF header" in lines
    assert f"{ids[2]}: label shape (8, 8, 8) differs from the image (48, 56, 64)" in lines
    assert f"FAIL label {ids[0]}: values [7] outside {{0, 1, 2}}" in lines
    with pytest.raises(SystemExit) as exit_info:
        main(["doctor", str(data), "--run", str(tmp_path)])
    assert exit_info.value.code == 1 and "problems found" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["doctor", str(tmp_path / "nowhere")])
    assert exit_info.value.code == 1


def test_recommendations_follow_the_hardware():
    cpu = recommend(Hardware([], 2, 8.0, 6.0))
    assert (cpu["preset"], cpu["devices"], cpu["num_workers"]) == ("tiny", 1, 1)
    t4s = recommend(Hardware([("Tesla T4", 14.7, (7, 5))] * 2, 4, 31.0, 28.0))
    assert (t4s["preset"], t4s["batch_size"], t4s["devices"], t4s["num_workers"]) == ("kaggle_2xT4", 2, 2, 1)
    h100 = recommend(Hardware([("H100", 79.0, (9, 0))], 16, 200.0, 190.0))
    assert (h100["preset"], h100["batch_size"], h100["num_workers"]) == ("default", 4, 8)
    small = recommend(Hardware([("RTX 3060", 11.7, (8, 6))], 8, 32.0, 30.0))
    assert (small["batch_size"], small["accumulation"]) == (1, 2)
