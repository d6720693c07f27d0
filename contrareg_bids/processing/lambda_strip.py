"""The lambda strip's numbers: one subject registered by the network at about five lambdas
of its trained range (the moved image, log|J| and the metrics table's scores at each), saved
as one ``.npz`` that the report draws (:func:`contrareg_bids.reports.reportlets.
lambda_strip_from_sweep`), so that the report itself loads no model and runs no network."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io.atomic import atomic_output

PathLike = str | os.PathLike

#: per-lambda scores kept in the ``.npz`` (besides the moved image and log|J|)
SCORES = ("folding_percent", "std_log_jacobian", "mean_dice")


def log_jacobian(disp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(log det J clipped at 1e-9, folding mask det J <= 0)`` of a voxel displacement."""
    from ..metrics import DEFAULT_LOG_JACOBIAN_CLIP, jacobian_determinant

    det = jacobian_determinant(disp)
    return np.log(np.clip(det, DEFAULT_LOG_JACOBIAN_CLIP, None)), det <= 0


def lambda_values(lo: float, hi: float, chosen: float | None, n: int = 5) -> list[float]:
    """``n`` values spanning the trained range, the one used in the run among them."""
    values = [float(v) for v in np.linspace(lo, hi, n)]
    if chosen is not None and lo <= chosen <= hi:
        nearest = int(np.argmin([abs(v - chosen) for v in values]))
        values[nearest] = float(chosen)
    return sorted(set(round(v, 6) for v in values))


def lambda_sweep(
    net,
    moving: np.ndarray,
    fixed: np.ndarray,
    lambdas: Sequence[float | None],
    *,
    device: str = "cpu",
    mask: np.ndarray | None = None,
    fixed_labels: np.ndarray | None = None,
    moving_labels: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Register one pair at each lambda; per lambda the moved image, log|J|, and the scores of
    the metrics table (:func:`~contrareg_bids.metrics.registration_metrics`, as the
    participant's ``metrics.tsv`` reports them): folding % over the model grid, std log|J|
    inside ``mask`` and (with both label maps) the mean Dice over the labels both share."""
    from ..metrics import registration_metrics, shared_labels
    from ..nn.inference import register_arrays

    out = []
    for lam in lambdas:
        res = register_arrays(net, moving, fixed, lam, device, moving_labels=moving_labels)
        dice = fixed_labels is not None and res.moved_labels is not None
        scores = registration_metrics(
            fixed_labels if dice else None,
            res.moved_labels if dice else None,
            res.forward_disp,
            mask,
            labels=shared_labels(fixed_labels, res.moved_labels) if dice else None,
        )
        row: dict[str, Any] = {
            "lambda": lam,
            "moved": res.moved,
            "log_jacobian": log_jacobian(res.forward_disp)[0],
            "folding_percent": scores["folding_percent_grid"],
            "std_log_jacobian": scores["std_log_jacobian"],
        }
        if dice:
            row["mean_dice"] = scores["mean_dice"]
        out.append(row)
    return out


def sweep_lambdas(
    moving: PathLike,
    fixed: PathLike,
    model: PathLike,
    out_file: PathLike,
    *,
    lam: float | None = None,
    device: str = "cpu",
    mask: PathLike | None = None,
    reference_labels: PathLike | None = None,
    subject_labels: PathLike | None = None,
    affine: PathLike | None = None,
    n: int = 5,
) -> tuple[Path, list[dict[str, Any]]]:
    """The lambda sweep of one subject from the model-grid pair the workflow wrote, saved to
    ``out_file`` (``.npz``); returns it and the table of scores.

    Dice (when both label maps exist) compares the reference labels on the model grid with
    the subject's labels carried there by the affine and then warped at each lambda.
    """
    from ..io.bundle import load_model
    from ..io.images import read_mask, read_volume
    from .grid import resample_to_grid

    bundle = load_model(model, device=device)
    fix, fix_img = read_volume(fixed)
    mov, _ = read_volume(moving)
    brain = read_mask(mask, allow_empty=True) if mask is not None else None
    shape = fix.shape
    ref_lab = subj_lab = None
    if reference_labels is not None:
        ref_lab = resample_to_grid(
            reference_labels, fix_img.affine, shape, interpolation="nearest"
        ).astype(np.int64)
        if subject_labels is not None:
            subj_lab = resample_to_grid(
                subject_labels, fix_img.affine, shape, transform=affine, interpolation="nearest"
            ).astype(np.int64)
    if bundle.regnet.hypernet is None:
        lambdas: list[float | None] = [None]
    else:
        lo, hi = bundle.metadata.lambda_range
        lambdas = list(lambda_values(lo, hi, lam, n))
    sweep = lambda_sweep(
        bundle.regnet,
        mov,
        fix,
        lambdas,
        device=device,
        mask=brain,
        fixed_labels=ref_lab if subj_lab is not None else None,
        moving_labels=subj_lab,
    )
    arrays: dict[str, np.ndarray] = {
        "lambdas": np.array([np.nan if r["lambda"] is None else r["lambda"] for r in sweep]),
        "moved": np.stack([r["moved"] for r in sweep]).astype(np.float32),
        "log_jacobian": np.stack([r["log_jacobian"] for r in sweep]).astype(np.float32),
        "fixed": fix.astype(np.float32),
        "chosen": np.array(np.nan if lam is None else lam),
    }
    for key in SCORES:
        if all(key in r for r in sweep):
            arrays[key] = np.array([r[key] for r in sweep], dtype=np.float64)
    if ref_lab is not None:
        arrays["fixed_labels"] = ref_lab.astype(np.int32)
    if brain is not None:
        arrays["mask"] = brain.astype(np.uint8)
    out_file = Path(out_file)
    with atomic_output(out_file) as tmp:
        with open(tmp, "wb") as fh:  # np.savez would add ".npz" to a path without it
            np.savez_compressed(fh, **arrays)
    table = [{k: v for k, v in row.items() if k not in ("moved", "log_jacobian")} for row in sweep]
    return out_file, table


def read_lambda_sweep(path: PathLike):
    """``(sweep rows, fixed, fixed_labels or None, mask or None, chosen lambda or None)`` of
    a file :func:`sweep_lambdas` wrote; each row holds ``lambda``, ``moved``,
    ``log_jacobian`` and the scores it has."""
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    rows = []
    for i, lam in enumerate(arrays["lambdas"]):
        row: dict[str, Any] = {
            "lambda": None if np.isnan(lam) else float(lam),
            "moved": arrays["moved"][i],
            "log_jacobian": arrays["log_jacobian"][i],
        }
        for key in SCORES:
            if key in arrays:
                row[key] = float(arrays[key][i])
        rows.append(row)
    chosen = float(arrays["chosen"])
    mask = arrays["mask"] > 0 if "mask" in arrays else None
    return (
        rows,
        arrays["fixed"],
        arrays.get("fixed_labels"),
        mask,
        (None if np.isnan(chosen) else chosen),
    )
