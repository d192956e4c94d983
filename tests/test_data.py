
import numpy as np
import pytest
import tifffile
import torch

from scrollseg.config import AugmentConfig
from scrollseg.data.augment import augment_batch
from scrollseg.data.cache import VolumeCache
from scrollseg.data.io import read_volume, write_volume
from scrollseg.data.layout import list_volumes
from scrollseg.data.sampler import PatchSampler
from scrollseg.data.volumes import FOREGROUND_BLOCK
from scrollseg.errors import DataError


def test_synthetic_layout(small_dataset):
    refs = list_volumes(small_dataset, "train")
    assert [r.id for r in refs] == ["1000", "1001", "1002", "1003"]
    image, label = read_volume(refs[0].image), read_volume(refs[0].label)
    assert image.shape == label.shape == (48, 56, 64) and image.dtype == np.uint8
    counts = np.bincount(label.ravel(), minlength=3) / label.size
    assert set(np.unique(label)) <= {0, 1, 2}
    assert 0.3 < counts[2] < 0.9, "most voxels are unlabelled"
    assert 0.01 < counts[1] < 0.2
    assert (small_dataset / "test_labels" / "9000.tif").is_file()
    with tifffile.TiffFile(refs[0].image) as tif:
        assert tif.pages[0].compression == 5  # LZW


def test_recto_face_is_inside_the_sheet_toward_the_centre(small_dataset):
    ref = list_volumes(small_dataset, "train")[1]
    image, label = read_volume(ref.image).astype(float), read_volume(ref.label)
    # surface voxels sit on bright papyrus, background voxels are mostly dark
    assert image[label == 1].mean() > image[label == 0].mean() + 20


def test_synthetic_fibres_are_horizontal_on_the_recto_half_and_vertical_on_the_verso_half():
    from scrollseg.data.synth import papyrus_fibres

    recto_half = np.zeros((40, 40, 40), bool)
    recto_half[:, :, :20] = True
    fibres = papyrus_fibres(recto_half, np.random.default_rng(0))

    def correlation(part, axis):  # of neighbours 2 voxels apart along axis
        a, b = np.moveaxis(part, axis, 0)[:-2], np.moveaxis(part, axis, 0)[2:]
        return np.corrcoef(a.ravel(), b.ravel())[0, 1]

    recto, verso = fibres[:, :, 3:17], fibres[:, :, 23:37]
    assert correlation(recto, 1) > 0.5 > 0.2 > correlation(recto, 0)  # long along y (the winding), short along z
    assert correlation(verso, 0) > 0.5 > 0.2 > correlation(verso, 1)  # long along z (the axis), short across it
    assert 0.8 < recto.std() / verso.std() < 1.25


def test_synthetic_chunks_put_recto_fibres_under_the_label_and_verso_fibres_behind_it(monkeypatch):
    from scrollseg.data import synth

    halves = []
    monkeypatch.setattr(synth, "papyrus_fibres", lambda recto_half, rng: halves.append(recto_half) or np.zeros(recto_half.shape, np.float32))
    _, label = synth.synth_chunk((40, 48, 48), np.random.default_rng(3))
    recto_half = halves[0]
    assert recto_half[label == 1].all()  # every labelled voxel has recto fibres
    assert 0.05 < recto_half.mean() < 0.45  # about half of each sheet, the sheets under 0.6 of the volume


def test_missing_files_are_skipped_with_one_warning(small_dataset, tmp_path):
    (tmp_path / "train_images").mkdir()
    (tmp_path / "train_labels").mkdir()
    for sub in ("train_images", "train_labels"):
        (tmp_path / sub / "1.tif").write_bytes((small_dataset / sub / "1000.tif").read_bytes())
    (tmp_path / "train.csv").write_text("id,scroll_id\n1,a\n2,a\n3,b\n")
    with pytest.warns(UserWarning, match="2 id"):
        refs = list_volumes(tmp_path, "train")
    assert [r.id for r in refs] == ["1"]


@pytest.mark.parametrize(
    "array,message",
    [
        (np.zeros((8, 8), np.uint8), "3D"),
        (np.zeros((5, 8, 8), np.uint16), "uint8"),
    ],
)
def test_bad_tiffs_are_refused(tmp_path, array, message):
    path = tmp_path / "bad.tif"
    tifffile.imwrite(path, array)
    with pytest.raises(DataError, match=message):
        read_volume(path)


