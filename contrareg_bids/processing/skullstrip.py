"""Brain extraction for scans with skull and scalp (``--skull-strip``).

The reference template's brain mask is carried onto the subject by ANTs registrations of the
reference (a brain in a background of zeros) to the subject's head, as nibabies extracts the
brain with a neonatal template's brain prior, but offline and without downloaded weights:

1. the head: the voxels brighter than a tenth of the head's robust maximum, largest component,
   holes filled (the background outside it is noise);
2. an affine of the reference onto the subject, its metric restricted to the head;
3. the same again, its metric restricted to the first estimate of the brain dilated by
   :data:`REFINE_MARGIN_MM` (skull and scalp are mostly out of it now);
4. a short SyN of the reference onto the subject inside that margin (the subject's own brain
   shape), the reference mask carried through it (linear), kept above 0.5, inside the head,
   largest component, holes filled.

The subject's image with the mask applied is what the affine to the reference then sees.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io.images import read_mask, read_volume, write_nifti
from ..io.transforms import apply_transform
from .affine import affine_register
from .masks import dilate_mask, fill_holes, largest_component, mask_from_skullstripped, write_mask

__all__ = ["BrainExtraction", "extract_brain", "head_mask", "needs_skull_strip"]

PathLike = str | os.PathLike

#: Brain estimate dilated by this much (mm) bounds the metric of the refining registrations.
REFINE_MARGIN_MM = 6.0
#: The head: voxels above this fraction of the 99th percentile of the image.
HEAD_THRESHOLD = 0.1
#: SyN iterations per level of the refining step (coarse to fine; the full resolution is left
#: out: the mask needs the brain's outline, not its folds).
SYN_ITERATIONS = (40, 20, 0)


@dataclass(frozen=True)
class BrainExtraction:
    """``mask``: the brain mask on the subject's grid; ``brain``: the image inside it."""

    mask: Path
    brain: Path


def needs_skull_strip(image: PathLike, mode: str) -> bool:
    """Whether ``--skull-strip mode`` extracts the brain of ``image``: always (``force``),
    never (``skip``), or (``auto``) when it is not already a brain in a background of exact
    zeros (:func:`~.masks.mask_from_skullstripped`)."""
    if mode not in ("auto", "force", "skip"):
        raise ValueError(f"--skull-strip must be auto, force or skip, got {mode!r}")
    if mode != "auto":
        return mode == "force"
    return mask_from_skullstripped(image) is None


def head_mask(array: np.ndarray) -> np.ndarray:
    """The head: above :data:`HEAD_THRESHOLD` of the 99th percentile of the positive voxels,
    the largest component with its holes filled."""
    arr = np.asarray(array, dtype=np.float32)
    positive = arr[arr > 0]
    if positive.size == 0:
        raise ValueError("the image has no positive voxel: no head to extract a brain from")
    head = arr > HEAD_THRESHOLD * float(np.percentile(positive, 99))
    return fill_holes(largest_component(head))


def extract_brain(
    image: PathLike,
    reference: PathLike,
    reference_mask: PathLike,
    out_dir: PathLike,
    *,
    seed: int | None = 0,
    sloppy: bool = False,
) -> BrainExtraction:
    """Extract the brain of ``image`` (bias-corrected, with skull) with the ``reference``
    template and its ``reference_mask``; writes ``brain_mask.nii.gz`` and
    ``brain.nii.gz`` in ``out_dir`` (see the module's docstring for the steps)."""
    import ants

    from ._ants import ants_image, ants_seed

    arr, img = read_volume(image)
    spacing = [float(z) for z in img.header.get_zooms()[:3]]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    schedule = (
        {"iterations": (200, 100, 20), "shrink_factors": (4, 2, 1), "smoothing_sigmas": (2, 1, 0)}
        if sloppy
        else {}
    )
    work = Path(tempfile.mkdtemp(prefix=".skullstrip", dir=out_dir))
    try:
        head = head_mask(arr)
        head_path = write_mask(head, img.affine, work / "head.nii.gz")
        estimate = head
        transform = None
        for step, metric_mask in enumerate(("head", "estimate")):
            fixed_mask = head_path
            if metric_mask == "estimate":
                margin = dilate_mask(estimate, REFINE_MARGIN_MM, spacing) & head
                fixed_mask = write_mask(margin, img.affine, work / "margin.nii.gz")
            res = affine_register(
                image, reference, work / f"affine{step}_", seed=seed, fixed_mask=fixed_mask,
                **schedule,
            )  # fmt: skip
            transform = res.transform_path
            prob = apply_transform(reference_mask, image, transform, work / f"prob{step}.nii.gz")
            estimate = (read_volume(prob)[0] > 0.5) & head
        margin = dilate_mask(estimate, REFINE_MARGIN_MM, spacing) & head
        fixed = ants_image(arr, img.affine)
        ref_arr, ref_img = read_volume(reference)
        moving = ants_image(ref_arr, ref_img.affine)
        with ants_seed(seed):
            reg = ants.registration(
                fixed,
                moving,
                type_of_transform="SyNOnly",
                initial_transform=str(transform),
                mask=ants_image(margin.astype(np.float32), img.affine),
                reg_iterations=SYN_ITERATIONS,
                outprefix=str(work / "syn_"),
            )
        warped_mask = ants.apply_transforms(
            fixed,
            ants_image(read_mask(reference_mask, like=ref_img).astype(np.float32), ref_img.affine),
            reg["fwdtransforms"],
            interpolator="linear",
        ).numpy()
        brain_mask = fill_holes(largest_component((warped_mask > 0.5) & head))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if brain_mask.sum() == 0:
        raise ValueError(
            f"{image}: brain extraction found no brain (the reference's mask fell outside the "
            "head); check the image's orientation and field of view, or give a mask with "
            "--derivatives, or --skull-strip skip for a skull-stripped image"
        )
    mask_path = write_mask(brain_mask, img.affine, out_dir / "brain_mask.nii.gz")
    brain = write_nifti(
        np.where(brain_mask, arr, 0).astype(np.float32), img.affine, out_dir / "brain.nii.gz"
    )
    return BrainExtraction(mask_path, brain)
