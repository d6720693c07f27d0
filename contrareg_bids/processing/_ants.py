"""Bridges between NIfTI arrays (read by :mod:`contrareg_bids.io.images`) and antspyx images.

ANTs images are converted from the nibabel array and affine (:func:`ants_image`), never read
with ``ants.image_read``, so that every module of the package agrees on the voxel-to-world
mapping (ITK and nibabel can read the same odd header differently). ``ANTsImage.numpy()``
returns the array in the file's voxel order, the same order nibabel uses.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import numpy as np

from ..io.transforms import sitk_geometry

PathLike = str | os.PathLike


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
