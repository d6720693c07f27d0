"""Bring a subject/reference pair onto the model grid, and carry the result back out.

The registration network runs on the grid it was trained on (shape and spacing from the
model bundle), laid over the reference. The subject arrives there through its affine
pre-alignment in one interpolation; the network's displacement fields live on that grid;
the composite transforms written for users chain them with the affine
(docs/architecture.md, data flow).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io.images import load_nifti
from ..io.transforms import (
    read_ants_affine,
    read_displacement_nifti,
    write_composite,
)
from .grid import finer_grid, model_grid, resample_to_grid

PathLike = str | os.PathLike

#: Phase-sampled refinement (:func:`contrareg_bids.nn.refine.phase_view`) needs the reference's
#: own voxels at least this many times finer than the model grid's; below that the model grid
#: is about native and the pair is not written a second time.
MIN_PHASE_FACTOR = 1.5


@dataclass(frozen=True)
class ModelPair:
    moving: Path
    fixed: Path
    fixed_mask: Path | None
    grid_affine: np.ndarray
    #: the pair again on a finer grid of the same extent (``fine_factor``), else None
    fine_moving: Path | None = None
    fine_fixed: Path | None = None


def phase_sampling_factor(reference_path: PathLike, spacing: Sequence[float]) -> float | None:
    """How many times finer the reference's voxels are than the model grid's (finest axes),
    or None under :data:`MIN_PHASE_FACTOR`."""
    ref_spacing = load_nifti(reference_path).header.get_zooms()[:3]
    factor = float(min(spacing)) / float(min(ref_spacing))
    return round(factor, 3) if factor >= MIN_PHASE_FACTOR else None


def prepare_model_pair(
    moving_path: PathLike,
    reference_path: PathLike,
    affine_path: PathLike | None,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    out_dir: PathLike,
    reference_mask: PathLike | None = None,
    fine_factor: float | None = None,
) -> ModelPair:
    """Resample the (normalised) subject through its affine and the (normalised) reference
    onto the model grid centred on the reference brain; write both (and the mask).

    With ``fine_factor`` both are also written on a grid that many times finer over the same
    extent (:func:`~contrareg_bids.processing.grid.finer_grid`), for the phase-sampled
    refinement."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    grid = model_grid(reference_path, shape, spacing, mask=reference_mask)
    mov = out / "moving_model.nii.gz"
    fix = out / "fixed_model.nii.gz"
    resample_to_grid(moving_path, grid, shape, transform=affine_path, out_path=mov)
    resample_to_grid(reference_path, grid, shape, out_path=fix)
    mask = None
    if reference_mask is not None:
        mask = out / "fixed_model_mask.nii.gz"
        resample_to_grid(reference_mask, grid, shape, interpolation="nearest", out_path=mask)
    fine_mov = fine_fix = None
    if fine_factor is not None:
        fine, fine_shape = finer_grid(grid, shape, fine_factor)
        fine_mov, fine_fix = out / "moving_fine.nii.gz", out / "fixed_fine.nii.gz"
        resample_to_grid(moving_path, fine, fine_shape, transform=affine_path, out_path=fine_mov)
        resample_to_grid(reference_path, fine, fine_shape, out_path=fine_fix)
    return ModelPair(mov, fix, mask, grid, fine_mov, fine_fix)


def export_transforms(
    affine_path: PathLike | None,
    forward_field: PathLike,
    inverse_field: PathLike,
    out_dir: PathLike,
) -> tuple[Path, Path]:
    """Write ``(reference_to_subject.h5, subject_to_reference.h5)`` ITK composites.

    ``reference_to_subject`` maps reference points to subject points (it resamples the subject
    onto the reference grid): the displacement acts first, then the affine.
    ``subject_to_reference`` is its inverse: the inverse affine, then the inverse field.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fwd, fwd_aff = read_displacement_nifti(forward_field)
    inv, inv_aff = read_displacement_nifti(inverse_field)
    affine = read_ants_affine(affine_path) if affine_path is not None else None
    ref_to_subj = write_composite(
        out / "reference_to_subject.h5", affine, fwd, fwd_aff, affine_first=False
    )
    inverse = affine.GetInverse() if affine is not None else None
    subj_to_ref = write_composite(
        out / "subject_to_reference.h5", inverse, inv, inv_aff, affine_first=True
    )
    return ref_to_subj, subj_to_ref


@dataclass(frozen=True)
class TrainingVolumes:
    """One subject-session on the model grid, as the trainer reads it (see
    :func:`training_volumes`); ``fixed``/``labels`` are None when the subject has none."""

    moving: Path
    fixed: Path | None
    mask: Path
    labels: Path | None


def training_volumes(
    moving_path: PathLike,
    reference_path: PathLike,
    affine_path: PathLike | None,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    out_dir: PathLike,
    *,
    mask_path: PathLike,
    other_path: PathLike | None = None,
    labels_path: PathLike | None = None,
    reference_mask: PathLike | None = None,
) -> TrainingVolumes:
    """The train level's inputs of one subject, on the grid :func:`prepare_model_pair` uses.

    ``moving_path`` and ``other_path`` (the fixed modality, coregistered to the moving image)
    are normalised and masked on the subject grid; with ``mask_path`` (the subject's brain
    mask) and ``labels_path`` they go through the affine pre-alignment in one interpolation
    (images linear, mask nearest, labels one-hot linear), so that training sees subjects
    exactly as the participant level shows them to the network.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    grid = model_grid(reference_path, shape, spacing, mask=reference_mask)

    def put(src: PathLike | None, name: str, interpolation: str = "linear") -> Path | None:
        if src is None:
            return None
        path = out / name
        resample_to_grid(
            src, grid, shape, transform=affine_path, interpolation=interpolation, out_path=path
        )
        return path

    moving = put(moving_path, "moving_model.nii.gz")
    mask = put(mask_path, "moving_model_mask.nii.gz", "nearest")
    return TrainingVolumes(
        moving=moving,
        fixed=put(other_path, "fixed_modality_model.nii.gz"),
        mask=mask,
        labels=put(labels_path, "labels_model.nii.gz", "label"),
    )
