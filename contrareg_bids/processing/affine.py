"""Affine (or rigid) pre-alignment of a subject image to the reference (ANTs, Mattes MI).

Step 5 of the data flow. The transform written is the ITK/ANTs ``*0GenericAffine.mat`` of
``antsRegistration`` with the REFERENCE as fixed image and the SUBJECT as moving image: it maps
reference points to subject points (LPS mm), the direction every transform of this package
follows. Resample a subject image into reference space with it directly; bring reference data
(masks, labels) into subject space with its inverse.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ..io.images import read_mask, read_volume, write_nifti
from ..io.transforms import atomic_output
from ._ants import ants_image, ants_seed, run_reproducibly

__all__ = ["AffineResult", "affine_register"]

PathLike = str | os.PathLike
TransformType = Literal["Translation", "Rigid", "Similarity", "Affine"]


@dataclass(frozen=True)
class AffineResult:
    """``transform_path``: ITK ``.mat`` mapping reference -> subject points; ``moved_path``:
    the subject resampled on the reference grid (linear)."""

    transform_path: Path
    moved_path: Path


def affine_register(
    fixed_path: PathLike,
    moving_path: PathLike,
    out_prefix: PathLike,
    *,
    metric: Literal["mattes", "GC", "meansquares"] = "mattes",
    transform_type: TransformType = "Affine",
    seed: int | None = None,
    fixed_mask: PathLike | None = None,
    moving_mask: PathLike | None = None,
    iterations: Sequence[int] = (2100, 1200, 1200, 10),
    shrink_factors: Sequence[int] = (6, 4, 2, 1),
    smoothing_sigmas: Sequence[float] = (3, 2, 1, 0),
    sampling_rate: float = 0.2,
) -> AffineResult:
    """Register ``moving_path`` (subject) to ``fixed_path`` (reference) with antsRegistration.

    Writes ``<out_prefix>0GenericAffine.mat`` and ``<out_prefix>Warped.nii.gz``. ``metric``
    ``"mattes"`` (mutual information, 32 bins) suits T1w <-> T2w; the optimisation samples
    ``sampling_rate`` of the voxels at random: with ``seed`` (ANTs' ``--random-seed``) the
    registration runs in a worker process on one ITK thread
    (:func:`~._ants.run_reproducibly`), so the same inputs give a bitwise-identical
    transform; without it, on this process's threads, runs differ by round-off and sampling.
    The iteration/shrink/smoothing schedules (one entry per level) default to
    antspyx's; fewer levels and iterations make small test images fast. Masks restrict the
    metric to the brain.
    """
    levels = {len(iterations), len(shrink_factors), len(smoothing_sigmas)}
    if len(levels) != 1 or not iterations:
        raise ValueError(
            "iterations, shrink_factors and smoothing_sigmas need one entry per level, got "
            f"{list(iterations)}, {list(shrink_factors)}, {list(smoothing_sigmas)}"
        )
    if transform_type not in ("Translation", "Rigid", "Similarity", "Affine"):
        raise ValueError(
            f"transform_type must be Translation/Rigid/Similarity/Affine, got {transform_type!r}"
        )
    settings = {
        "metric": metric,
        "transform_type": transform_type,
        "seed": seed,
        "fixed_mask": fixed_mask,
        "moving_mask": moving_mask,
        "iterations": tuple(int(i) for i in iterations),
        "shrink_factors": tuple(int(s) for s in shrink_factors),
        "smoothing_sigmas": tuple(float(s) for s in smoothing_sigmas),
        "sampling_rate": float(sampling_rate),
    }
    if seed is None:
        return _affine_register(fixed_path, moving_path, out_prefix, **settings)
    return run_reproducibly(_affine_register, fixed_path, moving_path, out_prefix, **settings)


def _affine_register(
    fixed_path: PathLike,
    moving_path: PathLike,
    out_prefix: PathLike,
    *,
    metric: str,
    transform_type: str,
    seed: int | None,
    fixed_mask: PathLike | None,
    moving_mask: PathLike | None,
    iterations: tuple[int, ...],
    shrink_factors: tuple[int, ...],
    smoothing_sigmas: tuple[float, ...],
    sampling_rate: float,
) -> AffineResult:
    """:func:`affine_register` in this process (on its ITK threads)."""
    import ants

    fixed_arr, fixed_img = read_volume(fixed_path)
    moving_arr, moving_img = read_volume(moving_path)
    fixed = ants_image(fixed_arr, fixed_img.affine)
    moving = ants_image(moving_arr, moving_img.affine)
    kwargs = {}
    if fixed_mask is not None:
        kwargs["mask"] = ants_image(read_mask(fixed_mask, like=fixed_img), fixed_img.affine)
    if moving_mask is not None:
        kwargs["moving_mask"] = ants_image(
            read_mask(moving_mask, like=moving_img), moving_img.affine
        )
    prefix = str(out_prefix)
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    work = Path(prefix + f".work{os.getpid()}")
    work.mkdir(parents=True, exist_ok=True)
    try:
        with ants_seed(seed):
            reg = ants.registration(
                fixed,
                moving,
                type_of_transform=transform_type,
                outprefix=str(work / "reg_"),
                aff_metric=metric,
                aff_random_sampling_rate=sampling_rate,
                aff_iterations=iterations,
                aff_shrink_factors=shrink_factors,
                aff_smoothing_sigmas=smoothing_sigmas,
                **kwargs,
            )
        mats = [t for t in reg["fwdtransforms"] if str(t).endswith(".mat")]
        if len(mats) != 1:
            raise RuntimeError(
                f"antsRegistration of {moving_path} to {fixed_path} wrote no affine "
                f"(got {reg['fwdtransforms']})"
            )
        transform_path = Path(prefix + "0GenericAffine.mat")
        with atomic_output(transform_path) as tmp:
            shutil.copyfile(mats[0], tmp)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    moved = reg["warpedmovout"].numpy()
    moved_path = write_nifti(
        moved.astype(np.float32), fixed_img.affine, prefix + "Warped.nii.gz", header=None
    )
    return AffineResult(transform_path, moved_path)
