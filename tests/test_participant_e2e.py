"""End to end: ``contrareg-bids BIDS OUT participant`` on tiny real data.

Everything is real: BIDS datasets on disk read by pybids, a local ``TEMPLATEFLOW_HOME`` read
through the TemplateFlow client, Nipype execution, antspyx/SimpleITK, a (tiny) trained model
bundle. The subjects are ICBM 2009c at 4 mm under random smooth deformations
(``contrareg_bids.simulate.simulate_subject``), so their CerebrA labels are known. The CLI runs
in-process (``contrareg_bids.cli.run.main``), once more as the console script.

Each run is made once per module (module-scoped fixtures) and checked by several tests.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from contrareg_bids import __version__
from contrareg_bids.cli import exit_codes
from contrareg_bids.cli.run import main
from contrareg_bids.io import templates
from contrareg_bids.io.transforms import apply_transform
from contrareg_bids.metrics import dice_per_label
from contrareg_bids.settings import DEFAULT_SETTINGS
from tests.bids_factory import make_bids_dataset

TPL = "ICBMTest"


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
@dataclass
class Run:
    rc: int
    bids: Path
    out: Path
    work: Path
    labels: Path | None = None


def run_level(bids, out, work, level: str, *options, home: Path) -> int:
    """``contrareg-bids BIDS OUT LEVEL -w WORK OPTIONS`` in-process, with
    ``TEMPLATEFLOW_HOME=home`` (offline; the template clients reset around the run)."""
    argv = [str(bids), str(out), level, "-w", str(work), *map(str, options)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEMPLATEFLOW_HOME", str(home))
        mp.setenv("TEMPLATEFLOW_AUTOUPDATE", "0")
        templates.reset_clients()
        try:
            return main(argv)
        finally:
            templates.reset_clients()


def run_app(bids, out, work, *options, home: Path) -> int:
    """``contrareg-bids BIDS OUT participant -w WORK --sloppy --nprocs 1 OPTIONS``."""
    return run_level(bids, out, work, "participant", "--sloppy", "--nprocs", "1", *options,
                     home=home)  # fmt: skip


def write_labels_derivatives(root: Path, labels: dict[str, nib.Nifti1Image]) -> Path:
    """A derivatives folder with ``sub-XX/anat/sub-XX_dseg.nii.gz`` per subject and the
    label table they inherit, ``dseg.tsv`` at its root (CerebrA values named as in the test
    templates' tables, so Dice is computed against them)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "labels", "BIDSVersion": "1.9.0", "DatasetType": "derivative"})
    )
    values = sorted({int(v) for img in labels.values() for v in np.unique(img.dataobj) if v})
    (root / "dseg.tsv").write_text("index\tname\n" + "".join(f"{v}\tcerebra{v}\n" for v in values))
    for sub, img in labels.items():
        path = root / f"sub-{sub}" / "anat" / f"sub-{sub}_dseg.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(img, str(path))
    return root


def label_img(subject: dict, affine) -> nib.Nifti1Image:
    return nib.Nifti1Image(subject["labels"].astype(np.int16), affine)


def files_under(root: Path) -> set[str]:
    """Derivatives under ``root``; the QC reports (``figures/``, ``*.html``) are checked in
    tests/reports/test_reports.py, the run logs (``sub-X/log/<run>/``: errors, crash files,
    the methods text of the workflow built) where they are made."""
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if p.is_file() and "figures" not in p.parts and p.suffix != ".html"
            and not (len(p.relative_to(root).parts) > 2
                     and p.relative_to(root).parts[1] == "log")}  # fmt: skip


def expected_outputs(sub: str, space: str, *, other=True, labels=True, tsv=True) -> set[str]:
    """Exact names of one subject's outputs (moving T2w; ``space`` with its cohort entity,
    which the to-/from-/desc- labels carry as ``<tpl>Cohort<cohort>``)."""
    a = f"sub-{sub}/anat/sub-{sub}"
    tpl = space.replace("_cohort-", "Cohort")
    names = {
        f"{a}_desc-preproc_T2w.nii.gz",
        f"{a}_desc-brain_mask.nii.gz",
        f"{a}_space-{space}_desc-preproc_T2w.nii.gz",
        f"{a}_from-T2w_to-{tpl}_mode-image_xfm.h5",
        f"{a}_from-{tpl}_to-T2w_mode-image_xfm.h5",
        f"{a}_space-T2w_label-brain_desc-{tpl}_mask.nii.gz",
        f"{a}_space-T2w_desc-{tpl}_dseg.nii.gz",
        f"{a}_desc-registration_metrics.tsv",
        f"{a}_desc-registration_metrics.json",
    }
    if tsv:
        names.add(f"{a}_space-T2w_desc-{tpl}_dseg.tsv")
    if other:
        names |= {f"{a}_space-T2w_desc-preproc_T1w.nii.gz",
                  f"{a}_space-{space}_desc-preproc_T1w.nii.gz",
                  f"{a}_from-T1w_to-T2w_mode-image_xfm.h5",
                  f"{a}_from-T2w_to-T1w_mode-image_xfm.h5"}  # fmt: skip
    if labels:
        names.add(f"{a}_space-{space}_dseg.nii.gz")
    # images and transforms carry a JSON sidecar (Sources, SpatialReference)
    sidecars = {n.removesuffix(".nii.gz").removesuffix(".h5") + ".json" for n in names
                if n.endswith((".nii.gz", ".h5"))}  # fmt: skip
    return names | sidecars


def read_metrics(path: Path) -> dict[str, str]:
    header, row = path.read_text().strip().splitlines()
    return dict(zip(header.split("\t"), row.split("\t"), strict=True))