def test_truncated_and_oversized_tiffs(tmp_path):
    path = tmp_path / "v.tif"
    write_volume(path, np.random.default_rng(0).integers(0, 255, (16, 16, 16), dtype=np.uint8))
    data = path.read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.tif"):
        read_volume(tmp_path / "cut.tif")
    with pytest.raises(DataError, match="over the limit"):
        read_volume(path, max_voxels=1000)


def test_cache_memmaps_and_finds_foreground(small_dataset, tmp_path):
    ref = list_volumes(small_dataset, "train")[0]
    cache = VolumeCache(tmp_path, 10**9)
    vol = cache.load(ref)
    assert isinstance(vol.image, np.memmap)
    label = read_volume(ref.label)
    assert np.array_equal(np.asarray(vol.label), label)
    # the k-th surface voxel, block by block: every one of them exactly once
    found = np.array([vol.foreground_voxel(k) for k in range(vol.foreground_count)])
    assert vol.foreground_count == (label == 1).sum()
    assert np.array_equal(np.sort(np.ravel_multi_index(found.T, label.shape)), np.flatnonzero(label == 1))
    assert np.array_equal(found[0], np.argwhere(label[:FOREGROUND_BLOCK, :FOREGROUND_BLOCK, :FOREGROUND_BLOCK] == 1)[0])
    entry = cache.entry(ref)
    mtime = (entry / "image.npy").stat().st_mtime_ns
    cache.load(ref)
    assert (entry / "image.npy").stat().st_mtime_ns == mtime, "decoded only once"


def test_label_checks(small_dataset, tmp_path):
    for sub in ("train_images", "train_labels"):
        (tmp_path / sub).mkdir()
    image = read_volume(small_dataset / "train_images" / "1000.tif")
    write_volume(tmp_path / "train_images" / "a.tif", image)
    bad = np.full(image.shape, 3, np.uint8)
    write_volume(tmp_path / "train_labels" / "a.tif", bad)
    (tmp_path / "train.csv").write_text("id,scroll_id\na,s\n")
    with pytest.raises(DataError, match="outside"):
        VolumeCache(tmp_path / "c", 10**9).load(list_volumes(tmp_path, "train")[0])
    write_volume(tmp_path / "train_labels" / "a.tif", np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(DataError, match="differs"):
        VolumeCache(tmp_path / "c", 10**9).load(list_volumes(tmp_path, "train")[0])


def test_sampler_is_a_function_of_the_step_and_pads(small_dataset, tmp_path):
    vols = [VolumeCache(tmp_path, 10**9).load(r) for r in list_volumes(small_dataset, "train")]
    s = PatchSampler(vols, (64, 64, 64), 3, 0.5, seed=1)
    a, b = s.batch(5, 0), s.batch(5, 0)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["image"], s.batch(6, 0)["image"])
    assert a["image"].shape == (3, 64, 64, 64)  # larger than the 48x56x64 volumes: padded
    assert (a["label"][:, :8] == 2).all(), "padding is ignored"
    other_rank = PatchSampler(vols, (16, 16, 16), 3, 0.5, seed=1, rank=1, world=2)
    assert not np.array_equal(PatchSampler(vols, (16, 16, 16), 3, 0.5, seed=1).batch(0)["image"], other_rank.batch(0)["image"])


def test_foreground_oversampling(small_dataset, tmp_path):
    vols = [VolumeCache(tmp_path, 10**9).load(r) for r in list_volumes(small_dataset, "train")]
    always = PatchSampler(vols, (8, 8, 8), 16, 1.0, seed=0).batch(0)["label"]
    never = PatchSampler(vols, (8, 8, 8), 16, 0.0, seed=0).batch(0)["label"]
    assert ((always == 1).reshape(16, -1).any(1)).all()
    assert (always == 1).mean() > (never == 1).mean()


