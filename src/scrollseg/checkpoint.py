"""Run folders and checkpoints: atomic writes, safe loads, newest-valid resume.

A run folder holds ``config.yaml`` (resolved), ``metrics.jsonl``,
``checkpoints/`` with ``last.pt``, ``step-<N>.pt`` (the newest ``keep_last``),
``best.pt`` and ``final.pt``, ``train.lock``, which one training at a time holds, and, once
``scrollseg tune`` has run, ``tuned.yaml``, which names the checkpoint a run folder stands for. Each checkpoint is a plain dict of tensors and
Python data, written to a temporary file, fsynced and renamed, so a kill or a
full disk never leaves a damaged file under a final name. A save writes one file:
``last.pt`` and ``final.pt`` are hard links to the step file where the filesystem
allows them (else copies), so they take no extra space. Loading uses
``torch.load(weights_only=True)``: a file carrying pickled objects is refused
before any of its code can run.
"""
from __future__ import annotations

import errno
import os
import pickle
import re
import shutil
import warnings
import zipfile
from pathlib import Path

import torch
import yaml

from .errors import CheckpointError, ScrollsegError

try:
    import fcntl
except ImportError:  # Windows has no fcntl locks; runs there are not guarded against a second process
    fcntl = None

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


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one rename, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _may_be_torch_file(path: Path) -> bool:
    """Whether ``path`` can be a ``torch.save`` file: a zip holding ``data.pkl`` or a pickle.
    Empty files and zips that cannot be read are left to ``torch.load``, which reports them as damaged."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not head:
        return True
    if head == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as zf:
                return any(name == "data.pkl" or name.endswith("/data.pkl") for name in zf.namelist())
        except zipfile.BadZipFile:
            return True
    return head[:1] == b"\x80"  # the pickle protocol marker that legacy torch.save files start with


def load_checkpoint(path: Path | str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; give a run folder or a .pt file")
    if not _may_be_torch_file(path):
        raise CheckpointError(f"{path}: not a scrollseg checkpoint (not a file written by torch.save); give a .pt file from RUN/checkpoints")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: refused: the file holds Python objects, not just tensors and plain data, and loading it could run code; use a checkpoint written by scrollseg") from exc
    except Exception as exc:
        raise CheckpointError(f"{path}: damaged or truncated checkpoint ({exc.__class__.__name__}); use an earlier one") from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{path}: not a scrollseg checkpoint (no 'model' and 'config' entries)")
    return ckpt


TUNABLE_CHECKPOINTS = ("best.pt", "final.pt")  # the checkpoints ``scrollseg tune`` chooses between


class RunDir:
    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.checkpoints = self.root / "checkpoints"
        self.config_path = self.root / "config.yaml"
        self.metrics_path = self.root / "metrics.jsonl"
        self.record_path = self.root / "run.json"  # the data folder and the split
        self.tuned_path = self.root / "tuned.yaml"  # post-processing and checkpoint chosen by ``scrollseg tune``

    def tuned_checkpoint(self) -> Path | None:
        """The checkpoint ``scrollseg tune`` chose, while it is still the model it was tuned on:
        ``best.pt`` or ``final.pt`` of this run at the step ``tuned.yaml`` records (training on
        after the tune moves them to other steps)."""
        try:
            values = yaml.safe_load(self.tuned_path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            return None  # absent or unreadable: predict reports the unreadable file when it reads the settings
        if not isinstance(values, dict) or not values.get("checkpoint") or values.get("step") is None:
            return None
        name = Path(str(values["checkpoint"])).name  # by name: the run folder may have moved
        path = self.checkpoints / name
        if name not in TUNABLE_CHECKPOINTS or not path.is_file():
            return None
        return path if int(load_checkpoint(path)["step"]) == int(values["step"]) else None

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
    """A .pt file, or a run folder's checkpoint: the one ``scrollseg tune`` chose, else best, final, last."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        if path.suffix == ".pt":
            there = sorted(p.name for p in path.parent.glob("*.pt")) if path.parent.is_dir() else []
            found = f" ({path.parent} holds {', '.join(there)})" if there else ""
            raise CheckpointError(f"{path}: checkpoint not found{found}; give an existing .pt file or the run folder")
        raise CheckpointError(f"{path}: no checkpoint found: no such run folder or .pt file; give a run folder or a .pt file")
    run = RunDir(path)
    tuned = run.tuned_checkpoint()
    if tuned is not None:
        return tuned
    for name in (*TUNABLE_CHECKPOINTS, "last.pt"):
        if (run.checkpoints / name).is_file():
            return run.checkpoints / name
    raise CheckpointError(f"{path}: no checkpoint found (looked for best.pt, final.pt, last.pt in {run.checkpoints}); train first")


class RunLock:
    """One training process group per run folder at a time.

    A POSIX record lock (``lockf``) on ``RUN/train.lock``, held for the life of the run:
    the kernel releases it when the holder exits, however it exits, so a killed run never
    leaves a stale lock. Unlike ``flock`` it belongs to the process, not to the open file,
    so the processes the holder forks (DataLoader and DDP workers) do not hold it and
    cannot keep it after the holder is killed; they never ask for it either. The file
    names the holder's PID for the error the next process prints. Reading a run
    (predict, score) does not take it.
    """

    _held: set[str] = set()  # lock files this process holds: a POSIX lock never refuses its own process

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.path = self.root / "train.lock"
        self._fd: int | None = None

    def _busy(self, holder: str) -> ScrollsegError:
        return ScrollsegError(
            f"{self.root}: this run is being trained by another process (PID {holder}); wait for it to end, "
            f"stop it with `kill {holder}` (it checkpoints first), or give another RUN folder"
        )

    def __enter__(self) -> "RunLock":
        # checked before opening the file: closing any descriptor of it would drop this process's lock
        key = str(self.path.resolve())
        if key in RunLock._held:
            raise self._busy(str(os.getpid()))
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ScrollsegError(f"{self.root}: cannot write the run folder ({exc.strerror}); choose a writable RUN path") from exc
        if fcntl is not None:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EAGAIN):
                    os.close(fd)
                    raise ScrollsegError(f"{self.path}: cannot lock the run ({exc.strerror}); put RUN on a local disk") from exc
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise self._busy(holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd, self._key = fd, key
        RunLock._held.add(key)
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            if fcntl is not None:
                fcntl.lockf(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
            RunLock._held.discard(self._key)
