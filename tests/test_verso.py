"""Training that ignores the verso side's background (engine/verso.py): patch reads of a
training volume, in every cache form, read label 0 on the verso side of each sheet as
ignored; labels 1, the recto side and validation's whole labels stay as they are."""
import numpy as np
import pytest
from scipy import ndimage

from scrollseg.constants import IGNORE_LABEL
from scrollseg.data.cache import VolumeCache
from scrollseg.data.io import write_volume
from scrollseg.data.layout import VolumeRef
from scrollseg.data.synth import papyrus_fibres
from scrollseg.engine.verso import ignore_verso_background, mask_path
from scrollseg.data.volumes import ArrayVolume

PITCH, THICKNESS, CONTEXT = 12, 6, 24.0


def sheets_with_labels(seed: int = 0, shape=(48, 72, 48)):
    """Flat sheets across y with the recto face at low y: (image, label, depth from the recto face, sheet)."""
    rng = np.random.default_rng(seed)
    depth = np.broadcast_to((np.arange(shape[1])[None, :, None] - 3) % PITCH, shape).astype(np.float32)
    sheet = depth < THICKNESS
    density = np.where(sheet, 0.55 + 0.6 * papyrus_fibres(depth < THICKNESS / 2, rng), 0.08).astype(np.float32)
    density = ndimage.gaussian_filter(density, 1.0) + rng.normal(0, 0.05, shape).astype(np.float32)
    image = np.clip(density * 200 + 20, 0, 255).astype(np.uint8)
    label = (sheet & (depth < 2)).astype(np.uint8)
    label[:, :, :6] = 2  # an unlabelled strip stays unlabelled
    return image, label, depth, sheet


@pytest.mark.parametrize("mode", ["decoded", "compressed", "none"])
def test_patch_reads_ignore_verso_background_and_validation_labels_stay(tmp_path, mode):
    image, label, depth, sheet = sheets_with_labels()
    write_volume(tmp_path / "img.tif", image)
    write_volume(tmp_path / "lab.tif", label)
    ref = VolumeRef(id="7", image=tmp_path / "img.tif", label=tmp_path / "lab.tif", scroll_id="1")
    cache = VolumeCache(tmp_path / "cache", 1024**3, mode)
    cache.build([ref], 1, progress=False)
    volume = cache.load(ref)
    ignore_verso_background([volume], CONTEXT, progress=False)

    _, read = volume.read(np.zeros(3, np.int64), volume.shape)
    verso_face = sheet & (depth >= THICKNESS - 2) & (label == 0)
    assert (read[verso_face] == IGNORE_LABEL).mean() > 0.9
    assert np.array_equal(read == 1, label == 1)  # the surface is never ignored
    assert (read[label == 2] == 2).all()
    # most of the background stays: the recto face's own side and the gaps' recto halves
    assert 0.2 < (read == 0).sum() / (label == 0).sum() < 0.8
    assert np.array_equal(np.asarray(volume.label), label)  # validation reads the whole label as it is
    # patch reads past the edge still pad with ignored voxels
    _, padded = volume.read(np.array([-4, 0, 0]), (16, 16, 16))
    assert (padded[:4] == IGNORE_LABEL).all() and np.array_equal(padded[4:] == 1, label[:12, :16, :16] == 1)


def test_masks_are_made_once_per_entry_and_context(tmp_path):
    image, label, _, _ = sheets_with_labels(seed=1)
    write_volume(tmp_path / "img.tif", image)
    write_volume(tmp_path / "lab.tif", label)
    ref = VolumeRef(id="8", image=tmp_path / "img.tif", label=tmp_path / "lab.tif", scroll_id="1")
    cache = VolumeCache(tmp_path / "cache", 1024**3, "decoded")
    cache.build([ref], 1, progress=False)
    volume = cache.load(ref)
    ignore_verso_background([volume], CONTEXT, progress=False)
    path = mask_path(volume, CONTEXT)
    made = path.stat().st_mtime_ns
    reopened = cache.load(ref)
    ignore_verso_background([reopened], CONTEXT, progress=False)
    assert path.stat().st_mtime_ns == made and reopened.ignored is not None
    ignore_verso_background([reopened], 2 * CONTEXT, progress=False)
    assert mask_path(reopened, 2 * CONTEXT).exists() and not list(volume.entry.glob("*.tmp*"))


def test_in_memory_volumes_get_their_mask_in_memory():
    image, label, depth, sheet = sheets_with_labels(seed=2)
    volume = ArrayVolume.of("m", image, label, 0.3, 0.2)
    ignore_verso_background([volume], CONTEXT, progress=False)
    _, read = volume.read(np.zeros(3, np.int64), volume.shape)
    assert (read[sheet & (depth >= THICKNESS - 2) & (label == 0)] == IGNORE_LABEL).mean() > 0.9
    with pytest.raises(ValueError, match="recto_context"):
        ignore_verso_background([volume], 0.0, progress=False)
