"""Keep the recto face: which face of each sheet is the recto, told by the papyrus fibres.

A sheet of papyrus is two layers of fibres: on the recto (the face toward the scroll's
centre, the one labelled) they run along the winding, horizontally; on the verso along the
scroll axis, vertically. With the scroll axis along array axis 0 (z), as in the
competition's chunks, the recto half of a sheet has texture that changes fast along z and
slowly along the sheet's horizontal direction, and the verso half the reverse. One voxel
says little (the fibres are a few voxels wide and CT blurs them), but every sheet in a
neighbourhood faces the same way, so the cue pooled over a few tens of voxels points to the
scroll's centre reliably. A model trained for minutes finds both faces of a sheet well and
chooses between them poorly; this step makes the choice for it:

1. ``fibre_contrast``: (E_z - E_h) / (E_z + E_h), the texture's gradient energy along z and
   along the sheet's horizontal direction, both within the sheet's plane (its normal from
   the smoothed image, so the sheet's own edges drop out): > 0 on the recto half, < 0 on the
   verso half.
2. ``recto_side``: the papyrus voxels' outward directions (down the smoothed intensity,
   away from the sheet's middle), weighted by their fibre contrast and pooled with a
   Gaussian of ``context`` voxels, give the direction to the centre (on the recto half the
   outward direction points to it and the contrast is positive, on the verso half both
   flip, so every term points to it); the recto side is where the outward direction
   agrees with it.
3. ``keep_recto_face`` zeroes the probability elsewhere, before the threshold.

Written by hand: no imaging library has a recto/verso cue. Only two Gaussian filters run at
full resolution (the fine texture and the sheet's outward direction); the sheet's normal and
the gradient energies are taken at half resolution, and the pooling at a quarter (each is
smoothed over several voxels anyway), and the full-resolution products run two or four
z-slices at a time, so their temporaries stay in cache: about 3 s for a 320^3 chunk on one core
(``benchmarks/bench_postprocess.py``). ``scrollseg tune`` switches it on only when it raises
the held-out score (``inference.recto_context``), so data without the fibre cue, or with
the scroll axis along another array axis, is left as it was.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

TEXTURE_SCALE = 3.0  # voxels: smoothing for the sheet's normal, wide enough to drop the fibres
GRADIENT_SCALE = 1.0  # voxels: smoothing before the texture's gradient
ENERGY_SCALE = 2.0  # voxels: the window the two gradient energies are summed over
SHEET_SCALE = 1.5  # voxels: smoothing for the outward direction
PAPYRUS_QUANTILE = 60  # voxels brighter than this percentile of the smoothed image count as papyrus
POOL_FACTOR = 4  # the pooling's resolution divisor
TRUNCATE = 3.0  # Gaussian kernels cut at 3 sigma (scipy: 4), a quarter less work for no visible change


def _gaussian(a: np.ndarray, sigma: float, **kwargs) -> np.ndarray:
    return ndimage.gaussian_filter(a, sigma, truncate=TRUNCATE, **kwargs)


def _gradient(a: np.ndarray) -> np.ndarray:
    """(3, *a.shape) float32 central differences, one-sided at the borders: ``np.gradient``'s values in a third of its time."""
    out = np.empty((3,) + a.shape, np.float32)
    for axis in range(3):
        src, dst = np.moveaxis(a, axis, 0), np.moveaxis(out[axis], axis, 0)
        np.subtract(src[2:], src[:-2], out=dst[1:-1])
        dst[1:-1] *= 0.5
        np.subtract(src[1], src[0], out=dst[0])
        np.subtract(src[-1], src[-2], out=dst[-1])
    return out


def _slab_gradient(a: np.ndarray, start: int, stop: int) -> np.ndarray:
    """``_gradient(a)[:, start:stop]``, computed from those z-slices and their two neighbours only."""
    low, high = max(start - 1, 0), min(stop + 1, a.shape[0])
    return _gradient(a[low:high])[:, start - low : stop - low]


