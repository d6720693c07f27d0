"""Preprocessing and registration steps as plain functions (one module, one job).

Nipype interfaces (``contrareg_bids.interfaces``) wrap these; each works on NIfTI files,
writes its outputs atomically and raises errors that name the offending file.

=================  =============================================================
``n4``             N4 bias-field correction (antspyx)
``normalize``      percentile normalisation to [0, 1] inside the brain mask
``masks``          skull-stripped detection, mask propagation, mask clean-up
``affine``         affine / rigid pre-alignment to the reference (antsRegistration)
``grid``           the model grid and resampling onto it
``register``       ContraReg inference or ANTs SyN, writing ITK displacement fields
``model_space``    the pair on the model grid and fields back to native resolution
``lambda_search``  ``--lambda auto``: the smallest folding-free lambda per subject
``participant_metrics``  the participant's metrics table (Dice, folding, std log|J|)
``threads``        threads per process (``--omp-nthreads``) for ITK, SimpleITK, torch
=================  =============================================================

Imports are lazy so that ``import contrareg_bids.processing`` needs neither antspyx nor
torch until a function is used.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "n4_bias_correct": "n4",
    "NormalizationResult": "normalize",
    "check_normalization": "normalize",
    "normalization_description": "normalize",
    "normalize_intensity": "normalize",
    "dilate_mask": "masks",
    "fill_holes": "masks",
    "largest_component": "masks",
    "mask_from_skullstripped": "masks",
    "propagate_mask": "masks",
    "write_mask": "masks",
    "AffineResult": "affine",
    "affine_register": "affine",
    "grid_centre": "grid",
    "model_grid": "grid",
    "resample_to_grid": "grid",
    "RegResult": "register",
    "ants_syn_register": "register",
    "contrareg_register": "register",
    "default_omp_nthreads": "threads",
    "limit_threads": "threads",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
