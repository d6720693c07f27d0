"""Bridges between NIfTI files (read with nibabel) and antspyx images.

ANTs images are built from the nibabel array and affine (:func:`ants_image`), never with
``ants.image_read``, so that every module of the package agrees on the voxel-to-world mapping
(ITK and nibabel can read the same odd header differently). ``ANTsImage.numpy()`` returns the
array in the file's voxel order, the same order nibabel uses.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np

from ..io.transforms import sitk_geometry

PathLike = str | os.PathLike


def read_volume(path: PathLike, dtype: type = np.float32) -> tuple[np.ndarray, nib.Nifti1Image]:
    """``(array (X, Y, Z), image)`` of a 3-D NIfTI; a trailing singleton 4th axis is dropped."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        img = nib.load(str(path))
        shape = img.shape
        if len(shape) == 4 and shape[3] == 1:
            shape = shape[:3]
        if len(shape) != 3:
            raise ValueError(f"expected a 3-D image, got shape {img.shape}")
        arr = np.asarray(img.get_fdata(dtype=np.float64), dtype=dtype).reshape(shape)
    except (OSError, ValueError, nib.filebasedimages.ImageFileError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    if not np.isfinite(arr).all():
        raise ValueError(f"{path}: contains NaN or infinite values")
    return arr, img


def read_mask(path: PathLike, like: nib.Nifti1Image | None = None) -> np.ndarray:
    """Boolean mask (``> 0``); when ``like`` is given the mask must share its grid."""
    arr, img = read_volume(path)
    if like is not None:
        if arr.shape != like.shape[:3] or not np.allclose(img.affine, like.affine, atol=1e-4):
            raise ValueError(
                f"{path}: mask grid {arr.shape} does not match the image grid {like.shape[:3]} "
                "(shape and affine must agree)"
            )
    mask = arr > 0
    if not mask.any():
        raise ValueError(f"{path}: the mask is empty")
    return mask


def ants_image(array: np.ndarray, affine: np.ndarray):
    """antspyx image of an ``(X, Y, Z)`` array on the grid of the NIfTI ``affine``."""
    import ants

    origin, spacing, direction = sitk_geometry(affine)
    return ants.from_numpy(
        np.ascontiguousarray(array, dtype=np.float32),
        origin=list(origin),
        spacing=list(spacing),
        direction=np.asarray(direction).reshape(3, 3),
    )


@contextlib.contextmanager
def ants_seed(seed: int | None) -> Iterator[None]:
    """Seed antsRegistration's random sampling for the duration of the block.

    antspyx 0.6 ignores a ``random_seed=`` argument; it passes ``--random-seed`` only from
    the module-level ``ants.config._random_seed``, which is set here and restored after.
    """
    import ants.config as cfg

    old = cfg._random_seed
    cfg._random_seed = None if seed is None else int(seed)
    try:
        yield
    finally:
        cfg._random_seed = old
