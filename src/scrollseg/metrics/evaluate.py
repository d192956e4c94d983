"""Score predictions (a folder or a submission.zip) against a folder of label volumes.

A zip is read member by member in memory and never extracted, so member paths
cannot escape; only ``<id>.tif`` names at its top level count, and the total
uncompressed size is capped against zip bombs. Volumes are scored in parallel
processes when ``workers`` > 1.
"""
from __future__ import annotations

import csv
import json
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np

from ..data.io import DEFAULT_MAX_VOXELS, read_volume
from ..errors import DataError
from ..progress import Progress
from .leaderboard import score_volume

MAX_ZIP_BYTES = 64 * 1024**3
MEAN_KEYS = ("leaderboard", "topo", "surface_dice", "voi_score")


class PredictionSource:
    """Prediction volumes by id, from a folder of .tif files or a submission zip."""

    def __init__(self, path: Path | str, max_bytes: int = MAX_ZIP_BYTES):
        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"{self.path}: prediction not found; give a folder of <id>.tif or a submission.zip")
        self.is_zip = self.path.is_file()
        if self.is_zip:
            try:
                with zipfile.ZipFile(self.path) as zf:
                    infos = zf.infolist()
            except (zipfile.BadZipFile, OSError) as exc:
                raise DataError(f"{self.path}: not a readable zip ({exc}); rebuild the submission") from exc
            total = sum(i.file_size for i in infos)
            if total > max_bytes:
                raise DataError(f"{self.path}: members uncompress to {total} bytes, over the {max_bytes}-byte limit; refusing a possible zip bomb")
            self.members: dict[str, str] = {}
            for info in infos:
                name = PurePosixPath(info.filename.replace("\\", "/"))
                if info.is_dir():
                    continue
                if len(name.parts) != 1 or name.name in ("..", ".") or not name.name.endswith(".tif"):
                    raise DataError(f"{self.path}: member {info.filename!r} is not a top-level <id>.tif; refusing the zip")
                self.members[name.name[:-4]] = info.filename
        else:
            self.members = {p.stem: str(p) for p in sorted(self.path.glob("*.tif"))}

    def ids(self) -> list[str]:
        return sorted(self.members)

    def read(self, vid: str, max_voxels: int = DEFAULT_MAX_VOXELS) -> np.ndarray:
        if not self.is_zip:
            return read_volume(self.members[vid], max_voxels)
        with zipfile.ZipFile(self.path) as zf:
            info = zf.getinfo(self.members[vid])
            with zf.open(info) as fh:
                data = fh.read(info.file_size + 1)
        if len(data) != info.file_size:
            raise DataError(f"{self.path}: member {info.filename} does not match its declared size; refusing it")
        return read_volume(data, max_voxels, name=f"{self.path}:{info.filename}")


def _score_one(args) -> tuple[str, dict]:
    vid, label_path, pred_path, explain = args
    label = read_volume(label_path)
    pred = PredictionSource(pred_path).read(vid)
    if pred.shape != label.shape:
        raise DataError(f"{vid}.tif: prediction shape {pred.shape} differs from the label {label.shape}")
    if explain is not None:
        explain(vid, label, pred)
    return vid, score_volume(label, pred).as_dict()


def score_predictions(labels: Path | str, pred: Path | str, workers: int = 1, explain: Callable | None = None, progress: bool = False) -> dict:
    """``{"cases": {id: {...}}, "mean": {...}}`` over the ids present in ``labels``.

    ``explain(id, label, pred)``, when given, is also called for each volume (in the
    scoring process; it must pickle when ``workers`` > 1).
    """
    labels = Path(labels)
    if not labels.is_dir():
        raise DataError(f"{labels}: label folder not found; give the folder of <id>.tif labels")
    label_files = {p.stem: p for p in sorted(labels.glob("*.tif"))}
    if not label_files:
        raise DataError(f"{labels}: holds no .tif labels")
    source = PredictionSource(pred)
    missing = sorted(set(label_files) - set(source.ids()))
    if missing:
        raise DataError(f"{pred}: no prediction for {len(missing)} labelled id(s) (first: {missing[0]}.tif)")
    jobs = [(vid, str(path), str(source.path), explain) for vid, path in label_files.items()]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(Progress(pool.map(_score_one, jobs), total=len(jobs), desc="score", unit="vol", enabled=progress))
    else:
        results = list(Progress(map(_score_one, jobs), total=len(jobs), desc="score", unit="vol", enabled=progress))
    cases = dict(results)
    mean = {k: float(np.mean([c[k] for c in cases.values()])) for k in MEAN_KEYS}
    return {"cases": cases, "mean": mean}


def format_table(result: dict) -> str:
    head = f"{'id':>12} {'leaderboard':>11} {'topo':>6} {'F1_0':>6} {'F1_1':>6} {'F1_2':>6} {'sdice':>6} {'voi':>6} {'split':>6} {'merge':>6}"
    lines = [head]
    fmt = lambda v: "  -   " if v is None else f"{v:6.3f}"  # noqa: E731
    for vid, c in result["cases"].items():
        f1 = c["topo_f1"]
        lines.append(
            f"{vid:>12} {c['leaderboard']:11.4f} {c['topo']:6.3f} {fmt(f1['0'])} {fmt(f1['1'])} {fmt(f1['2'])} "
            f"{c['surface_dice']:6.3f} {c['voi_score']:6.3f} {c['voi_split']:6.3f} {c['voi_merge']:6.3f}"
        )
    m = result["mean"]
    lines.append(f"{'mean':>12} {m['leaderboard']:11.4f} {m['topo']:6.3f} {'':20} {m['surface_dice']:6.3f} {m['voi_score']:6.3f}")
    return "\n".join(lines)


def write_reports(result: dict, json_path: Path | str | None = None, csv_path: Path | str | None = None) -> None:
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2))
    if csv_path:
        with open(csv_path, "w", newline="") as fh:
            writer = csv.writer(fh)
            cols = ["leaderboard", "topo", "surface_dice", "voi_score", "voi_total", "voi_split", "voi_merge"]
            writer.writerow(["id"] + cols)
            for vid, c in result["cases"].items():
                writer.writerow([vid] + [c[k] for k in cols])
            writer.writerow(["mean"] + [result["mean"].get(k, "") for k in cols])
