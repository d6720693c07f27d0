"""The participant level's metrics of one registration: ``metrics.tsv`` + ``metrics.json``.

Plain functions (the ``RegistrationMetrics`` interface is a shell over :func:`metrics_row` and
:func:`write_metrics`); every number comes from the one scorer,
:func:`contrareg_bids.metrics.registration_metrics`. The columns keep the meaning
``docs/outputs.md`` documents: folding % over the whole model grid, std log|J| inside the
reference brain mask, Dice in subject space over the labels both maps share.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..io.atomic import write_text_atomic, write_tsv_atomic
from ..io.derivatives import entities, read_label_table
from ..io.images import load_nifti, read_labels, read_mask
from ..io.transforms import (
    array_from_image,
    image_from_array,
    read_ants_affine,
    read_displacement_nifti,
    reference_image,
    resample_image,
    sitk_labels_from_file,
)
from ..metrics import label_correspondence, registration_metrics, shared_labels

__all__ = [
    "COLUMNS_HELP",
    "affine_only_dice",
    "lambda_search_columns",
    "mask_on_grid",
    "metrics_row",
    "subject_dice",
    "warp_quality",
    "write_metrics",
]

PathLike = str | os.PathLike

LOGGER = logging.getLogger("contrareg_bids.metrics")

COLUMNS_HELP = {
    "folding_percent": "Voxels of the model grid where the forward warp folds (det J <= 0), %",
    "std_log_jacobian": "Standard deviation of log det J of the forward warp in the brain",
    "mean_dice": "Mean Dice of the given subject labels vs the reference labels in subject space",
    "label_matching": "How subject and reference label values were matched (dseg.tsv names, "
    "or values under the same desc), or why no Dice was computed",
    "mean_dice_affine": "Mean Dice as mean_dice (same labels, same label interpolation), the "
    "reference labels carried into the subject by the affine pre-alignment only: the baseline",
    "lambda": "Regularisation weight used",
    "lambda_selection": "'auto': lambda chosen per subject under a folding budget",
    "lambda_max_folding": "Folding budget of --lambda auto (% voxels, forward and inverse)",
    "lambda_within_budget": "Whether the chosen lambda kept both warps within the budget",
    "lambda_probes": "Registrations run by the lambda search (trace in LambdaSearch)",
    "method": "Registration method",
    "model": "File name of the model bundle (ContraReg)",
    "model_sha256": "sha256 of the model bundle's bytes",
    "refine_steps": "Test-time refinement steps with the model's objective (--refine-steps)",
    "fine_steps": "Fine-stage steps at the reference's resolution, MIND-SSC (--fine-steps)",
    "seed": "Random seed of the run (--random-seed)",
    "reference": "The reference the subject was registered to",
    "reference_template": "TemplateFlow identifier of the reference (a template reference)",
    "brain_mask": "Where the subject's brain mask came from: 'given' (--derivatives), "
    "'extracted' (--skull-strip), 'reference' (the reference's mask through the affine)",
}


def mask_on_grid(mask_path: PathLike, affine: np.ndarray, shape) -> np.ndarray:
    """The mask on the grid of ``(affine, shape)``: as stored when it is that grid, else
    resampled (nearest) -- the fine stage writes its fields on a finer grid than the model
    grid's mask."""
    img = load_nifti(mask_path)
    if tuple(img.shape[:3]) == tuple(shape) and np.allclose(img.affine, affine, atol=1e-4):
        return read_mask(mask_path, allow_empty=True)
    from .grid import resample_to_grid

    return resample_to_grid(mask_path, affine, shape, interpolation="nearest") > 0


def warp_quality(forward_field: PathLike, mask_path: PathLike | None = None) -> dict[str, float]:
    """Folding % (whole model grid) and std log|J| (inside the mask) of a displacement field
    on disk, computed on the raw field in its own voxel units: the metrics table's numbers,
    which the Jacobian reportlet shows too."""
    disp, grid = read_displacement_nifti(forward_field)
    mask = None if mask_path is None else mask_on_grid(mask_path, grid, disp.shape[1:])
    scores = registration_metrics(None, None, disp, mask)
    return {
        "folding_percent": scores["folding_percent_grid"],
        "std_log_jacobian": scores["std_log_jacobian"],
    }


