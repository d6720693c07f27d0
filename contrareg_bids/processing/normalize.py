"""Robust intensity normalisation to [0, 1] inside the brain mask.

The network was trained on images normalised this way; a model bundle records the recipe in
its ``normalization`` metadata (``{"method": "percentile", "lower": 0.5, "upper": 99.5,
"mask": True}``), and :func:`check_normalization` refuses to feed a network images prepared
with another recipe.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io.images import read_mask, read_volume, write_nifti

__all__ = [
    "NormalizationResult",
    "check_normalization",
    "normalization_description",
    "normalize_intensity",
    "percentile_normalize",
]

PathLike = str | os.PathLike


@dataclass(frozen=True)
class NormalizationResult:
    """Output file, the recipe (as bundles record it) and the intensities mapped to 0 and 1."""

    out_file: Path
    description: dict[str, Any]
    low_value: float
    high_value: float


def normalization_description(
    lower: float = 0.5, upper: float = 99.5, mask: bool = True
) -> dict[str, Any]:
    """The recipe in the form model bundles store it (``BundleMetadata.normalization``)."""
    return {"method": "percentile", "lower": float(lower), "upper": float(upper), "mask": mask}


def check_normalization(description: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` when ``description`` differs from a bundle's recipe ``expected``."""
    keys = ("method", "lower", "upper", "mask")
    diff = {
        k: (description.get(k), expected.get(k))
        for k in keys
        if k in expected and description.get(k) != expected.get(k)
    }
    if diff:
        detail = ", ".join(f"{k}: got {a!r}, model expects {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"intensity normalisation does not match the model's ({detail})")


def percentile_normalize(
    array: np.ndarray, mask: np.ndarray | None, lower: float = 0.5, upper: float = 99.5
) -> tuple[np.ndarray, float, float]:
    """``clip((x - p_lower) / (p_upper - p_lower), 0, 1)`` inside ``mask``, 0 outside.

    Percentiles are taken over the masked voxels only, so the background does not pull the
    lower one to zero. Returns ``(normalised float32, p_lower, p_upper)``.
    """
    if not 0.0 <= lower < upper <= 100.0:
        raise ValueError(f"need 0 <= lower < upper <= 100, got lower={lower}, upper={upper}")
    arr = np.asarray(array, dtype=np.float64)
    m = np.ones(arr.shape, bool) if mask is None else np.asarray(mask, bool)
    if m.shape != arr.shape:
        raise ValueError(f"mask shape {m.shape} differs from the image shape {arr.shape}")
    values = arr[m]
    if values.size == 0:
        raise ValueError("the mask is empty")
    lo, hi = np.percentile(values, [lower, upper])
    if not hi > lo:
        raise ValueError(
            f"intensity is constant inside the mask (percentiles {lower} and {upper} are "
            f"both {lo:g}); cannot normalise"
        )
    out = np.clip((arr - lo) / (hi - lo), 0.0, 1.0)
    out[~m] = 0.0
    return out.astype(np.float32), float(lo), float(hi)


def normalize_intensity(
    in_file: PathLike,
    out_file: PathLike,
    mask_file: PathLike | None,
    lower: float = 0.5,
    upper: float = 99.5,
) -> NormalizationResult:
    """Normalise ``in_file`` to [0, 1] inside ``mask_file`` (0 outside) and write ``out_file``.

    Without a mask the whole image is used and the description says ``"mask": False`` (which
    a bundle trained with masks will refuse through :func:`check_normalization`).
    """
    arr, img = read_volume(in_file)
    mask = read_mask(mask_file, like=img) if mask_file is not None else None
    try:
        out, lo, hi = percentile_normalize(arr, mask, lower, upper)
    except ValueError as exc:
        raise ValueError(f"{in_file}: {exc}") from exc
    path = write_nifti(out, img.affine, out_file, dtype=np.float32, header=img.header)
    desc = normalization_description(lower, upper, mask is not None)
    return NormalizationResult(path, desc, lo, hi)
