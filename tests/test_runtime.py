"""``--omp-nthreads``: the default, the limits applied in a node's process, the config."""

from __future__ import annotations

import os

import pytest

from contrareg_bids.cli.parser import parse_args
from contrareg_bids.config import ConfigError, RunConfig
from contrareg_bids.runtime import (
    THREAD_VARIABLES,
    default_omp_nthreads,
    limit_threads,
)


@pytest.mark.parametrize(("nprocs", "omp"), [(1, 1), (2, 1), (4, 3), (9, 8), (64, 8)])
def test_default_omp_nthreads(nprocs, omp):
    assert default_omp_nthreads(nprocs) == omp


def test_limit_threads_sets_every_library(monkeypatch):
    import SimpleITK as sitk
    import torch

    for var in THREAD_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    before = (torch.get_num_threads(), sitk.ProcessObject.GetGlobalDefaultNumberOfThreads())
    try:
        assert limit_threads(1, torch=True) == 1
        assert all(os.environ[var] == "1" for var in THREAD_VARIABLES)
        assert torch.get_num_threads() == 1
        assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == 1
    finally:
        torch.set_num_threads(before[0])
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before[1])


def test_interface_applies_num_threads(tmp_path, monkeypatch):
    """A node's ``num_threads`` reaches the libraries of the process that runs it."""
    import nibabel as nib
    import numpy as np

    from contrareg_bids.interfaces import ApplyWarp
    from contrareg_bids.io.transforms import write_composite

    monkeypatch.delenv("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", raising=False)
    img = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), str(img))
    xfm = write_composite(
        tmp_path / "id.h5", None, np.zeros((3, 4, 4, 4)), np.eye(4), affine_first=False
    )
    monkeypatch.chdir(tmp_path)
    ApplyWarp(in_file=str(img), reference=str(img), transforms=[str(xfm)], num_threads=2).run()
    assert os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] == "2"


def _config(tmp_path, *extra) -> RunConfig:
    (tmp_path / "bids").mkdir(exist_ok=True)
    args = parse_args([str(tmp_path / "bids"), str(tmp_path / "out"), "participant", *extra])
    return RunConfig.from_args(args)


def test_config_resolves_omp_nthreads(tmp_path):
    assert _config(tmp_path, "--nprocs", "4").omp_nthreads == 3
    assert _config(tmp_path, "--nprocs", "4", "--omp-nthreads", "2").omp_nthreads == 2
    assert _config(tmp_path).omp_nthreads == default_omp_nthreads(os.cpu_count() or 1)
    with pytest.raises(ConfigError, match="--omp-nthreads must be >= 1"):
        _config(tmp_path, "--omp-nthreads", "0")
