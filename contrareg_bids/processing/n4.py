"""N4 bias-field correction (ANTs, through antspyx).

The defaults follow smriprep/nibabies (``N4BiasFieldCorrection`` with 4 levels of 50
iterations, convergence 1e-7, shrink factor 4, B-spline distance 200 mm). For tiny test
volumes use ``shrink=1`` or ``2`` and fewer iterations: a 32^3 image shrunk by 4 leaves too few
voxels to fit a spline.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..io.images import read_mask, read_volume, write_nifti
from ._ants import ants_image

__all__ = ["n4_bias_correct"]

PathLike = str | os.PathLike


def n4_bias_correct(
    in_file: PathLike,
    out_file: PathLike,
    mask_file: PathLike | None = None,
    *,
    shrink: int = 4,
    iterations: Sequence[int] = (50, 50, 50, 50),
    tolerance: float = 1e-7,
    spline_distance_mm: float = 200.0,
    bias_file: PathLike | None = None,
    seed: int | None = None,
) -> Path:
    """Divide ``in_file`` by a smooth multiplicative bias field estimated by N4.

    Parameters
    ----------
    mask_file
        Voxels that drive the fit (brain or head mask). Without it, the voxels with intensity
        above zero are used: N4 works on log intensities, so zero background must stay out.
    shrink
        Down-sampling factor of the fit (speed); the field is evaluated at full resolution.
    iterations
        Iterations per fitting level; the number of levels is ``len(iterations)`` (each level
        doubles the B-spline mesh).
    tolerance
        Convergence threshold of each level.
    spline_distance_mm
        Distance between B-spline knots of the first level, in mm (ANTs' ``-b [distance]``).
    bias_file
        Optional output of the estimated bias field.
    seed
        Accepted for a uniform interface; N4 is deterministic (no random sampling).

    The output keeps the input's header and grid; intensities <= 0 (outside the fit) are
    divided by the field like the others. Returns ``out_file``.
    """
    import ants

    del seed  # N4 has no randomness
    arr, img = read_volume(in_file)
    if int(shrink) < 1:
        raise ValueError(f"shrink must be >= 1, got {shrink}")
    if not iterations or any(int(i) < 0 for i in iterations):
        raise ValueError(f"iterations must be a non-empty list of counts, got {iterations}")
    mask = read_mask(mask_file, like=img) if mask_file is not None else arr > 0
    mask &= arr > 0
    if mask.sum() < 64:
        where = mask_file if mask_file is not None else in_file
        raise ValueError(f"{where}: fewer than 64 voxels with positive intensity in the mask")
    image = ants_image(arr, img.affine)
    ants_mask = ants_image(mask.astype(np.float32), img.affine)
    kwargs = {
        "mask": ants_mask,
        "shrink_factor": int(shrink),
        "convergence": {"iters": [int(i) for i in iterations], "tol": float(tolerance)},
        "spline_param": float(spline_distance_mm),
    }
    bias = ants.n4_bias_field_correction(image, return_bias_field=True, **kwargs).numpy()
    if not np.isfinite(bias).all() or (bias <= 0).any():
        raise RuntimeError(f"{in_file}: N4 produced an invalid bias field (non-positive/NaN)")
    corrected = arr / bias
    out = write_nifti(corrected.astype(np.float32), img.affine, out_file, header=img.header)
    if bias_file is not None:
        write_nifti(bias.astype(np.float32), img.affine, bias_file, header=img.header)
    return out
