"""Run folders and checkpoints: atomic writes, safe loads, newest-valid resume.

A run folder holds ``config.yaml`` (resolved), ``metrics.jsonl`` and
``checkpoints/`` with ``last.pt``, ``step-<N>.pt`` (the newest ``keep_last``),
``best.pt`` and ``final.pt``. Each checkpoint is a plain dict of tensors and
Python data, written to a temporary file, fsynced and renamed, so a kill or a
full disk never leaves a damaged file under a final name. A save writes one file:
``last.pt`` and ``final.pt`` are hard links to the step file where the filesystem
allows them (else copies), so they take no extra space. Loading uses
``torch.load(weights_only=True)``: a file carrying pickled objects is refused
before any of its code can run.
"""
from __future__ import annotations

import os
import pickle
import re
import shutil
import warnings
from pathlib import Path

import torch

from .errors import CheckpointError

STEP_FILE = re.compile(r"step-(\d+)\.pt$")


def _fsync_dir(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_save(obj: dict, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot write checkpoint ({exc.strerror}); free disk space or choose another run folder; the previous checkpoint is intact") from exc
    finally:
        tmp.unlink(missing_ok=True)


def atomic_link(source: Path, path: Path) -> None:
    """Give ``source`` the additional name ``path`` (replacing it atomically): a hard link,
    or a copy where the filesystem has none."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError:  # no hard links here (some network and FUSE filesystems)
            shutil.copyfile(source, tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot write checkpoint ({exc.strerror}); free disk space or choose another run folder; the previous checkpoint is intact") from exc
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: Path | str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; give a run folder or a .pt file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: refused: the file holds Python objects, not just tensors and plain data, and loading it could run code; use a checkpoint written by scrollseg") from exc
    except Exception as exc:
        raise CheckpointError(f"{path}: damaged or truncated checkpoint ({exc.__class__.__name__}); use an earlier one") from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{path}: not a scrollseg checkpoint (no 'model' and 'config' entries)")
    return ckpt


class RunDir:
    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.checkpoints = self.root / "checkpoints"
        self.config_path = self.root / "config.yaml"
        self.metrics_path = self.root / "metrics.jsonl"
        self.record_path = self.root / "run.json"  # the data folder and the split

    def step_files(self) -> list[tuple[int, Path]]:
        if not self.checkpoints.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.checkpoints.iterdir() if (m := STEP_FILE.search(p.name))]
        return sorted(found)

    def save(self, state: dict, step: int, keep_last: int, final: bool = False) -> None:
        """Write the step file once; last.pt (and final.pt) name the same file."""
        step_file = self.checkpoints / f"step-{step:08d}.pt"
        atomic_save(state, step_file)
        atomic_link(step_file, self.checkpoints / "last.pt")
        if final:
            atomic_link(step_file, self.checkpoints / "final.pt")
        for _, old in self.step_files()[: -max(keep_last, 1)]:
            old.unlink(missing_ok=True)

    def save_best(self, state: dict) -> None:
        atomic_save(state, self.checkpoints / "best.pt")

    def candidate_path(self, step: int) -> Path:
        return self.checkpoints / f"candidate-{step:08d}.pt"

    def save_candidate(self, state: dict, step: int) -> None:
        """The state at a validation whose score is still being computed."""
        atomic_save(state, self.candidate_path(step))

    def settle_candidate(self, step: int, best: bool) -> None:
        """Make the candidate of ``step`` the best checkpoint, or drop it."""
        path = self.candidate_path(step)
        if best:
            path.replace(self.checkpoints / "best.pt")
        else:
            path.unlink(missing_ok=True)

    def drop_candidates(self) -> None:
        """Candidates whose scores never arrived (the run stopped first)."""
        if self.checkpoints.is_dir():
            for path in self.checkpoints.glob("candidate-*.pt"):
                path.unlink(missing_ok=True)

    def remove_temporary_files(self) -> None:
        if self.checkpoints.is_dir():
            for tmp in self.checkpoints.glob(".*.tmp*"):
                tmp.unlink(missing_ok=True)

    def resume_candidates(self) -> list[Path]:
        """Newest first: step files by step, then last.pt."""
        paths = [p for _, p in reversed(self.step_files())]
        last = self.checkpoints / "last.pt"
        return paths + ([last] if last.is_file() else [])

    def load_newest_valid(self) -> dict | None:
        """The newest checkpoint that loads; damaged ones are reported and skipped."""
        for path in self.resume_candidates():
            try:
                return load_checkpoint(path)
            except CheckpointError as exc:
                warnings.warn(f"falling back to an earlier checkpoint: {exc}", stacklevel=2)
        return None


def resolve_checkpoint(path: Path | str) -> Path:
    """A .pt file, or the best available checkpoint of a run folder (best, final, last)."""
    path = Path(path)
    if path.is_file():
        return path
    run = RunDir(path)
    for name in ("best.pt", "final.pt", "last.pt"):
        if (run.checkpoints / name).is_file():
            return run.checkpoints / name
    raise CheckpointError(f"{path}: no checkpoint found (looked for best.pt, final.pt, last.pt in {run.checkpoints}); train first")
