"""The ContraRegister node: the one settings object reaches the registration through
Nipype (tests of the torch refinement itself are in tests/nn/test_refine.py)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from contrareg_bids.interfaces.registration import ContraRegister
from contrareg_bids.io.bundle import save_bundle
from contrareg_bids.io.images import write_nifti
from contrareg_bids.io.transforms import read_displacement_nifti
from contrareg_bids.training.config import sloppy_config
from tests.interfaces.test_interfaces import node_settings
from tests.io.test_bundle import make_bundle


def _forward_field_of(node, run_dir: Path) -> np.ndarray:
    """Run a registration node in ``run_dir``; its forward displacement field."""
    run_dir.mkdir()
    cwd = Path.cwd()
    try:
        os.chdir(run_dir)
        res = node.run()
    finally:
        os.chdir(cwd)
    return read_displacement_nifti(res.outputs.forward_field)[0]


def test_refine_steps_reach_the_refinement(tmp_path, tiny_bundle, icbm_small):
    """``refine_steps`` reaches the registration (as --refine-steps does at the participant
    level): the refined field differs from the network's, both are valid."""
    aff = icbm_small["affine"]
    mov = write_nifti(icbm_small["t2w"], aff, tmp_path / "mov.nii.gz", dtype=np.float32)
    fix = write_nifti(icbm_small["t1w"], aff, tmp_path / "fix.nii.gz", dtype=np.float32)
    fields = {}
    for steps in (0, 5):
        node = ContraRegister(moving=str(mov), fixed=str(fix), model=str(tiny_bundle),
                              settings=node_settings(lam=0.2, refine_steps=steps))  # fmt: skip
        fields[steps] = _forward_field_of(node, tmp_path / f"node{steps}")
    assert np.isfinite(fields[5]).all()
    assert np.abs(fields[5] - fields[0]).max() > 1e-3


def test_refine_draws_reach_the_refinement(tmp_path):
    """``refine_draws`` (--refine-draws) reaches the refinement of an mCR bundle: one draw
    is the default, more draws take another path; a bad value is refused where the
    settings are made."""
    bundle = make_bundle(
        loss_params={"reg_scale": 1.0, "num_negatives": 8},
        extra={"train_config": sloppy_config(loss="mcr", num_negatives=8).to_dict()},
    )
    model = tmp_path / "mcr.safetensors"
    save_bundle(model, bundle)
    grid = bundle.metadata.grid
    gen = np.random.default_rng(0)
    mov, fix = (
        write_nifti(gen.random(grid.shape), grid.affine, tmp_path / f"{n}.nii.gz", np.float32)
        for n in ("mov", "fix")
    )
    fields = {}
    for name, draws in (("default", None), ("one", 1), ("four", 4)):
        settings = node_settings(lam=0.3, refine_steps=2, refine_draws=draws)
        node = ContraRegister(moving=str(mov), fixed=str(fix), model=str(model),
                              settings=settings)  # fmt: skip
        fields[name] = _forward_field_of(node, tmp_path / name)
    np.testing.assert_array_equal(fields["default"], fields["one"])
    assert np.abs(fields["four"] - fields["one"]).max() > 1e-6
    with pytest.raises(ValueError, match="refine draws must be >= 1"):
        node_settings(refine_draws=0)
