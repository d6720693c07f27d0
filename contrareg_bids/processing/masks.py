"""Brain masks: detect already skull-stripped inputs, propagate the reference mask, clean up.

Step 3 of the data flow takes the brain mask from (in this order) the user's derivatives, an
already skull-stripped input (:func:`mask_from_skullstripped`), or the reference brain mask
brought into subject space through the inverse of the affine pre-alignment
(:func:`propagate_mask`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..io.images import load_nifti, read_volume
from ..io.transforms import (
    image_from_array,
    read_ants_affine,
    reference_image,
    resample_image,
    write_nifti,
)

__all__ = [
    "dilate_mask",
    "fill_holes",
    "largest_component",
    "mask_from_skullstripped",
    "propagate_mask",
    "write_mask",
]

PathLike = str | os.PathLike


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean mask (empty stays empty)."""
    m = np.asarray(mask, bool)
    labels, n = ndimage.label(m, structure=np.ones((3, 3, 3), bool))
    if n <= 1:
        return m.copy()
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed holes (ventricles set to zero by some skull strippers), in 3-D."""
    return ndimage.binary_fill_holes(np.asarray(mask, bool))


def dilate_mask(
    mask: np.ndarray, radius_mm: float, spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> np.ndarray:
    """Dilate by an ellipsoid of ``radius_mm`` (voxel ``spacing`` in mm); 0 is a no-op."""
    m = np.asarray(mask, bool)
    if radius_mm <= 0:
        return m.copy()
    r = [int(np.floor(radius_mm / s)) for s in spacing]
    if max(r) == 0:
        return m.copy()
    grids = np.ogrid[tuple(slice(-k, k + 1) for k in r)]
    ball = sum((g * s) ** 2 for g, s in zip(grids, spacing, strict=True)) <= radius_mm**2
    return ndimage.binary_dilation(m, structure=ball)


def _border(arr: np.ndarray) -> np.ndarray:
    faces = [arr[0], arr[-1], arr[:, 0], arr[:, -1], arr[:, :, 0], arr[:, :, -1]]
    return np.concatenate([f.ravel() for f in faces])


def mask_from_skullstripped(
    image: PathLike | np.ndarray,
    *,
    min_background: float = 0.2,
    min_border_zero: float = 0.95,
    min_in_component: float = 0.99,
    tolerance: float = 0.0,
) -> np.ndarray | None:
    """Brain mask of an image that is already skull-stripped, or ``None`` when it is not.

    Heuristic (scanner images have noise, hence almost no exact zeros, in the background;
    a skull-stripped image is one blob of tissue in a sea of exact zeros):

    1. at least ``min_background`` (20 %) of the voxels are background (``|x| <= tolerance``,
       exact zero by default);
    2. at least ``min_border_zero`` (95 %) of the voxels on the six faces are background;
    3. at least ``min_in_component`` (99 %) of the non-background voxels form ONE connected
       component (noise or a head with a zeroed-out face region does not).

    The mask is that component with its holes filled (dark CSF set to zero stays inside).
    Limitation: a head image whose background was thresholded to exact zero by the scanner
    or a converter also passes; give an explicit mask for such data.
    """
    if isinstance(image, np.ndarray):
        arr = np.asarray(image, dtype=np.float32)
    else:
        arr, _ = read_volume(image)
    if arr.ndim != 3:
        raise ValueError(f"expected a 3-D image, got shape {arr.shape}")
    background = np.abs(arr) <= tolerance
    if background.mean() < min_background:
        return None
    if _border(background).mean() < min_border_zero:
        return None
    fg = ~background
    n_fg = int(fg.sum())
    if n_fg == 0:
        return None
    blob = largest_component(fg)
    if blob.sum() < min_in_component * n_fg:
        return None
    return fill_holes(blob)


def write_mask(mask: np.ndarray, affine: np.ndarray, out_file: PathLike, header=None) -> Path:
    """Write a boolean mask as uint8 NIfTI (atomically)."""
    return write_nifti(np.asarray(mask, bool).astype(np.uint8), affine, out_file, header=header)


def propagate_mask(
    reference_mask: PathLike,
    affine_transform: PathLike | sitk.Transform,
    subject_image: PathLike,
    out_file: PathLike,
    *,
    dilate_mm: float = 0.0,
) -> Path:
    """Bring the reference brain mask into subject space (nearest neighbour) and write it.

    ``affine_transform`` maps reference points to subject points (ITK, the output of
    :func:`contrareg_bids.processing.affine.affine_register`); to sample the reference mask at
    each subject voxel its INVERSE is used. The result is the largest component with holes
    filled, optionally dilated by ``dilate_mm`` (a safety margin for an imperfect alignment).
    """
    if isinstance(affine_transform, sitk.Transform):
        tx = affine_transform
    else:
        tx = read_ants_affine(affine_transform)
    try:
        inverse = tx.GetInverse()
    except RuntimeError as exc:
        raise ValueError(f"{affine_transform}: the affine is not invertible ({exc})") from exc
    ref_arr, ref_img = read_volume(reference_mask)
    if not (ref_arr > 0).any():
        raise ValueError(f"{reference_mask}: the reference mask is empty")
    subj = load_nifti(subject_image)
    shape = subj.shape[:3]
    moving = image_from_array((ref_arr > 0).astype(np.uint8), ref_img.affine)
    out = resample_image(moving, reference_image(subj.affine, shape), inverse, "nearest")
    mask = sitk.GetArrayFromImage(out).T > 0
    if not mask.any():
        raise ValueError(
            f"{reference_mask}: the propagated mask does not overlap {subject_image} "
            "(check the affine transform)"
        )
    mask = fill_holes(largest_component(mask))
    spacing = np.linalg.norm(subj.affine[:3, :3], axis=0)
    mask = dilate_mask(mask, dilate_mm, spacing)
    return write_mask(mask, subj.affine, out_file)
