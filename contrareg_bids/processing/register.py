"""Deformable registration of two images on the model grid: ContraReg, or ANTs SyN.

Both functions take the same inputs (moving and fixed NIfTI on ONE grid, already normalised and
resampled onto the model grid by the preprocessing steps) and write the same outputs, so a
workflow can swap one for the other:

* ``fwd_disp.nii.gz``: ITK displacement field on the fixed grid, fixed -> moving points
  (resampling the moving image with it gives ``moved``);
* ``inv_disp.nii.gz``: ITK displacement field on the moving grid, moving -> fixed points;
* ``moved.nii.gz`` (moving on the fixed grid) and ``fixed_moved.nii.gz`` (fixed on the
  moving grid).

Fields are 5-D NIfTI ``(X, Y, Z, 1, 3)``, intent vector, LPS millimetres
(:func:`contrareg_bids.io.transforms.write_displacement_nifti`); combine them with the affine
pre-alignment into composites with :func:`contrareg_bids.io.transforms.write_composite`.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

from ..io.images import read_volume, write_nifti
from ..io.transforms import read_displacement_nifti, write_displacement_nifti
from ._ants import ants_image, ants_seed

if TYPE_CHECKING:
    from ..io.bundle import ModelBundle
    from ..settings import RegistrationSettings

__all__ = ["RegResult", "ants_syn_register", "contrareg_register"]

PathLike = str | os.PathLike

FWD_NAME = "fwd_disp.nii.gz"
INV_NAME = "inv_disp.nii.gz"
MOVED_NAME = "moved.nii.gz"
FIXED_MOVED_NAME = "fixed_moved.nii.gz"


@dataclass(frozen=True)
class RegResult:
    """Files written by one registration (see the module docstring for their meaning)."""

    forward_field: Path
    inverse_field: Path
    moved: Path
    fixed_moved: Path
    method: str
    lam: float | None = None
    #: JSON trace of the per-subject lambda search (``lam="auto"``), else None
    lambda_search: Path | None = None


def _read_pair(
    moving_path: PathLike, fixed_path: PathLike
) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Image, nib.Nifti1Image]:
    moving, mov_img = read_volume(moving_path)
    fixed, fix_img = read_volume(fixed_path)
    for path, img in ((moving_path, mov_img), (fixed_path, fix_img)):
        codes = nib.aff2axcodes(img.affine)
        if codes != ("R", "A", "S"):
            raise ValueError(
                f"{path}: voxel axes are {''.join(codes)}, expected RAS (reorient first: "
                "displacements are stored in RAS voxel order)"
            )
    if moving.shape != fixed.shape or not np.allclose(mov_img.affine, fix_img.affine, atol=1e-3):
        raise ValueError(
            f"{moving_path} {moving.shape} and {fixed_path} {fixed.shape} must share one grid "
            "(same shape and affine): resample both onto the model grid first"
        )
    return moving, fixed, mov_img, fix_img


def _read_fine_pair(
    moving_path: PathLike, fixed_path: PathLike, grid_affine: np.ndarray, shape: tuple
) -> tuple[np.ndarray, np.ndarray]:
    """The pair on a finer grid; it must span the model grid's extent exactly (first and last
    voxel centres shared), as :func:`~contrareg_bids.processing.grid.finer_grid` makes it."""
    moving, fixed, _, fix_img = _read_pair(moving_path, fixed_path)
    last = np.append(np.asarray(shape, dtype=float) - 1, 1.0)
    fine_last = np.append(np.asarray(fixed.shape, dtype=float) - 1, 1.0)
    corners = (grid_affine[:3, 3], (grid_affine @ last)[:3])
    fine_corners = (fix_img.affine[:3, 3], (fix_img.affine @ fine_last)[:3])
    if not all(np.allclose(a, b, atol=1e-2) for a, b in zip(corners, fine_corners, strict=True)):
        raise ValueError(
            f"{fixed_path}: its grid does not span the model grid's extent (first/last voxel "
            "centres differ): write it with prepare_model_pair(fine_factor=...)"
        )
    return moving, fixed


def _outputs(out_dir: PathLike, prefix: str) -> tuple[Path, Path, Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return tuple(out / f"{prefix}{n}" for n in (FWD_NAME, INV_NAME, MOVED_NAME, FIXED_MOVED_NAME))


def contrareg_register(
    moving_path: PathLike,
    fixed_path: PathLike,
    bundle_path: PathLike | ModelBundle,
    settings: RegistrationSettings,
    out_dir: PathLike = ".",
    *,
    prefix: str = "",
    amp: bool = False,
    fine_pair: tuple[PathLike, PathLike] | None = None,
) -> RegResult:
    """Run a trained ContraReg network (a model bundle) on a pair on the model grid, as
    ``settings`` say (:class:`~contrareg_bids.settings.RegistrationSettings`; its ``model``
    is not read: the bundle is ``bundle_path``).

    ``bundle_path`` is a ``.safetensors`` bundle or an already loaded
    :class:`~contrareg_bids.io.bundle.ModelBundle` (to reuse one across subjects). The
    images must have the bundle's grid shape; a different spacing only warns (the network
    still runs, but was trained at another resolution). ``settings.lam`` is the
    regularisation weight of a lambda-conditioned network (warned about when outside the
    trained range).

    Lambda ``"auto"`` chooses the lambda per pair: the smallest in the trained range whose
    forward and inverse warps fold at most ``settings.max_folding`` % of voxels
    (:func:`~contrareg_bids.processing.lambda_search.choose_lambda`); the search trace is
    written to ``lambda_search.json`` and the chosen lambda is ``RegResult.lam``.

    ``settings.refine.steps > 0`` refines the network's velocity on this pair with the
    bundle's own objective at the chosen lambda (:mod:`contrareg_bids.nn.refine`; after the
    search with lambda ``"auto"``). ``fine_pair`` (moving, fixed on a finer grid over the
    model grid's extent, :func:`~contrareg_bids.processing.model_space.prepare_model_pair`)
    makes every refinement step see the pair at a random sub-voxel phase of the model grid.

    ``settings.fine.steps > 0`` adds the fine stage
    (:func:`~contrareg_bids.nn.refine.refine_fine`): the velocity optimised again with
    MIND-SSC on the grid of ``fine_pair`` (the model grid without one); the fields and
    images written are then on that grid.
    """
    from ..io.bundle import ModelBundle, load_model
    from ..nn.inference import register_arrays

    bundle = bundle_path if isinstance(bundle_path, ModelBundle) else load_model(bundle_path)
    moving, fixed, _, fix_img = _read_pair(moving_path, fixed_path)
    grid = bundle.metadata.grid
    if tuple(fixed.shape) != tuple(grid.shape):
        raise ValueError(
            f"{fixed_path}: grid shape {fixed.shape} differs from the model's {grid.shape} "
            "(resample onto the model grid first)"
        )
    spacing = np.linalg.norm(fix_img.affine[:3, :3], axis=0)
    if not np.allclose(spacing, grid.spacing, rtol=0.01):
        warnings.warn(
            f"{fixed_path}: voxel spacing {spacing.round(3).tolist()} mm differs from the "
            f"model's {list(grid.spacing)} mm",
            stacklevel=2,
        )
    lo, hi = bundle.metadata.lambda_range
    lam, device = settings.lam, settings.device
    refining, fine_stage = settings.refine.steps > 0, settings.fine.steps > 0
    search_json = None
    if settings.auto_lambda:
        from .lambda_search import register_auto

        res, lam, search_json = register_auto(
            bundle, moving, fixed, settings.max_folding, device, amp, Path(out_dir), prefix
        )
    if bundle.regnet.hypernet is not None and not lo <= lam <= hi:
        warnings.warn(
            f"lambda {lam} is outside the range the model was trained on [{lo}, {hi}]",
            stacklevel=2,
        )
    if search_json is None or refining or fine_stage:
        objective = None
        if refining:
            from ..training.objective import objective_from_bundle

            objective = objective_from_bundle(bundle)
        fine = None
        if (refining or fine_stage) and fine_pair is not None:
            fine = _read_fine_pair(*fine_pair, fix_img.affine, fixed.shape)
        res = register_arrays(
            bundle.regnet,
            moving,
            fixed,
            lam,
            device,
            amp=amp,
            refine=settings.refine if refining else None,
            objective=objective,
            fine_images=fine,
            fine=settings.fine if fine_stage else None,  # deterministic: no sampling
        )
    fwd, inv, moved, fixed_moved = _outputs(out_dir, prefix)
    affine = fix_img.affine  # one grid: the moving grid's affine is the same
    if res.on_fine_grid:
        affine = nib.load(fine_pair[1]).affine
    write_displacement_nifti(res.forward_disp, affine, fwd)
    write_displacement_nifti(res.inverse_disp, affine, inv)
    write_nifti(res.moved, affine, moved, dtype=np.float32)
    write_nifti(res.fixed_moved, affine, fixed_moved, dtype=np.float32)
    return RegResult(fwd, inv, moved, fixed_moved, "contrareg", lam, search_json)


#: SyN iterations per level (coarse to fine). antspyx's default ``(40, 20, 0)`` runs no
#: full-resolution iteration; with these, same-modality SyN on the development atlas gains
#: 3-5x more over affine alignment. The baseline we compare with is the strong one.
SYN_ITERATIONS: tuple[int, int, int] = (100, 70, 50)


def ants_syn_register(
    moving_path: PathLike,
    fixed_path: PathLike,
    out_dir: PathLike = ".",
    *,
    seed: int | None = None,
    iterations: Sequence[int] = SYN_ITERATIONS,
    transform_type: str = "SyN",
    metric: str = "mattes",
    prefix: str = "",
) -> RegResult:
    """The ANTs baseline: antspyx ``SyN`` (affine stage + SyN, Mattes MI, :data:`SYN_ITERATIONS`).

    ``iterations`` are SyN's per-level iterations (antspyx ``reg_iterations``; fewer for quick
    tests). The forward transforms (warp and affine) are composed by ``antsApplyTransforms``
    into one displacement field on the fixed grid and the inverse ones into one on the moving
    grid, so the outputs have exactly the form of :func:`contrareg_register`'s. ``seed`` sets
    ANTs' ``--random-seed`` (the affine stage samples voxels at random).
    """
    import ants

    moving, fixed, mov_img, fix_img = _read_pair(moving_path, fixed_path)
    fix_a = ants_image(fixed, fix_img.affine)
    mov_a = ants_image(moving, mov_img.affine)
    fwd, inv, moved, fixed_moved = _outputs(out_dir, prefix)
    work = Path(out_dir) / f".{prefix}syn_work{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    try:
        with ants_seed(seed):
            reg = ants.registration(
                fix_a,
                mov_a,
                type_of_transform=transform_type,
                outprefix=str(work / "reg_"),
                aff_metric=metric,
                syn_metric=metric,
                reg_iterations=tuple(int(i) for i in iterations),
            )
        fwd_tmp = ants.apply_transforms(
            fix_a, mov_a, reg["fwdtransforms"], compose=str(work / "fwd_")
        )
        n_inv = len(reg["invtransforms"])
        which = [str(t).endswith(".mat") for t in reg["invtransforms"]]
        inv_tmp = ants.apply_transforms(
            mov_a,
            fix_a,
            reg["invtransforms"],
            whichtoinvert=which if n_inv > 1 else None,
            compose=str(work / "inv_"),
        )
        if not fwd_tmp or not inv_tmp:
            raise RuntimeError(
                f"antsApplyTransforms could not compose the SyN transforms of {moving_path}"
            )
        fwd_disp, _ = read_displacement_nifti(fwd_tmp)
        inv_disp, _ = read_displacement_nifti(inv_tmp)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_displacement_nifti(fwd_disp, fix_img.affine, fwd)
    write_displacement_nifti(inv_disp, mov_img.affine, inv)
    write_nifti(reg["warpedmovout"].numpy(), fix_img.affine, moved, dtype=np.float32)
    write_nifti(reg["warpedfixout"].numpy(), mov_img.affine, fixed_moved, dtype=np.float32)
    return RegResult(fwd, inv, moved, fixed_moved, "ants-syn", None)