def test_patches_outside_the_volume_are_padded(small_dataset, tmp_path):
    vol = VolumeCache(tmp_path, 10**9).load(list_volumes(small_dataset, "train")[0])
    image, label = vol.read(np.array([-1, 0, 60]), (3, 3, 6))
    assert (image[0] == 0).all() and (label[0] == 2).all() and (label[:, :, 4:] == 2).all()
    assert np.array_equal(image[1:, :, :4], np.asarray(vol.image)[0:2, 0:3, 60:64])
    assert np.array_equal(label[1:, :, :4], np.asarray(vol.label)[0:2, 0:3, 60:64])


def test_augmentation_keeps_image_and_label_aligned():
    rng = np.random.default_rng(0)
    label = torch.from_numpy((rng.random((4, 12, 12, 12)) < 0.3).astype(np.uint8))
    image = label * 200 + 20
    mean, std = torch.full((4,), 0.3), torch.full((4,), 0.3)
    # transforms that keep a two-valued image two-valued
    cfg = AugmentConfig(rotation_prob=0, scale_prob=0, noise_prob=0, blur_prob=0, lowres_prob=0, brightness_prob=1.0, contrast_prob=1.0,
                        inverted_gamma_prob=0.5, gamma_prob=0.5, rot90=True)
    x, y = augment_batch(image.to(torch.uint8), label, mean, std, cfg, torch.Generator().manual_seed(1))
    assert x.shape == y.shape == (4, 1, 12, 12, 12)
    assert torch.equal(x > 0.5, y == 1)
    assert not torch.equal(y[:, 0], label), "some sample was flipped or rotated"


def test_ranks_see_the_micro_batches_of_one_accumulating_process(small_dataset, tmp_path):
    vols = [VolumeCache(tmp_path, 10**9).load(r) for r in list_volumes(small_dataset, "train")]
    single = PatchSampler(vols, (16, 16, 16), 2, 0.5, seed=4)
    ranks = [PatchSampler(vols, (16, 16, 16), 2, 0.5, seed=4, rank=r, world=2) for r in range(2)]
    for rank in range(2):
        assert np.array_equal(ranks[rank].batch(9, 0)["image"], single.batch(9, rank)["image"])


def test_spatial_augmentation_of_a_patch_sized_crop_keeps_alignment_and_never_pads():
    rng = np.random.default_rng(2)
    label = torch.from_numpy((rng.random((3, 16, 16, 16)) < 0.3).astype(np.uint8))
    image = label * 200 + 20
    mean, std = torch.full((3,), 0.3), torch.full((3,), 0.3)
    plain = AugmentConfig(rotation_prob=0, scale_prob=0, mirror_prob=0, noise_prob=0, blur_prob=0, brightness_prob=0, contrast_prob=0,
                          lowres_prob=0, inverted_gamma_prob=0, gamma_prob=0)
    identity = AugmentConfig(**{**plain.__dict__, "rotation_prob": 1.0, "rotation_deg": 0.0})
    x0, y0 = augment_batch(image.to(torch.uint8), label, mean, std, plain, torch.Generator().manual_seed(0))
    x1, y1 = augment_batch(image.to(torch.uint8), label, mean, std, identity, torch.Generator().manual_seed(0))
    assert torch.equal(y0, y1) and torch.allclose(x0, x1, atol=1e-5)
    turned = AugmentConfig(**{**plain.__dict__, "rotation_prob": 1.0, "scale_prob": 1.0, "rotation_deg": 30.0, "scale_range": [0.7, 1.3]})
    x, y = augment_batch(image.to(torch.uint8), label, mean, std, turned, torch.Generator().manual_seed(3))
    # without an enlarged crop the turned patch is scaled down until it reads the crop only
    assert set(torch.unique(y).tolist()) <= {0, 1}
    agree = ((x > 0.5) == (y == 1)).float().mean()
    assert agree > 0.85  # trilinear image and nearest label stay aligned up to the rims of these one-voxel specks


def test_cached_volumes_pickle_as_references(small_dataset, tmp_path):
    import pickle

    vol = VolumeCache(tmp_path, 10**9).load(list_volumes(small_dataset, "train")[0])
    data = pickle.dumps(vol)
    assert len(data) < 10_000, "a worker started by spawn receives paths, not voxels"
    again = pickle.loads(data)
    assert isinstance(again.image, np.memmap) and np.array_equal(again.image, vol.image)
    assert np.array_equal(again.foreground_ends, vol.foreground_ends)
