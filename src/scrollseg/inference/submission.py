"""submission.zip: one ``<id>.tif`` uint8 mask per test volume, written all-or-nothing.

Masks stream into a temporary zip beside the target. Only when every expected id
is present with its image's shape is it renamed over ``out``; on any error the
temporary file is removed and an earlier submission stays untouched. A process killed
outright cannot remove its temporary file; the next writer to the same ``out`` on the
same host removes those whose process is gone (the name holds host and PID, so writers on
other machines sharing the folder are left alone).
"""
from __future__ import annotations

import os
import socket
import zipfile
from pathlib import Path

import numpy as np

from ..data.io import encode_volume
from ..errors import ScrollsegError


class SubmissionWriter:
    def __init__(self, out: Path | str, expected_ids: set[str]):
        self.out = Path(out)
        self.expected = set(expected_ids)
        self.written: set[str] = set()
        self.tmp = self.out.with_name(f"{self._tmp_prefix()}{os.getpid()}")
        self.zip: zipfile.ZipFile | None = None

    def __enter__(self) -> "SubmissionWriter":
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self._remove_orphans()
            self.zip = zipfile.ZipFile(self.tmp, "w", compression=zipfile.ZIP_STORED)
        except OSError as exc:
            raise ScrollsegError(f"{self.out}: cannot write here ({exc.strerror}); choose a writable --out") from exc
        return self

    def _tmp_prefix(self) -> str:
        return f".{self.out.name}.tmp.{socket.gethostname()}."

    def _remove_orphans(self) -> None:
        """Temporary files of earlier writers to ``out`` on this host that were killed before
        cleaning up. Best effort: what cannot be removed stays."""
        prefix = self._tmp_prefix()
        for path in self.out.parent.iterdir():
            pid = path.name[len(prefix):] if path.name.startswith(prefix) else ""
            if pid.isdigit() and len(pid) < 10 and not _process_alive(int(pid)):
                try:
                    path.unlink()
                except OSError:
                    pass

    def add(self, vid: str, mask: np.ndarray, image_shape: tuple) -> None:
        if vid not in self.expected:
            raise ScrollsegError(f"{vid}.tif: not an id of the test set; check --ids")
        if tuple(mask.shape) != tuple(image_shape):
            raise ScrollsegError(f"{vid}.tif: mask shape {mask.shape} differs from the image {tuple(image_shape)}")
        try:
            # LZW inside the TIFF already compresses; the zip stores members as they are
            self.zip.writestr(f"{vid}.tif", encode_volume(np.ascontiguousarray(mask, dtype=np.uint8)))
        except OSError as exc:
            raise ScrollsegError(f"{self.out}: writing failed ({exc.strerror}); free disk space and rerun") from exc
        self.written.add(vid)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.zip.close()
            if exc_type is None:
                missing = sorted(self.expected - self.written)
                if missing:
                    raise ScrollsegError(f"{self.out}: {len(missing)} test id(s) have no mask (first: {missing[0]}); nothing was written")
                os.replace(self.tmp, self.out)
        except OSError as exc:
            raise ScrollsegError(f"{self.out}: cannot finish the submission ({exc.strerror}); free disk space and rerun") from exc
        finally:
            self.tmp.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: nothing is sent; fails when there is no such process
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's, alive
        pass
    return True