def mean_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Dice over the labels present in both (what the metrics node reports)."""
    common = sorted(set(np.unique(a)) & set(np.unique(b)) - {0})
    return float(np.mean(list(dice_per_label(a, b, labels=common).values())))


def data(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


def ras_labels(path: Path) -> nib.Nifti1Image:
    return nib.as_closest_canonical(nib.load(str(path)))


def affine_only_dice(run: Run, sub: str, ref_dseg: Path, tmp: Path) -> float:
    """Dice of the reference labels carried into the subject by the affine pre-alignment
    alone (the ``.mat`` of the work dir, reference -> subject points, so its inverse
    resamples the reference onto the subject; one-hot linear, as the app's labels), against
    the subject's labels: an independent recomputation of ``mean_dice_affine``."""
    from contrareg_bids.io.transforms import read_ants_affine

    wf = run.work / f"sub_{sub}_wf"
    mat = wf / "pair_wf" / "anat_preproc_wf" / "affine_moving" / "affine_0GenericAffine.mat"
    grid = run.out / f"sub-{sub}" / "anat" / f"sub-{sub}_desc-preproc_T2w.nii.gz"
    inverse = read_ants_affine(mat).GetInverse()
    out = apply_transform(ref_dseg, grid, inverse, tmp / f"affine_only_{sub}.nii.gz", "label")
    subj = ras_labels(run.labels / f"sub-{sub}" / "anat" / f"sub-{sub}_dseg.nii.gz")
    return mean_dice(np.asarray(subj.dataobj), data(out))


def app_dice(run: Run, sub: str, tpl: str = TPL) -> float:
    subj = ras_labels(run.labels / f"sub-{sub}" / "anat" / f"sub-{sub}_dseg.nii.gz")
    warped = run.out / f"sub-{sub}" / "anat" / f"sub-{sub}_space-T2w_desc-{tpl}_dseg.nii.gz"
    return mean_dice(np.asarray(subj.dataobj), data(warped))


def reoriented(img: nib.Nifti1Image, codes: str) -> nib.Nifti1Image:
    """The same image (same world positions) stored with voxel axes ``codes``."""
    now = nib.orientations.io_orientation(img.affine)
    return img.as_reoriented(
        nib.orientations.ornt_transform(now, nib.orientations.axcodes2ornt(tuple(codes)))
    )


def rigid(angles_deg, shift_mm) -> np.ndarray:
    """4x4 RAS rigid motion (rotations about x, y, z, then a shift)."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    out = np.eye(4)
    out[:3, :3] = rz @ ry @ rx
    out[:3, 3] = shift_mm
    return out


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


# ---------------------------------------------------------------------------------------------
# the main run: two subjects, T1w + T2w, ages, labels, ContraReg to a template
# ---------------------------------------------------------------------------------------------
def run_two_subjects(
    tmp: Path, icbm_small, icbm_subjects, tiny_bundle, tiny_templateflow, ages=(40, 40)
) -> Run:
    """The participant level on two simulated subjects (T1w + T2w, ``ages`` in weeks,
    labels as derivatives), ContraReg to the tiny template, as a lab runs it."""
    aff = icbm_small["affine"]
    subjects = {
        f"0{i + 1}": {"T1w": s["t1w"], "T2w": s["t2w"], "age": ages[i]}
        for i, s in enumerate(icbm_subjects[:2])
    }
    bids = make_bids_dataset(tmp / "bids", subjects, affine=aff)
    labels = write_labels_derivatives(
        tmp / "labels", {f"0{i + 1}": label_img(s, aff) for i, s in enumerate(icbm_subjects[:2])}
    )
    rc = run_app(
        bids, tmp / "out", tmp / "work", "--model", tiny_bundle, "--reference", TPL,
        "--derivatives", f"labels={labels}", home=tiny_templateflow,
    )  # fmt: skip
    return Run(rc, bids, tmp / "out", tmp / "work", labels)


@pytest.fixture(scope="module")
def e2e(tmp_path_factory, icbm_small, icbm_subjects, tiny_bundle, tiny_templateflow) -> Run:
    return run_two_subjects(
        tmp_path_factory.mktemp("e2e"), icbm_small, icbm_subjects, tiny_bundle, tiny_templateflow
    )


def test_exit_code_and_exact_output_names(e2e):
    assert e2e.rc == exit_codes.OK
    found = files_under(e2e.out)
    logs = {f for f in found if f.startswith("logs/")}
    assert len(logs) == 1 and re.fullmatch(r"logs/config-[0-9]{8}-[0-9]{6}_[0-9a-f-]{36}\.json",
                                           next(iter(logs)))  # fmt: skip
    expected = {"dataset_description.json", ".bidsignore"}
    expected |= expected_outputs("01", TPL) | expected_outputs("02", TPL)
    assert found - logs == expected
    logs = list((e2e.out / "sub-01" / "log").glob("*/*"))  # no crash, no error file
    assert [p.name for p in logs] == ["sub-01_desc-methods.txt"]


def test_derivatives_pass_the_bids_validator(e2e):
    """The output folder is a valid BIDS derivatives dataset: alphanumeric labels (the
    template's cohort as ``<tpl>Cohort<n>``), ``space-`` on every resampled image,
    ``SkullStripped`` and ``SpatialReference`` where BIDS requires them, the non-BIDS outputs
    hidden by ``.bidsignore`` in a form the validator matches."""
    from contrareg_bids.io.validation import run_bids_validator

    issues = run_bids_validator(e2e.out)
    assert issues == [], issues
    anat = e2e.out / "sub-01" / "anat"
    meta = json.loads((anat / "sub-01_space-T2w_desc-preproc_T1w.json").read_text())
    assert meta["SpatialReference"] == "bids:raw:sub-01/anat/sub-01_T2w.nii.gz"
    assert meta["SkullStripped"] is True  # the test subjects are skull-stripped scans


def test_sidecars_name_sources_and_spatial_reference(e2e):
    anat = e2e.out / "sub-01" / "anat"
    meta = json.loads((anat / f"sub-01_space-{TPL}_desc-preproc_T2w.json").read_text())
    assert meta["Sources"] == ["bids:raw:sub-01/anat/sub-01_T2w.nii.gz"]
    assert meta["SpatialReference"].startswith(f"tpl-{TPL.split('_')[0]}/")
    other = json.loads((anat / f"sub-01_space-{TPL}_desc-preproc_T1w.json").read_text())
    assert "bids:raw:sub-01/anat/sub-01_T1w.nii.gz" in other["Sources"]
    xfm = json.loads((anat / f"sub-01_from-T2w_to-{TPL.split('_')[0]}_mode-image_xfm.json")
                     .read_text())  # fmt: skip
    assert "SpatialReference" in xfm
    desc = json.loads((e2e.out / "dataset_description.json").read_text())
    assert desc["DatasetLinks"]["raw"] == e2e.bids.absolute().as_uri()


def test_report_methods_are_the_built_workflows_description(e2e):
    """The participant level writes the description of the workflow it built
    (``visit_desc()``) to the run's log folder; the report's Methods section is that text,
    framed by the versions."""
    import html

    (desc_file,) = (e2e.out / "sub-01" / "log").glob("*/sub-01_desc-methods.txt")
    desc = desc_file.read_text()
    assert desc.startswith(" The T2w image was corrected") and "ContraReg" in desc
    page = (e2e.out / "sub-01.html").read_text()
    assert html.escape(desc) in page


def test_transform_sidecars_and_description_record_what_ran(e2e, tiny_bundle):
    """The model (name, sha256), lambda, the refinement and fine-stage steps and the seed
    are in each transform's sidecar and in GeneratedBy, not only in the HTML report."""
    from contrareg_bids.io.bundle import file_sha256

    sha = file_sha256(tiny_bundle)
    anat = e2e.out / "sub-01" / "anat"
    for name in (f"from-T2w_to-{TPL}", f"from-{TPL}_to-T2w"):
        xfm = json.loads((anat / f"sub-01_{name}_mode-image_xfm.json").read_text())
        assert xfm["RegistrationMethod"] == "ContraReg"
        assert xfm["Model"] == Path(tiny_bundle).name and xfm["ModelSHA256"] == sha
        assert xfm["Lambda"] == DEFAULT_SETTINGS.lam and xfm["RandomSeed"] == 0
        steps = (DEFAULT_SETTINGS.refine.steps, DEFAULT_SETTINGS.fine.steps)
        assert (xfm["RefineSteps"], xfm["FineSteps"]) == steps
    (gen,) = json.loads((e2e.out / "dataset_description.json").read_text())["GeneratedBy"]
    assert f"{Path(tiny_bundle).name} (sha256 {sha})" in gen["Description"]


def test_dataset_description(e2e):
    desc = json.loads((e2e.out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["BIDSVersion"]
    (gen,) = desc["GeneratedBy"]
    assert gen["Name"] == "contrareg-bids"
    assert gen["Version"] == __version__
    (src,) = desc["SourceDatasets"]
    assert src["URL"] == e2e.bids.absolute().as_uri()


def test_config_recorded_in_work_dir_and_logs(e2e, tiny_bundle):
    (in_work,) = e2e.work.glob("config-*.json")
    (in_logs,) = (e2e.out / "logs").glob("config-*.json")
    assert in_work.name == in_logs.name
    cfg = json.loads(in_logs.read_text())
    assert cfg == json.loads(in_work.read_text())
    assert cfg["reference"] == TPL
    assert cfg["registration"]["model"] == str(tiny_bundle)
    assert cfg["random_seed"] == 0
    assert cfg["derivatives"] == {"labels": str(e2e.labels)}


def test_outputs_are_ras_on_the_expected_grids(e2e, icbm_small):
    anat = e2e.out / "sub-01" / "anat"
    for name in ("desc-preproc_T2w", "desc-brain_mask", f"space-T2w_desc-{TPL}_dseg"):
        img = nib.load(str(anat / f"sub-01_{name}.nii.gz"))
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        assert img.shape == icbm_small["t2w"].shape
    ref = nib.load(str(anat / f"sub-01_space-{TPL}_desc-preproc_T2w.nii.gz"))
    assert ref.shape == icbm_small["t1w"].shape
    np.testing.assert_allclose(ref.affine, icbm_small["affine"], atol=1e-4)
    assert set(np.unique(data(anat / "sub-01_desc-brain_mask.nii.gz"))) == {0, 1}


def test_transform_round_trip_simpleitk(e2e, tiny_templateflow, tmp_path):
    """Resampling the preprocessed T2w with the exported ``from-T2w_to-<tpl>`` file through
    SimpleITK reproduces the app's ``space-<tpl>_desc-preproc_T2w``."""
    anat = e2e.out / "sub-02" / "anat"
    ref = tiny_templateflow / f"tpl-{TPL}" / f"tpl-{TPL}_T1w.nii.gz"
    mine = apply_transform(
        anat / "sub-02_desc-preproc_T2w.nii.gz", ref,
        anat / f"sub-02_from-T2w_to-{TPL}_mode-image_xfm.h5", tmp_path / "sitk.nii.gz",
    )  # fmt: skip
    app = data(anat / f"sub-02_space-{TPL}_desc-preproc_T2w.nii.gz")
    np.testing.assert_allclose(data(mine), app, atol=1e-4 * float(np.abs(app).max()))


def test_transform_round_trip_antspyx(e2e, tiny_templateflow):
    """The same through antspyx ``apply_transforms`` (ANTs reads the ITK composite), and the
    inverse file carries the template labels into the subject like the app's dseg."""
    import ants

    anat = e2e.out / "sub-02" / "anat"
    ref = tiny_templateflow / f"tpl-{TPL}" / f"tpl-{TPL}_T1w.nii.gz"
    moved = ants.apply_transforms(
        fixed=ants.image_read(str(ref)),
        moving=ants.image_read(str(anat / "sub-02_desc-preproc_T2w.nii.gz")),
        transformlist=[str(anat / f"sub-02_from-T2w_to-{TPL}_mode-image_xfm.h5")],
        interpolator="linear",
    ).numpy()
    app = data(anat / f"sub-02_space-{TPL}_desc-preproc_T2w.nii.gz")
    assert corr(moved, app) > 0.999
    assert np.percentile(np.abs(moved - app), 99) < 0.01 * float(app.max())

    dseg = ants.apply_transforms(
        fixed=ants.image_read(str(anat / "sub-02_desc-preproc_T2w.nii.gz")),
        moving=ants.image_read(str(ref).replace("_T1w", "_desc-tissues_dseg")),
        transformlist=[str(anat / f"sub-02_from-{TPL}_to-T2w_mode-image_xfm.h5")],
        interpolator="genericLabel",
    ).numpy()
    app_dseg = data(anat / f"sub-02_space-T2w_desc-{TPL}_dseg.nii.gz")
    inside = (dseg > 0) | (app_dseg > 0)
    assert np.mean(dseg[inside] == app_dseg[inside]) > 0.95


def test_dice_computed_and_reported(e2e, tiny_templateflow, tmp_path):
    """Subject labels from ``--derivatives``: the metrics row holds the Dice of the reference
    labels warped into the subject, equal to the Dice recomputed from the output files; the
    affine-only Dice (the pre-alignment of the work dir) is computed for comparison."""
    ref_dseg = tiny_templateflow / f"tpl-{TPL}" / f"tpl-{TPL}_desc-tissues_dseg.nii.gz"
    for sub in ("01", "02"):
        anat = e2e.out / f"sub-{sub}" / "anat"
        row = read_metrics(anat / f"sub-{sub}_desc-registration_metrics.tsv")
        assert row["method"] == "contrareg"
        assert float(row["lambda"]) == pytest.approx(DEFAULT_SETTINGS.lam)  # the default
        assert row["reference"] == TPL
        assert float(row["folding_percent"]) >= 0
        assert np.isfinite(float(row["std_log_jacobian"]))
        dice = float(row["mean_dice"])
        assert 0.2 < dice <= 1
        assert dice == pytest.approx(app_dice(e2e, sub), abs=1e-4)
        assert sum(k.startswith("dice_") for k in row) > 50  # CerebrA labels
        sidecar = json.loads((anat / f"sub-{sub}_desc-registration_metrics.json").read_text())
        assert set(sidecar) == set(row)
        assert all(v["Description"] for v in sidecar.values())
        affine_only = affine_only_dice(e2e, sub, ref_dseg, tmp_path)
        assert 0.2 < affine_only < 1
        # the app's own affine-only baseline: present, a Dice, not the deformable one
        assert 0 <= float(row["mean_dice_affine"]) <= 1
        assert float(row["mean_dice_affine"]) != float(row["mean_dice"])
        assert float(row["mean_dice_affine"]) == pytest.approx(affine_only, abs=1e-4)
        assert list(row).index("mean_dice_affine") == list(row).index("mean_dice") + 1
        # the tiny model barely trained: no worse than the affine by more than a little
        assert dice > affine_only - 0.05


def test_subject_labels_into_reference_space(e2e, icbm_small):
    """The subject's own labels carried into the reference (``space-<tpl>_dseg``) overlap
    the reference labels."""
    anat = e2e.out / "sub-01" / "anat"
    warped = data(anat / f"sub-01_space-{TPL}_dseg.nii.gz")
    assert warped.shape == icbm_small["labels"].shape
    assert np.issubdtype(warped.dtype, np.integer)
    assert mean_dice(icbm_small["labels"], warped) > 0.3


def test_resume_reuses_finished_nodes(e2e, tiny_bundle, tiny_templateflow):
    """The same command again, as the console script on 2 processes (the two subjects at
    once), on the same work dir: every node is found cached, nothing is recomputed, the
    outputs stay."""
    result = (
        e2e.work
        / "sub_01_wf"
        / "pair_wf"
        / "registration_wf"
        / "register"
        / "result_register.pklz"
    )
    before = result.stat().st_mtime_ns
    preproc = e2e.out / "sub-01" / "anat" / "sub-01_desc-preproc_T2w.nii.gz"
    old = data(preproc).copy()
    env = dict(os.environ, TEMPLATEFLOW_HOME=str(tiny_templateflow), TEMPLATEFLOW_AUTOUPDATE="0")
    script = Path(sys.executable).with_name("contrareg-bids")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "contrareg_bids.cli.run"]
    proc = subprocess.run(
        [*cmd, str(e2e.bids), str(e2e.out), "participant", "-w", str(e2e.work), "--sloppy",
         "--nprocs", "2", "--model", str(tiny_bundle), "--reference", TPL,
         "--derivatives", f"labels={e2e.labels}", "-v"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert result.stat().st_mtime_ns == before
    for node in ("anat_preproc_wf.n4_moving", "anat_preproc_wf.affine_moving",
                 "registration_wf.register", "registration_wf.export_xfms",
                 "apply_wf.moving_to_ref"):  # fmt: skip
        # MultiProc: "Cached (wf.node)"; Linear (a subject's share of one CPU): 'Cached "wf.node"'
        assert re.search(rf"Cached (\(|\")sub_01_wf\.pair_wf\.{node}(\)|\")", log), node
    assert "sub-02: finished" in log
    np.testing.assert_array_equal(data(preproc), old)
    assert len(list((e2e.out / "logs").glob("config-*.json"))) == 2


def test_nipype_execution_settings(e2e):
    """What each node was run with: crash files in ``OUT/sub-X/log/<run>``, content hashes (a work
    dir survives copying), and MultiProc polling fast enough for small subjects (the 2 s
    default made a cached re-run of two tiny subjects take a minute)."""
    from nipype.utils.filemanip import loadpkl

    node = loadpkl(
        e2e.work / "sub_01_wf" / "pair_wf" / "registration_wf" / "register" / "_node.pklz"
    )
    execution = node.config["execution"]
    assert Path(execution["crashdump_dir"]).parent == e2e.out / "sub-01" / "log"
    assert execution["hash_method"] == "content"
    assert float(execution["poll_sleep_duration"]) <= 0.5


# ---------------------------------------------------------------------------------------------
# ANTs SyN instead of ContraReg
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ants_run(e2e, tmp_path_factory, tiny_templateflow) -> Run:
    tmp = tmp_path_factory.mktemp("ants")
    rc = run_app(
        e2e.bids, tmp / "out", tmp / "work", "--registration", "ants", "--reference", TPL,
        "--participant-label", "sub-01", "--derivatives", f"labels={e2e.labels}",
        home=tiny_templateflow,
    )  # fmt: skip
    return Run(rc, e2e.bids, tmp / "out", tmp / "work", e2e.labels)


def test_ants_registration_end_to_end(ants_run, tiny_templateflow, tmp_path):
    """``--registration ants`` (no model): the same outputs, ``ants-syn`` in the metrics,
    and SyN does better than the affine pre-alignment alone."""
    assert ants_run.rc == 0
    found = files_under(ants_run.out)
    assert {f for f in found if f.startswith("sub-")} == expected_outputs("01", TPL)
    anat = ants_run.out / "sub-01" / "anat"
    row = read_metrics(anat / "sub-01_desc-registration_metrics.tsv")
    assert row["method"] == "ants-syn"
    assert "lambda" not in row
    cfg = json.loads(next((ants_run.out / "logs").glob("config-*.json")).read_text())
    assert cfg["registration"]["method"] == "ants" and cfg["registration"]["model"] is None
    ref_dseg = tiny_templateflow / f"tpl-{TPL}" / f"tpl-{TPL}_desc-tissues_dseg.nii.gz"
    affine_only = affine_only_dice(ants_run, "01", ref_dseg, tmp_path)
    dice = float(row["mean_dice"])
    assert dice == pytest.approx(app_dice(ants_run, "01"), abs=1e-4)
    # SyN runs on the node's ITK threads, so it varies run to run by round-off (the affine
    # before it is reproducible); the gain here varied around +0.02 between CI runs, so the
    # margin asserts a clear gain, well above that noise, not a knife edge
    assert dice > affine_only + 0.01, (dice, affine_only)


def test_same_seed_gives_identical_transforms(e2e, tiny_bundle, tiny_templateflow, tmp_path):
    """The participant level run again (fresh work folder, same default seed) writes
    bitwise-identical transforms: the ANTs affine included, which on several ITK threads
    differed run to run (its Mattes metric sums threads' partial histograms in the order
    they finish)."""
    out = tmp_path / "out"
    rc = run_app(
        e2e.bids, out, tmp_path / "work", "--model", tiny_bundle, "--reference", TPL,
        "--derivatives", f"labels={e2e.labels}", "--participant-label", "01",
        home=tiny_templateflow,
    )  # fmt: skip
    assert rc == 0
    first = sorted((e2e.out / "sub-01" / "anat").glob("*_xfm.*"))
    again = sorted((out / "sub-01" / "anat").glob("*_xfm.*"))
    assert [p.name for p in first] == [p.name for p in again] and len(first) >= 2
    for a, b in zip(first, again, strict=True):
        assert transform_contents(a) == transform_contents(b), a.name


def transform_contents(path: Path) -> dict[str, bytes]:
    """Every dataset of an ITK ``.h5`` transform as bytes (the file's own bytes also hold
    HDF5 object timestamps), strings by value, or the bytes of any other transform file."""
    if path.suffix != ".h5":
        return {"": path.read_bytes()}
    import h5py

    out: dict[str, bytes] = {}

    def keep(name: str, obj) -> None:
        if isinstance(obj, h5py.Dataset):
            array = np.asarray(obj[()])
            out[name] = (
                repr(array.tolist()).encode() if array.dtype.kind == "O" else array.tobytes()
            )

    with h5py.File(path, "r") as h5:
        h5.visititems(keep)
    return out


def test_raw_heads_get_their_brain_extracted(icbm_small, tiny_bundle, tiny_templateflow, tmp_path):
    """A scan with skull, scalp and background noise (``simulate.add_head``), run with the
    documented defaults (``--skull-strip auto``): the brain is extracted, the subject's
    brain mask matches the simulated brain, the report shows it; ``--skull-strip skip``
    gives what the app did before: the reference mask carried through the affine of the
    head, a worse mask."""
    from contrareg_bids.simulate import add_head, simulate_subject

    rng = np.random.default_rng(11)
    s = add_head(simulate_subject(icbm_small, rng), rng, 4.0)
    bids = make_bids_dataset(
        tmp_path / "bids", {"01": {"T1w": s["t1w"], "T2w": s["t2w"], "age": 40}},
        affine=icbm_small["affine"],
    )  # fmt: skip
    truth = s["mask"] > 0
    dice_of = {}
    for mode in ("auto", "skip"):
        out = tmp_path / f"out-{mode}"
        rc = run_app(
            bids, out, tmp_path / f"work-{mode}", "--model", tiny_bundle, "--reference", TPL,
            "--skull-strip", mode, home=tiny_templateflow,
        )  # fmt: skip
        assert rc == 0, mode
        mask = data(out / "sub-01" / "anat" / "sub-01_desc-brain_mask.nii.gz") > 0
        dice_of[mode] = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
        row = read_metrics(out / "sub-01" / "anat" / "sub-01_desc-registration_metrics.tsv")
        assert row["brain_mask"] == {"auto": "extracted", "skip": "reference"}[mode]
        assert row["reference_template"] == TPL
    assert dice_of["auto"] > 0.93 and dice_of["auto"] > dice_of["skip"] + 0.01, dice_of
    figure = tmp_path / "out-auto" / "sub-01" / "figures" / "sub-01_desc-brain_mask.svg"
    assert figure.is_file()
    page = (tmp_path / "out-auto" / "sub-01.html").read_text()  # the methods text says so
    assert "The brain was extracted from the scan, which included skull and scalp" in page


# ---------------------------------------------------------------------------------------------
# another participant as the reference
# ---------------------------------------------------------------------------------------------
def test_reference_another_participant(e2e, tiny_bundle, tmp_path, tiny_templateflow):
    """``--reference sub-01``: sub-02's T2w registered to sub-01's T1w; sub-01's labels (from
    ``--derivatives``) are the reference labels."""
    out = tmp_path / "out"
    rc = run_app(
        e2e.bids, out, tmp_path / "work", "--model", tiny_bundle, "--reference", "sub-01",
        "--participant-label", "02", "--derivatives", f"labels={e2e.labels}",
        home=tiny_templateflow,
    )  # fmt: skip
    assert rc == 0
    found = {f for f in files_under(out) if f.startswith("sub-")}
    # sub-01's label table (inherited from the derivatives root) travels with its labels
    assert found == expected_outputs("02", "sub01", tsv=True)
    anat = out / "sub-02" / "anat"
    row = read_metrics(anat / "sub-02_desc-registration_metrics.tsv")
    assert row["reference"] == "sub-01 T1w"
    assert 0.2 < float(row["mean_dice"]) <= 1
    # on sub-01's T1w grid, through the exported transform
    sub01_t1w = e2e.bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    mine = apply_transform(
        anat / "sub-02_desc-preproc_T2w.nii.gz", sub01_t1w,
        anat / "sub-02_from-T2w_to-sub01_mode-image_xfm.h5", tmp_path / "mine.nii.gz",
    )  # fmt: skip
    app = data(anat / "sub-02_space-sub01_desc-preproc_T2w.nii.gz")
    np.testing.assert_allclose(data(mine), app, atol=1e-4 * float(app.max()))


# ---------------------------------------------------------------------------------------------
# bad inputs (and a template with cohorts chosen from the age)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bad_run(tmp_path_factory, icbm_small, icbm_subjects, tiny_bundle, tiny_templateflow) -> Run:
    """sub-01 is fine (age 41 -> TinyCohort cohort-2); each other subject is broken in one
    way: truncated .nii.gz, NaNs, a 4-D image, no T2w (the moving modality), no age, an age
    far outside the template's cohorts."""
    tmp = tmp_path_factory.mktemp("bad")
    aff = icbm_small["affine"]
    s = icbm_subjects[0]
    nan = s["t2w"].copy()
    nan[10:12, 10:12, 10:12] = np.nan
    four_d = np.stack([s["t2w"], s["t2w"]], axis=-1)
    subjects = {
        "01": {"T1w": s["t1w"], "T2w": s["t2w"], "age": 41},
        "02": {"T1w": s["t1w"], "T2w": s["t2w"], "age": 40},  # truncated below
        "03": {"T1w": s["t1w"], "T2w": nan, "age": 40},
        "04": {"T1w": s["t1w"], "T2w": four_d, "age": 40},
        # no T2w and no age: the missing image is what its error names, not the age
        "05": {"T1w": s["t1w"], "age": "n/a"},
        "06": {"T1w": s["t1w"], "T2w": s["t2w"], "age": "n/a"},
        "07": {"T1w": s["t1w"], "T2w": s["t2w"], "age": 79},  # postnatal + 40, read as PMA
    }
    bids = make_bids_dataset(tmp / "bids", subjects, affine=aff)
    t2w = bids / "sub-02" / "anat" / "sub-02_T2w.nii.gz"
    t2w.write_bytes(t2w.read_bytes()[: t2w.stat().st_size // 2])
    rc = run_app(
        bids, tmp / "out", tmp / "work", "--model", tiny_bundle, "--reference", "TinyCohort",
        home=tiny_templateflow,
    )  # fmt: skip
    return Run(rc, bids, tmp / "out", tmp / "work")


def test_bad_subjects_fail_alone(bad_run):
    assert bad_run.rc == exit_codes.PARTICIPANT_FAILED
    good = {f for f in files_under(bad_run.out) if f.startswith("sub-01/")}
    assert good == expected_outputs("01", "TinyCohort_cohort-2", labels=False)
    for sub in ("02", "03", "04", "05", "06", "07"):
        assert not (bad_run.out / f"sub-{sub}" / "anat").exists(), sub


@pytest.mark.parametrize(
    ("sub", "pattern", "crash"),
    [
        ("02", r"sub-02_T2w\.nii\.gz.*(corrupt|truncated)", True),
        ("03", r"sub-03_T2w\.nii\.gz.*(NaN|finite)", True),
        ("04", r"sub-04_T2w\.nii\.gz.*(4-D|volumes)", True),
        ("05", r"no T2w image \(the moving modality\); found T1w", False),
        ("06", r"age at scan is needed \(to pick the template cohort\)", False),
        ("07", r"79\.0 weeks PMA \(from participants\.tsv:pma\) is .* outside the cohorts", False),
    ],
)
def test_bad_subject_error_messages(bad_run, sub, pattern, crash):
    """Each failure is explained in ``OUT/sub-X/log/<run>/error-sub-X.txt``; failures inside
    the workflow also leave Nipype's crash file there."""
    (log_dir,) = (bad_run.out / f"sub-{sub}" / "log").iterdir()
    error = (log_dir / f"error-sub-{sub}.txt").read_text()
    first = error.splitlines()[0]
    assert first.startswith(f"sub-{sub}: ") and not first.startswith(f"sub-{sub}: sub-{sub}")
    assert re.search(pattern, first, flags=re.IGNORECASE), first
    crashes = list(log_dir.glob("crash-*.txt"))
    assert bool(crashes) is crash
    if crash:
        assert "validate_moving" in crashes[0].name
        assert str(crashes[0]) in first


def test_explicit_cohort_needs_no_age(bad_run, tiny_bundle, tmp_path, tiny_templateflow):
    """``--reference TinyCohort:cohort-1`` works for the subject without an age."""
    out = tmp_path / "out"
    rc = run_app(
        bad_run.bids, out, tmp_path / "work", "--model", tiny_bundle,
        "--reference", "TinyCohort:cohort-1", "--participant-label", "06",
        home=tiny_templateflow,
    )  # fmt: skip
    assert rc == 0
    found = {f for f in files_under(out) if f.startswith("sub-")}
    assert found == expected_outputs("06", "TinyCohort_cohort-1", labels=False)
    row = read_metrics(out / "sub-06" / "anat" / "sub-06_desc-registration_metrics.tsv")
    assert row["reference"] == "TinyCohort:cohort-1"


# ---------------------------------------------------------------------------------------------
# exit codes of runs that cannot start
# ---------------------------------------------------------------------------------------------
def test_unknown_participant_is_18(e2e, tmp_path, tiny_bundle, tiny_templateflow, caplog):
    rc = run_app(e2e.bids, tmp_path / "out", tmp_path / "work", "--model", tiny_bundle,
                 "--participant-label", "99", home=tiny_templateflow)  # fmt: skip
    assert rc == exit_codes.NO_FILES == 18
    assert "participant label(s) not found: 99" in caplog.text


def test_output_dir_is_bids_dir_is_2(e2e, tmp_path, tiny_bundle, tiny_templateflow, capsys):
    rc = run_app(e2e.bids, e2e.bids, tmp_path / "work", "--model", tiny_bundle,
                 home=tiny_templateflow)  # fmt: skip
    assert rc == exit_codes.USAGE == 2
    assert "the output directory is the BIDS directory" in capsys.readouterr().err
    assert not (e2e.bids / "dataset_description.json").read_text().count("derivative")


def test_unknown_level_is_17(e2e, tmp_path, capsys):
    rc = main([str(e2e.bids), str(tmp_path / "out"), "participants"])
    assert rc == exit_codes.UNKNOWN_LEVEL == 17
    assert "unknown analysis level 'participants'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_model_is_2(e2e, tmp_path, tiny_templateflow, caplog, capsys):
    rc = run_app(e2e.bids, tmp_path / "out", tmp_path / "work", "--reference", TPL,
                 home=tiny_templateflow)  # fmt: skip
    assert rc == exit_codes.USAGE
    assert "no model bundle" in caplog.text
    rc = run_app(e2e.bids, tmp_path / "out", tmp_path / "work", "--reference", TPL, "--model",
                 tmp_path / "nope.safetensors", home=tiny_templateflow)  # fmt: skip
    assert rc == exit_codes.USAGE
    assert "nope.safetensors does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out" / "sub-01").exists()


def test_shared_problems_are_found_once_before_any_subject(
    bad_run, tiny_bundle, tiny_templateflow, tmp_path, caplog
):
    """A template cohort missing from ``TEMPLATEFLOW_HOME`` and a corrupt bundle are
    reported once, together, before any subject starts (exit 2, nothing written): they
    were found inside each subject's workflow, one identical failure per subject."""
    import shutil

    home = tmp_path / "templateflow"
    shutil.copytree(tiny_templateflow, home)
    cohort2 = home / "tpl-TinyCohort" / "cohort-2"
    for image in cohort2.glob("*_T1w.nii.gz"):
        image.unlink()
    model = tmp_path / "model.safetensors"
    payload = bytearray(Path(tiny_bundle).read_bytes())
    payload[-5] ^= 0xFF  # a weight's byte: the header still reads, the digest does not match
    model.write_bytes(bytes(payload))
    out = tmp_path / "out"
    rc = run_app(
        bad_run.bids, out, tmp_path / "work", "--model", model, "--reference", "TinyCohort",
        "--participant-label", "01", "02", "06", "07", home=home,
    )  # fmt: skip
    assert rc == exit_codes.USAGE == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1, errors
    (message,) = errors
    assert message.startswith("the run cannot start; nothing was written")
    assert re.search(r"cohort-2.*\(needed by sub-01, sub-02\)", message, flags=re.S), message
    assert "weight digest mismatch" in message
    # 06 (no age) and 07 (an age outside the cohorts) are their own runs' problems
    assert "sub-06" not in message and "sub-07" not in message
    assert not out.exists() or not any(out.iterdir())


def test_cuda_asked_but_absent_is_75(e2e, tmp_path, tiny_bundle, tiny_templateflow, caplog,
                                     monkeypatch):  # fmt: skip
    """``--device cuda`` where CUDA is missing: 75 ("retry elsewhere") before any subject,
    not one failed subject after another."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc = run_app(e2e.bids, tmp_path / "out", tmp_path / "work", "--model", tiny_bundle,
                 "--reference", TPL, "--device", "cuda", home=tiny_templateflow)  # fmt: skip
    assert rc == exit_codes.EX_TEMPFAIL == 75
    assert "--device cuda: CUDA is not available" in caplog.text
    assert not (tmp_path / "out" / "sub-01").exists()


# ---------------------------------------------------------------------------------------------
# orientation: one subject stored three ways, rotated in world space, T1w moved vs T2w
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def orient_run(tmp_path_factory, icbm_small, icbm_subjects, tiny_bundle, tiny_templateflow):
    """sub-01 RAS, sub-02 LAS, sub-03 with permuted axes (ASL): the same subject in the same
    world position, its labels stored like its T2w. The subject is rotated and shifted
    against the template, and its T1w is rotated and shifted against its T2w (head motion
    between the scans), so that the affine pre-alignment and the T1w->T2w coregistration are
    far from the identity."""
    tmp = tmp_path_factory.mktemp("orient")
    s = icbm_subjects[2]
    centre = (
        icbm_small["affine"][:3, :3] @ (np.array(s["t2w"].shape) / 2) + icbm_small["affine"][:3, 3]
    )
    to_c = np.eye(4)
    to_c[:3, 3] = -centre
    from_c = np.eye(4)
    from_c[:3, 3] = centre
    head = from_c @ rigid((8, -6, 10), (6, -5, 4)) @ to_c
    t1_motion = from_c @ rigid((-7, 5, 4), (-4, 3, 5)) @ to_c
    aff_t2 = head @ icbm_small["affine"]
    aff_t1 = t1_motion @ aff_t2
    t2 = nib.Nifti1Image(s["t2w"], aff_t2)
    t1 = nib.Nifti1Image(s["t1w"], aff_t1)
    lab = nib.Nifti1Image(s["labels"].astype(np.int16), aff_t2)
    subjects, labels = {}, {}
    for sub, codes in (("01", "RAS"), ("02", "LAS"), ("03", "ASL")):
        subjects[sub] = {"T1w": reoriented(t1, codes), "T2w": reoriented(t2, codes), "age": 40}
        labels[sub] = reoriented(lab, codes)
    bids = make_bids_dataset(tmp / "bids", subjects)
    for sub, codes in (("02", "LAS"), ("03", "ASL")):
        img = nib.load(str(bids / f"sub-{sub}" / "anat" / f"sub-{sub}_T2w.nii.gz"))
        assert "".join(nib.aff2axcodes(img.affine)) == codes
    deriv = write_labels_derivatives(tmp / "labels", labels)
    rc = run_app(
        bids, tmp / "out", tmp / "work", "--model", tiny_bundle, "--reference", TPL,
        "--derivatives", f"labels={deriv}", home=tiny_templateflow,
    )  # fmt: skip
    return Run(rc, bids, tmp / "out", tmp / "work", deriv)


def test_orientation_gives_the_same_world_space(orient_run):
    assert orient_run.rc == 0
    for suffix in ("T2w", "T1w"):
        name = f"space-{TPL}_desc-preproc_{suffix}.nii.gz"
        imgs = [nib.load(str(orient_run.out / f"sub-{s}/anat/sub-{s}_{name}")) for s in
                ("01", "02", "03")]  # fmt: skip
        ras = imgs[0].get_fdata()
        for img in imgs[1:]:
            np.testing.assert_allclose(img.affine, imgs[0].affine, atol=1e-5)
            assert corr(img.get_fdata(), ras) > 0.995, suffix
    # the subject-space outputs are RAS copies of the same data
    for sub in ("02", "03"):
        a = nib.load(str(orient_run.out / f"sub-{sub}/anat/sub-{sub}_desc-preproc_T2w.nii.gz"))
        b = nib.load(str(orient_run.out / "sub-01/anat/sub-01_desc-preproc_T2w.nii.gz"))
        np.testing.assert_allclose(a.affine, b.affine, atol=1e-4)
        assert corr(a.get_fdata(), b.get_fdata()) > 0.999


def test_orientation_gives_the_same_dice(orient_run):
    """The subject labels are stored like the T2w (LAS, ASL): the Dice in the metrics must
    not depend on the voxel order of the inputs."""
    dice = {
        sub: float(read_metrics(orient_run.out / f"sub-{sub}/anat/sub-{sub}"
                                "_desc-registration_metrics.tsv")["mean_dice"])
        for sub in ("01", "02", "03")
    }  # fmt: skip
    assert dice["01"] > 0.3
    assert dice["02"] == pytest.approx(dice["01"], abs=0.02)
    assert dice["03"] == pytest.approx(dice["01"], abs=0.02)


def test_registration_brings_the_subject_to_the_reference(orient_run, tiny_templateflow, tmp_path):
    """The subject (rotated and shifted in world space) in reference space matches the template
    much better than the subject laid on the template grid as it is (identity)."""
    anat = orient_run.out / "sub-02" / "anat"
    tpl_t2 = tiny_templateflow / f"tpl-{TPL}" / f"tpl-{TPL}_T2w.nii.gz"
    as_is = apply_transform(anat / "sub-02_desc-preproc_T2w.nii.gz", tpl_t2, None,
                            tmp_path / "as_is.nii.gz")  # fmt: skip
    template = data(tpl_t2)
    brain = template > 0
    registered = data(anat / f"sub-02_space-{TPL}_desc-preproc_T2w.nii.gz")
    before, after = (
        corr(data(as_is)[brain], template[brain]),
        corr(registered[brain], template[brain]),
    )
    assert after > before + 0.1, (before, after)


def test_other_modality_follows_the_moving_one(orient_run, tiny_templateflow, tmp_path):
    """The T1w (moved against the T2w) reaches the reference through its coregistration to
    the T2w and then the T2w's transform: it lands where the T2w lands."""
    anat = orient_run.out / "sub-01" / "anat"
    tpl_t1 = data(tiny_templateflow / f"tpl-{TPL}" / f"tpl-{TPL}_T1w.nii.gz")
    t2_ref = data(anat / f"sub-01_space-{TPL}_desc-preproc_T2w.nii.gz")
    t1_ref = data(anat / f"sub-01_space-{TPL}_desc-preproc_T1w.nii.gz")
    tpl_t2 = data(tiny_templateflow / f"tpl-{TPL}" / f"tpl-{TPL}_T2w.nii.gz")
    brain = tpl_t1 > 0
    # the T1w lands on the template T1w as well as the T2w lands on the template T2w (a wrong
    # order of the transforms leaves it rotated)
    print(corr(t1_ref[brain], tpl_t1[brain]), corr(t2_ref[brain], tpl_t2[brain]))
    assert corr(t1_ref[brain], tpl_t1[brain]) > corr(t2_ref[brain], tpl_t2[brain]) - 0.05
    # and it equals the T1w coregistered to the T2w (desc-preproc_T1w, on the T2w grid) carried
    # by the exported T2w transform
    chained = apply_transform(
        anat / "sub-01_space-T2w_desc-preproc_T1w.nii.gz",
        tiny_templateflow / f"tpl-{TPL}" / f"tpl-{TPL}_T1w.nii.gz",
        anat / f"sub-01_from-T2w_to-{TPL}_mode-image_xfm.h5",
        tmp_path / "chained.nii.gz",
    )
    assert corr(data(chained)[brain], t1_ref[brain]) > 0.98


def test_gzip_truncation_is_real(bad_run):
    """Guard of the bad-input fixture: the truncated file really is a broken gzip stream."""
    path = bad_run.bids / "sub-02" / "anat" / "sub-02_T2w.nii.gz"
    with pytest.raises((EOFError, OSError)), gzip.open(path) as fobj:
        fobj.read()


def test_t1w_t2w_coregistration_transforms(e2e):
    """The subject's own T1w <-> T2w coregistration is written both ways as ITK .h5 (as
    nibabies does): resampling the input T1w with from-T1w_to-T2w reproduces the
    coregistered T1w the app wrote, and the pair are inverses."""
    from contrareg_bids.io.transforms import apply_transform, read_transform

    anat = e2e.out / "sub-01" / "anat"
    to_t2w = anat / "sub-01_from-T1w_to-T2w_mode-image_xfm.h5"
    to_t1w = anat / "sub-01_from-T2w_to-T1w_mode-image_xfm.h5"
    coreg = anat / "sub-01_space-T2w_desc-preproc_T1w.nii.gz"
    out = apply_transform(e2e.bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz", coreg,
                          [to_t2w], e2e.out.parent / "t1w_in_t2w.nii.gz", "linear")  # fmt: skip
    a, b = data(out).ravel(), data(coreg).ravel()
    inside = (a > 0) | (b > 0)
    assert np.corrcoef(a[inside], b[inside])[0, 1] > 0.95
    point = np.array([5.0, -3.0, 2.0])
    there = read_transform(to_t2w).TransformPoint(point.tolist())
    back = read_transform(to_t1w).TransformPoint(there)
    assert np.allclose(back, point, atol=1e-4)
    assert "Sources" in json.loads(to_t2w.with_suffix("").with_suffix(".json").read_text())
