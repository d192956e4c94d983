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

1. ``fibre_contrast``: per voxel, (E_z - E_h) / (E_z + E_h), the texture's gradient energy
   along z and along the sheet's horizontal direction, both within the sheet's plane
   (its normal from the smoothed image): > 0 on the recto half, < 0 on the verso half.
2. ``recto_side``: the papyrus voxels' outward directions (down the smoothed intensity,
   away from the sheet's middle), weighted by their fibre contrast and pooled with a
   Gaussian of ``context`` voxels, give the direction to the centre (on the recto half the
   outward direction points to it and the contrast is positive, on the verso half both
   flip, so every term points to it); the recto side is where the outward direction
   agrees with it.
3. ``keep_recto_face`` zeroes the probability elsewhere, before the threshold.

Written by hand: no imaging library has a recto/verso cue. The pooling runs at a quarter of
the resolution (its Gaussian is several voxels wide); the rest is five small Gaussian
filters and the gradients at full resolution, about 10 s for a 320^3 chunk on one core. ``scrollseg tune`` switches it on only when it raises
the held-out score (``inference.recto_context``), so data without the fibre cue, or with
the scroll axis along another array axis, is left as it was.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

TEXTURE_SCALE = 3.0  # voxels: the high-pass that keeps the fibres and drops the sheets
GRADIENT_SCALE = 1.0  # voxels: smoothing before the texture's gradient
ENERGY_SCALE = 2.0  # voxels: the window the two gradient energies are summed over
SHEET_SCALE = 1.5  # voxels: smoothing for the outward direction
PAPYRUS_QUANTILE = 60  # voxels brighter than this percentile of the smoothed image count as papyrus
POOL_FACTOR = 4  # the pooling's resolution divisor
TRUNCATE = 3.0  # Gaussian kernels cut at 3 sigma (scipy: 4), a quarter less work for no visible change


def _unit(v: np.ndarray) -> np.ndarray:
    return v / (np.sqrt((v * v).sum(0)) + 1e-6)


def fibre_contrast(image: np.ndarray) -> np.ndarray:
    """float32 in [-1, 1]: higher where the texture runs across z within the sheet's plane (recto) than along it (verso)."""
    intensity = image.astype(np.float32)
    intensity = (intensity - intensity.mean()) / (intensity.std() + 1e-6)
    smooth = ndimage.gaussian_filter(intensity, TEXTURE_SCALE, truncate=TRUNCATE)
    nz, ny, nx = _unit(np.stack(np.gradient(smooth)))  # the sheet's normal
    tz, ty, tx = np.gradient(ndimage.gaussian_filter(intensity - smooth, GRADIENT_SCALE, truncate=TRUNCATE))  # the texture's gradient
    del intensity, smooth
    # the gradient along z-within-the-plane (e_z - nz n) and along the plane's horizontal (n x e_z = (0, nx, -ny)),
    # both directions of length sqrt(1 - nz^2)
    in_plane = 1.0 - nz * nz + 1e-6
    along_z = tz - nz * (tz * nz + ty * ny + tx * nx)
    energy_z = ndimage.gaussian_filter(along_z * along_z / in_plane, ENERGY_SCALE, truncate=TRUNCATE)
    del along_z
    horizontal = ty * nx - tx * ny
    energy_h = ndimage.gaussian_filter(horizontal * horizontal / in_plane, ENERGY_SCALE, truncate=TRUNCATE)
    return (energy_z - energy_h) / (energy_z + energy_h + 1e-6)


def _pool(field: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of one channel at 1/POOL_FACTOR resolution, back at full size."""
    f = POOL_FACTOR
    shape = field.shape
    padded = np.pad(field, [(0, -n % f) for n in shape])
    small = padded.reshape(padded.shape[0] // f, f, padded.shape[1] // f, f, padded.shape[2] // f, f).mean((1, 3, 5))
    small = ndimage.gaussian_filter(small, sigma / f, mode="constant")
    full = small.repeat(f, 0).repeat(f, 1).repeat(f, 2)
    return full[: shape[0], : shape[1], : shape[2]]


def recto_side(image: np.ndarray, context: float) -> np.ndarray:
    """bool: the voxels on the recto side of their sheet, the fibre cue pooled over ``context`` voxels."""
    smooth = ndimage.gaussian_filter(image.astype(np.float32), SHEET_SCALE, truncate=TRUNCATE)
    outward = -np.stack(np.gradient(smooth))
    papyrus = smooth > np.percentile(smooth[::2, ::2, ::2], PAPYRUS_QUANTILE)  # every 8th voxel: the same level, a tenth of the sort
    weight = np.where(papyrus, fibre_contrast(image), 0.0).astype(np.float32)
    del smooth, papyrus
    centre = np.stack([_pool(weight * o, context) for o in outward])
    return (outward * centre).sum(0) > 0


def keep_recto_face(prob: np.ndarray, image: np.ndarray, context: float) -> np.ndarray:
    """``prob`` with the voxels on the verso side of their sheet set to 0."""
    if image.shape != prob.shape:
        raise ValueError(f"image shape {image.shape} differs from the probability map's {prob.shape}")
    return np.where(recto_side(image, context), prob, 0.0).astype(np.float32)