def subject_dice(
    subject_labels: PathLike,
    reference_labels: PathLike,
    *,
    reference_dseg: PathLike | None = None,
    subject_labels_tsv: PathLike | None = None,
    reference_labels_tsv: PathLike | None = None,
    affine: PathLike | None = None,
) -> dict[str, Any]:
    """Dice of the subject's labels and the reference labels warped into subject space, only
    where the two schemes are known to mean the same structures (:func:`label_correspondence`).

    Columns: ``label_matching``, ``mean_dice``, with ``reference_dseg`` and ``affine``
    ``mean_dice_affine`` (the baseline), then ``dice_<label>``. The subject's labels are read
    once; when they are not on the grid of the warped reference labels (the user's voxel
    order, maybe another grid) they are resampled onto it (nearest neighbour).
    """
    match = label_correspondence(
        read_label_table(subject_labels_tsv) if subject_labels_tsv is not None else None,
        read_label_table(reference_labels_tsv) if reference_labels_tsv is not None else None,
        entities(subject_labels).get("desc"),
        entities(reference_dseg).get("desc") if reference_dseg is not None else None,
    )
    cols: dict[str, Any] = {"label_matching": match.how}
    if not match.comparable:
        LOGGER.warning(
            "no Dice for %s against the reference labels %s: %s. Give label maps of the "
            "same scheme (--labels-desc) or dseg.tsv tables with label names",
            subject_labels,
            reference_dseg,
            match.how,
        )
        cols["mean_dice"] = float("nan")
        return cols
    ref, ref_img = read_labels(reference_labels)
    subj, subj_img = read_labels(subject_labels, dtype=None)
    if subj.shape != ref.shape or not np.allclose(subj_img.affine, ref_img.affine, atol=1e-3):
        on_grid = resample_image(
            image_from_array(subj, subj_img.affine),
            reference_image(ref_img.affine, ref.shape),
            None,
            "nearest",
        )
        subj = array_from_image(on_grid)
    subj = match.apply(subj.astype(np.int64))
    common = shared_labels(subj, ref)
    scores = registration_metrics(subj, ref, None, labels=common)
    cols["mean_dice"] = scores["mean_dice"]
    if reference_dseg is not None and affine is not None:
        cols["mean_dice_affine"] = affine_only_dice(
            subj, reference_dseg, affine, reference_labels, common
        )
    cols.update({f"dice_{k}": v for k, v in scores["dice_per_label"].items()})
    return cols


def affine_only_dice(
    subject_labels: np.ndarray,
    reference_dseg: PathLike,
    affine: PathLike,
    grid: PathLike,
    labels: list[int],
    interpolation: str = "label",
) -> float:
    """Mean Dice of ``subject_labels`` (an array on ``grid``) and the reference labels carried
    onto ``grid`` by the INVERSE of the reference -> subject ``affine`` alone, over
    ``labels``: what the deformable step adds is measured against this.

    ``interpolation`` defaults to the one that makes ``mean_dice`` (one-hot linear,
    ``"label"``): nearest neighbour scores about 0.007 lower on the 3 mm demo subjects, a
    gain that an unchanged (identity) warp would otherwise be credited with."""
    if not labels:
        return float("nan")
    grid_img = load_nifti(grid)
    inverse = read_ants_affine(affine).GetInverse()
    out = resample_image(
        sitk_labels_from_file(reference_dseg),
        reference_image(grid_img.affine, grid_img.shape[:3]),
        inverse,
        interpolation,
    )
    moved = array_from_image(out).astype(np.int64)
    return registration_metrics(np.asarray(subject_labels), moved, None, labels=labels)[
        "mean_dice"
    ]


def lambda_search_columns(search: dict) -> dict:
    """Metrics columns summarising a lambda search (``LambdaSearch.to_dict()``)."""
    return {
        "lambda_selection": "auto",
        "lambda_max_folding": search.get("max_folding_percent"),
        "lambda_within_budget": search.get("within_budget"),
        "lambda_probes": search.get("probes"),
    }


def metrics_row(
    forward_field: PathLike,
    *,
    mask: PathLike | None = None,
    method: str = "contrareg",
    lam: float | None = None,
    lambda_search: dict | None = None,
    subject_labels: PathLike | None = None,
    reference_labels: PathLike | None = None,
    reference_dseg: PathLike | None = None,
    subject_labels_tsv: PathLike | None = None,
    reference_labels_tsv: PathLike | None = None,
    affine: PathLike | None = None,
    extra: dict | None = None,
) -> dict[str, Any]:
    """The one row of ``metrics.tsv``, columns in their documented order: method, lambda,
    the lambda search's, warp quality, Dice (when both label maps are given), ``extra``."""
    row: dict[str, Any] = {"method": method}
    if lam is not None:
        row["lambda"] = lam
    if lambda_search:
        row.update(lambda_search_columns(lambda_search))
    row.update(warp_quality(forward_field, mask))
    if subject_labels is not None and reference_labels is not None:
        row.update(
            subject_dice(
                subject_labels,
                reference_labels,
                reference_dseg=reference_dseg,
                subject_labels_tsv=subject_labels_tsv,
                reference_labels_tsv=reference_labels_tsv,
                affine=affine,
            )
        )
    if extra:
        row.update(extra)
    return row


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if value != value else f"{value:.6g}"
    return str(value)


def write_metrics(
    row: dict[str, Any], out_dir: PathLike, lambda_search: dict | None = None
) -> tuple[Path, Path]:
    """Write ``metrics.tsv`` (the row) and ``metrics.json`` (a description of each column,
    and the whole lambda-search trace) into ``out_dir``, each atomically so that a killed
    node never leaves a half-written table that a resumed run would trust."""
    out = Path(out_dir)
    keys = list(row)
    tsv = write_tsv_atomic(out / "metrics.tsv", keys, [[_fmt(row[k]) for k in keys]])
    desc: dict[str, Any] = {
        k: {"Description": COLUMNS_HELP.get(k, "Dice of one label" if k[:5] == "dice_" else k)}
        for k in keys
    }
    if lambda_search:  # the whole trace: lambda and folding of both warps per probe
        desc["LambdaSearch"] = lambda_search
    js = write_text_atomic(out / "metrics.json", json.dumps(desc, indent=2))
    return tsv, js