def _halve(a: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Means of neighbouring pairs along ``axes`` (each of even length)."""
    for axis in axes:
        v = np.moveaxis(a, axis, 0)
        a = np.moveaxis((v[0::2] + v[1::2]) * np.float32(0.5), 0, axis)
    return np.ascontiguousarray(a)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / (np.sqrt((v * v).sum(0)) + 1e-6)


def _standardized(image: np.ndarray) -> np.ndarray:
    """float32 zero mean, unit variance, edge-padded to a multiple of POOL_FACTOR along each axis."""
    padded = np.pad(image, [(0, -n % POOL_FACTOR) for n in image.shape], mode="edge").astype(np.float32)
    padded -= padded.mean()
    padded /= padded.std() + 1e-6
    return padded


def _fibre_contrast_half(fine: np.ndarray) -> np.ndarray:
    """The fibre contrast at half resolution, from the standardized image smoothed by GRADIENT_SCALE (even shape)."""
    # the sheet's normal varies slowly: half resolution, smoothed to TEXTURE_SCALE in all
    normal = _unit(_gradient(_gaussian(_halve(fine, (0, 1, 2)), np.sqrt(TEXTURE_SCALE**2 - GRADIENT_SCALE**2 - 0.25) / 2)))
    energy_z = np.empty(normal.shape[1:], np.float32)
    energy_h = np.empty(normal.shape[1:], np.float32)
    for k in range(normal.shape[1]):  # two full-resolution z-slices at a time: every temporary stays in cache
        tz, ty, tx = _slab_gradient(fine, 2 * k, 2 * k + 2)
        nz, ny, nx = normal[:, k].repeat(2, 1).repeat(2, 2)[:, None]
        # the texture's gradient along z within the plane (e_z - nz n) and along the plane's horizontal
        # (n x e_z = (0, nx, -ny)), squared and divided by their direction's squared length 1 - nz^2
        in_plane = 1.0 + 1e-6 - nz * nz
        along_z = tz - nz * (tz * nz + ty * ny + tx * nx)
        energy_z[k] = _halve(along_z * along_z / in_plane, (0, 1, 2))[0]
        horizontal = ty * nx - tx * ny
        energy_h[k] = _halve(horizontal * horizontal / in_plane, (0, 1, 2))[0]
    sigma = np.sqrt(ENERGY_SCALE**2 - 0.25) / 2  # the pair means already smoothed a little
    energy_z, energy_h = _gaussian(energy_z, sigma), _gaussian(energy_h, sigma)
    return (energy_z - energy_h) / (energy_z + energy_h + 1e-6)


def fibre_contrast(image: np.ndarray) -> np.ndarray:
    """float32 in [-1, 1], the image's shape: higher where the texture runs across z within the sheet's plane (recto) than along it (verso).

    Computed at half resolution (each value covers a 2^3 block), as ``recto_side`` uses it."""
    half = _fibre_contrast_half(_gaussian(_standardized(image), GRADIENT_SCALE))
    z, y, x = image.shape
    return half.repeat(2, 0).repeat(2, 1).repeat(2, 2)[:z, :y, :x]


def recto_side(image: np.ndarray, context: float) -> np.ndarray:
    """bool: the voxels on the recto side of their sheet, the fibre cue pooled over ``context`` voxels."""
    intensity = _standardized(image)
    fine = _gaussian(intensity, GRADIENT_SCALE)
    contrast = _fibre_contrast_half(fine)
    del fine
    sheet = _gaussian(intensity, SHEET_SCALE)
    del intensity
    z, y, x = image.shape
    # every 8th voxel of the volume itself (not the padding): the same level, a tenth of the sort
    papyrus = sheet > np.percentile(sheet[:z:2, :y:2, :x:2], PAPYRUS_QUANTILE)
    papyrus[z:], papyrus[:, y:], papyrus[:, :, x:] = False, False, False  # the edge padding casts no vote
    # The sheet's gradient points inward, against the outward direction; both factors of the final
    # product below use it, so the sign cancels and the gradient stands in for the outward direction.
    f = POOL_FACTOR
    toward_centre = np.empty((3,) + tuple(n // f for n in sheet.shape), np.float32)
    for k in range(toward_centre.shape[1]):
        inward = _slab_gradient(sheet, f * k, f * k + f)
        inward *= papyrus[f * k : f * k + f]
        weighted = _halve(inward, (1, 2, 3)) * contrast[2 * k : 2 * k + 2]
        toward_centre[:, k] = _halve(weighted, (1, 2, 3))[:, 0]
    toward_centre = np.stack([_gaussian(c, context / f, mode="constant") for c in toward_centre])
    side = np.empty(sheet.shape, bool)
    for k in range(toward_centre.shape[1]):
        inward = _slab_gradient(sheet, f * k, f * k + f)
        toward = toward_centre[:, k].repeat(f, 1).repeat(f, 2)[:, None]
        side[f * k : f * k + f] = (inward * toward).sum(0) > 0
    return side[:z, :y, :x]


def keep_recto_face(prob: np.ndarray, image: np.ndarray, context: float) -> np.ndarray:
    """``prob`` with the voxels on the verso side of their sheet set to 0."""
    if image.shape != prob.shape:
        raise ValueError(f"image shape {image.shape} differs from the probability map's {prob.shape}")
    return np.where(recto_side(image, context), prob, 0.0).astype(np.float32)
