"""Reading and writing 3D uint8 TIFF volumes (tifffile + imagecodecs for LZW).

Every read checks the header first, so an oversized, non-3D or wrongly typed file
is refused before any voxel is decoded.
"""
from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np
import tifffile

from ..errors import DataError

DEFAULT_MAX_VOXELS = 1024**3
# damaged files are reported by our own one-line errors, not by tifffile's log
logging.getLogger("tifffile").setLevel(logging.CRITICAL)


def _check_header(tif: tifffile.TiffFile, name: str, max_voxels: int) -> None:
    if not tif.series:
        raise DataError(f"{name}: TIFF holds no image; replace the file")
    series = tif.series[0]
    shape = tuple(int(s) for s in series.shape)
    announced = (tif.shaped_metadata or [{}])[0].get("shape")
    if announced and tuple(announced) != shape:
        raise DataError(f"{name}: unreadable or truncated TIFF (header announces {tuple(announced)}, found {shape}); re-download or re-export it")
    squeezed = tuple(s for s in shape if s != 1) if len(shape) > 3 else shape
    if len(squeezed) != 3:
        raise DataError(f"{name}: expected a 3D volume, found shape {shape}; export one z-stack per file")
    if series.dtype != np.uint8:
        raise DataError(f"{name}: expected uint8 voxels, found {series.dtype}; convert the volume to uint8")
    voxels = int(np.prod(squeezed))
    if voxels > max_voxels:
        raise DataError(f"{name}: announces {voxels} voxels, over the limit of {max_voxels}; raise data.max_voxels if it is genuine")


def read_volume(source: str | os.PathLike | bytes, max_voxels: int = DEFAULT_MAX_VOXELS, name: str | None = None) -> np.ndarray:
    """A 3D uint8 array from a TIFF path or its bytes; ``DataError`` names the file on any problem."""
    label = name or str(source if not isinstance(source, bytes) else "<bytes>")
    handle = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with tifffile.TiffFile(handle) as tif:
            _check_header(tif, label, max_voxels)
            arr = tif.asarray()
    except DataError:
        raise
    except FileNotFoundError as exc:
        raise DataError(f"{label}: file not found; check the dataset folder") from exc
    except Exception as exc:  # tifffile/imagecodecs raise many types for damaged files
        raise DataError(f"{label}: unreadable or truncated TIFF ({exc.__class__.__name__}); re-download or re-export it") from exc
    arr = np.asarray(arr)
    if arr.ndim != 3:
        arr = arr.reshape([s for s in arr.shape if s != 1])
    return arr


def read_header_shape(path: str | os.PathLike, max_voxels: int = DEFAULT_MAX_VOXELS) -> tuple[int, int, int]:
    try:
        with tifffile.TiffFile(path) as tif:
            _check_header(tif, str(path), max_voxels)
            return tuple(s for s in tif.series[0].shape if s != 1) if len(tif.series[0].shape) > 3 else tuple(tif.series[0].shape)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: unreadable TIFF header ({exc.__class__.__name__}); re-download or re-export it") from exc


def encode_volume(arr: np.ndarray) -> bytes:
    """LZW-compressed TIFF bytes of a 3D uint8 volume, as the competition ships them."""
    if arr.ndim != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected a 3D uint8 array, got {arr.dtype} {arr.shape}")
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, compression="lzw", photometric="minisblack")
    return buf.getvalue()


def write_volume(path: str | os.PathLike, arr: np.ndarray) -> None:
    """Write atomically: a temporary file beside the target, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(encode_volume(arr))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_ahead(items: list, path_of, max_voxels: int = DEFAULT_MAX_VOXELS, depth: int = 2):
    """Yield ``(item, volume)`` in order, decoding the next ``depth`` volumes in a thread
    while the caller works on the current one. A read error is raised in the caller."""
    import threading
    from queue import Queue

    queue: Queue = Queue(maxsize=depth)

    def work() -> None:
        for item in items:
            try:
                queue.put((item, read_volume(path_of(item), max_voxels), None))
            except Exception as exc:  # handed to the consumer, which raises it
                queue.put((item, None, exc))
                return

    threading.Thread(target=work, daemon=True).start()
    for _ in items:
        item, volume, error = queue.get()
        if error is not None:
            raise error
        yield item, volume
