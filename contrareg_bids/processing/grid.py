"""The model grid: the reference grid at the model's spacing, cropped/padded to its shape.

The network runs on a fixed shape (the bundle's ``grid.shape``) and spacing (``grid.spacing``).
For a participant, the model grid keeps the reference's axes (rotation) and is centred on the
centre of the reference brain mask's bounding box (or on the image centre), so the whole brain
fits even when the reference image has a large field of view. When the spacing equals the
reference's, the grid's voxels are snapped onto reference voxels: the model grid is then a pure
crop/pad of the reference and resampling the reference onto it is exact.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from ..io.images import load_nifti, read_mask
from ..io.transforms import (
    Interpolation,
    array_from_image,
    read_transform,
    reference_image,
    resample_image,
    sitk_image_from_file,
    sitk_labels_from_file,
    write_nifti,
)

__all__ = ["grid_centre", "model_grid", "resample_to_grid"]

PathLike = str | os.PathLike


def _as_nifti(img: PathLike | nib.Nifti1Image) -> nib.Nifti1Image:
    return img if isinstance(img, nib.spatialimages.SpatialImage) else load_nifti(img)


def grid_centre(
    reference_img: PathLike | nib.Nifti1Image,
    mask: PathLike | np.ndarray | None = None,
) -> np.ndarray:
    """World (RAS mm) centre of the mask's bounding box, or of the image when no mask."""
    ref = _as_nifti(reference_img)
    shape = np.asarray(ref.shape[:3])
    if mask is None:
        centre_vox = (shape - 1) / 2.0
    else:
        m = read_mask(mask, like=ref) if not isinstance(mask, np.ndarray) else mask > 0
        if m.shape != tuple(shape):
            raise ValueError(f"mask shape {m.shape} differs from the reference {tuple(shape)}")
        idx = np.argwhere(m)
        if idx.size == 0:
            raise ValueError("the reference brain mask is empty")
        centre_vox = (idx.min(0) + idx.max(0)) / 2.0
    return ref.affine[:3, :3] @ centre_vox + ref.affine[:3, 3]


def reference_grid(
    image: PathLike, spacing: float | None = None
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Shape and spacing of the model grid a new model gets on the reference ``image``: the
    image's own, or with ``spacing`` (mm, isotropic) the shape that covers the same field of
    view at that size (``--model-spacing``: a coarser grid a CPU can train on)."""
    img = load_nifti(image)
    own = np.linalg.norm(img.affine[:3, :3], axis=0)
    if spacing is None:
        return tuple(int(s) for s in img.shape[:3]), tuple(float(s) for s in own)
    shape = np.ceil(np.asarray(img.shape[:3]) * own / spacing - 1e-6).astype(int)
    return tuple(int(s) for s in shape), (float(spacing),) * 3


def model_grid(
    reference_img: PathLike | nib.Nifti1Image,
    shape: Sequence[int],
    spacing: Sequence[float],
    mask: PathLike | np.ndarray | None = None,
) -> np.ndarray:
    """RAS affine of the model grid (``shape`` voxels of ``spacing`` mm) on the reference.

    The axes are the reference's (direction cosines kept), the voxel ``(shape - 1) / 2`` sits
    on :func:`grid_centre`, snapped to the nearest reference voxel when the spacings agree.
    """
    ref = _as_nifti(reference_img)
    shape_a = np.asarray([int(s) for s in shape], dtype=np.float64)
    sp = np.asarray([float(s) for s in spacing], dtype=np.float64)
    if shape_a.size != 3 or (shape_a < 1).any():
        raise ValueError(f"shape must be 3 positive integers, got {list(shape)}")
    if sp.size != 3 or (sp <= 0).any():
        raise ValueError(f"spacing must be 3 positive numbers (mm), got {list(spacing)}")
    ref_m = ref.affine[:3, :3]
    ref_sp = np.linalg.norm(ref_m, axis=0)
    rot = ref_m / ref_sp
    m = rot * sp
    centre = grid_centre(ref, mask)
    origin = centre - m @ ((shape_a - 1) / 2.0)
    if np.allclose(sp, ref_sp, rtol=1e-5, atol=1e-6):
        start = np.linalg.solve(ref_m, origin - ref.affine[:3, 3])
        origin = ref_m @ np.round(start) + ref.affine[:3, 3]
    affine = np.eye(4)
    affine[:3, :3] = m
    affine[:3, 3] = origin
    return affine


def resample_to_grid(
    image_path: PathLike,
    target_affine: np.ndarray,
    target_shape: Sequence[int],
    transform: PathLike | sitk.Transform | None = None,
    interpolation: Interpolation = "linear",
    out_path: PathLike | None = None,
    default_value: float = 0.0,
) -> np.ndarray:
    """Resample an image onto a grid, optionally through a reference -> subject transform.

    ``out(x) = image(T(x))`` for the world point ``x`` of each target voxel; with the affine of
    :func:`~contrareg_bids.processing.affine.affine_register` as ``T`` a subject image lands on
    the model grid in one interpolation. ``"nearest"``/``"label"`` keep the label map's
    integer type. Returns the ``(X, Y, Z)`` array and writes ``out_path`` when given.
    """
    is_label = interpolation in ("nearest", "label")
    moving = sitk_labels_from_file(image_path) if is_label else sitk_image_from_file(image_path)
    tx = None
    if transform is not None:
        tx = transform if isinstance(transform, sitk.Transform) else read_transform(transform)
    ref = reference_image(target_affine, target_shape)
    out = array_from_image(resample_image(moving, ref, tx, interpolation, default_value))
    if out_path is not None:
        write_nifti(out, target_affine, out_path, dtype=None if is_label else np.float32)
    return out


def finer_grid(
    affine: np.ndarray, shape: Sequence[int], factor: float
) -> tuple[np.ndarray, tuple[int, ...]]:
    """A grid about ``factor`` times finer over exactly the extent of ``(affine, shape)``.

    Its first and last voxel centres are those of the given grid along every axis (the
    ``align_corners`` correspondence the displacement fields use), so model-grid voxel
    coordinates map onto it by one scale per axis.
    """
    if not factor > 0:
        raise ValueError(f"factor must be > 0, got {factor}")
    fine_shape = tuple(round((int(s) - 1) * factor) + 1 for s in shape)
    scale = np.array(
        [(int(s) - 1) / max(n - 1, 1) for s, n in zip(shape, fine_shape, strict=True)]
    )
    fine = np.array(affine, dtype=np.float64, copy=True)
    fine[:3, :3] = fine[:3, :3] * scale  # column k: the step along array axis k
    return fine, fine_shape
