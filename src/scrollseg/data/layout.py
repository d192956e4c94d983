"""The competition's folder layout: train.csv / test.csv, train_images, train_labels, test_images."""
from __future__ import annotations

import csv
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError


@dataclass(frozen=True)
class VolumeRef:
    id: str
    scroll_id: str
    image: Path
    label: Path | None


def read_ids(csv_path: Path) -> list[tuple[str, str]]:
    """(id, scroll_id) rows of a train.csv / test.csv."""
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: CSV not found; a dataset needs train.csv/test.csv with columns id,scroll_id")
    try:
        with open(csv_path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or "id" not in reader.fieldnames:
                raise DataError(f"{csv_path}: no 'id' column; the header must be id,scroll_id")
            rows = [(str(r["id"]).strip(), str(r.get("scroll_id") or "").strip()) for r in reader]
    except UnicodeDecodeError as exc:
        raise DataError(f"{csv_path}: not a text CSV; replace the file") from exc
    return [r for r in rows if r[0]]


def _find_csv(root: Path, split: str) -> Path | None:
    path = root / f"{split}.csv"
    return path if path.is_file() else None


def refuse_archive(path: Path) -> None:
    """A zip given where a folder belongs: say how to unpack it."""
    if path.is_file() and zipfile.is_zipfile(path):
        folder = path.with_suffix("")
        raise DataError(f"{path}: a zip archive, not a folder; unzip it first (unzip -q {path} -d {folder}) and give {folder}")


def dataset_root(root: str | Path) -> Path:
    """``root`` when it is a folder; otherwise an error that says what it is and what to give."""
    root = Path(root)
    if root.is_dir():
        return root
    refuse_archive(root)
    if root.exists():
        raise DataError(f"{root}: a file, not a dataset folder; give the folder that holds train.csv and train_images/")
    if root.suffix == ".zip":
        raise DataError(f"{root}: not found; give the unzipped competition folder")
    raise DataError(f"{root}: dataset folder not found; create it with `scrollseg synth {root}` or point to the competition data")


def list_volumes(root: str | Path, split: str = "train", require_labels: bool | None = None) -> list[VolumeRef]:
    """Volumes of ``split`` in ``root``; ids whose files are missing are skipped with one warning.

    Without a CSV (e.g. a bare folder of test images) every ``*.tif`` in the image folder is used.
    """
    root = dataset_root(root)
    labels_needed = (split == "train") if require_labels is None else require_labels
    image_dir = root / f"{split}_images"
    label_dir = root / f"{split}_labels"
    csv_path = _find_csv(root, split)
    if csv_path is not None:
        rows = read_ids(csv_path)
    elif image_dir.is_dir():
        rows = [(p.stem, "") for p in sorted(image_dir.glob("*.tif"))]
    else:
        raise DataError(f"{root}: neither {split}.csv nor {split}_images/ found; is this a competition-layout folder?")
    refs, missing = [], []
    for vid, scroll in rows:
        image = image_dir / f"{vid}.tif"
        label = label_dir / f"{vid}.tif"
        if not image.is_file() or (labels_needed and not label.is_file()):
            missing.append(vid)
            continue
        refs.append(VolumeRef(vid, scroll, image, label if label.is_file() else None))
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        warnings.warn(f"{root}: {len(missing)} id(s) listed in {split}.csv have no files and are skipped: {shown}", stacklevel=2)
    return refs


def images_in(folder: str | Path, csv_path: str | Path | None = None) -> list[VolumeRef]:
    """Test-time volumes: a competition root (uses test.csv and test_images/) or a folder of .tif files."""
    folder = Path(folder)
    if (folder / "test_images").is_dir() or (folder / "test.csv").is_file():
        refs = list_volumes(folder, "test", require_labels=False)
        if csv_path is None:
            return refs
        folder = folder / "test_images"
    if not folder.is_dir():
        refuse_archive(folder)
        raise DataError(f"{folder}: image folder not found; give the test_images folder or the dataset root")
    if csv_path is not None:
        rows = read_ids(Path(csv_path))
        refs, missing = [], []
        for vid, scroll in rows:
            path = folder / f"{vid}.tif"
            (refs.append(VolumeRef(vid, scroll, path, None)) if path.is_file() else missing.append(vid))
        if missing:
            raise DataError(f"{folder}: {len(missing)} id(s) of {csv_path} have no image (first: {missing[0]}.tif); a submission needs them all")
        return refs
    return [VolumeRef(p.stem, "", p, None) for p in sorted(folder.glob("*.tif"))]
