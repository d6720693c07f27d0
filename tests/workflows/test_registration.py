"""``init_subject_registration_wf``: which nodes exist and how they are wired (no execution).

Inputs are tiny files (the interfaces check that input files exist); nothing runs.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nipype.interfaces.base import isdefined

from contrareg_bids.interfaces import AntsRegister, ContraRegister
from contrareg_bids.settings import OPTION_FIELDS, RegistrationSettings
from contrareg_bids.workflows.registration import (
    ReferenceInputs,
    SubjectInputs,
    init_subject_registration_wf,
)

CORE = {
    "validate_reference", "reference_mask", "normalize_reference", "validate_moving",
    "n4_moving", "affine_moving", "brain_mask", "normalize_moving", "prepare_pair", "register",
    "export_xfms", "moving_to_ref", "ref_mask_to_subject", "metrics", "ds_preproc", "ds_mask",
    "ds_moving_ref", "ds_xfm_to_ref", "ds_xfm_from_ref", "ds_ref_mask", "ds_metrics",
    "ds_metrics_json", "ds_preproc_meta", "ds_moving_ref_meta",
}  # fmt: skip
OTHER = {"validate_other", "n4_other", "coreg_other", "other_to_ref", "merge_xfms",
         "ds_other_preproc", "ds_other_ref", "ds_other_preproc_meta", "ds_other_ref_meta",
         "export_coreg", "ds_coreg_to_moving", "ds_coreg_to_other"}  # fmt: skip
REF_DSEG = {"ref_dseg_to_subject", "ds_ref_dseg"}
SUBJECT_LABELS = {"subject_labels_to_ref", "ds_subject_dseg_ref"}


def _nii(path: Path, dtype=np.float32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), dtype), np.eye(4)), str(path))
    return path


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    anat = tmp_path / "bids" / "sub-01" / "anat"
    ses = tmp_path / "bids" / "sub-01" / "ses-1" / "anat"
    tpl = tmp_path / "tpl"
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"not read while building")
    tsv = tpl / "dseg.tsv"
    tpl.mkdir()
    tsv.write_text("index\tname\n1\tGM\n")
    return {
        "T1w": _nii(anat / "sub-01_T1w.nii.gz"),
        "T2w": _nii(anat / "sub-01_T2w.nii.gz"),
        "ses_T2w": _nii(ses / "sub-01_ses-1_T2w.nii.gz"),
        "mask": _nii(tmp_path / "deriv" / "sub-01_desc-brain_mask.nii.gz", np.uint8),
        "labels": _nii(tmp_path / "deriv" / "sub-01_dseg.nii.gz", np.int16),
        "tpl_T1w": _nii(tpl / "tpl-X_T1w.nii.gz"),
        "tpl_mask": _nii(tpl / "tpl-X_desc-brain_mask.nii.gz", np.uint8),
        "tpl_dseg": _nii(tpl / "tpl-X_desc-tissues_dseg.nii.gz", np.int16),
        "tpl_tsv": tsv,
        "model": model,
    }


def build(
    files, tmp_path, *, anat=("T1w", "T2w"), moving="T2w", session=None, derivs=(),
    ref_dseg=True, registration="contrareg", template=True, cohort=None, **kwargs,
):  # fmt: skip
    paths = {m: str(files[m]) for m in anat}
    if session:
        paths["T2w"] = str(files["ses_T2w"])
    subj = SubjectInputs(
        subject="01", session=session, anat=paths, moving_modality=moving,
        derivatives={d: files[d] for d in derivs},
    )  # fmt: skip
    if template:
        ref = ReferenceInputs(
            image=files["tpl_T1w"], space="X", cohort=cohort, mask=files["tpl_mask"],
            dseg=files["tpl_dseg"] if ref_dseg else None,
            dseg_tsv=files["tpl_tsv"] if ref_dseg else None, description="X",
        )  # fmt: skip
    else:
        ref = ReferenceInputs(image=files["T1w"], space="sub02", is_template=False,
                              dseg=files["labels"] if ref_dseg else None)  # fmt: skip
    # the registration options by their command-line names, as RunConfig makes them
    options = {"registration": registration, "fine_steps": 0}
    options["model"] = files["model"] if registration == "contrareg" else None
    options.update({k: kwargs.pop(k) for k in OPTION_FIELDS if k in kwargs})
    settings = RegistrationSettings.from_options(options, seed=kwargs.get("seed", 0))
    args = dict(
        subj=subj, ref=ref, output_dir=tmp_path / "out", settings=settings,
        grid_shape=(4, 4, 4), grid_spacing=(1.0, 1.0, 1.0),
    )  # fmt: skip
    args.update(kwargs)
    return init_subject_registration_wf(**args)


def executed(wf):
    """The graph Nipype runs: nested workflows flattened, identity nodes (inputnode,
    outputnode) removed and their connections joined up."""
    from nipype.pipeline.engine.utils import generate_expanded_graph

    return generate_expanded_graph(wf._create_flat_graph())


def names(wf) -> set[str]:
    """Nodes that run, the QC reportlets aside (``test_report_nodes``)."""
    return {n.name for n in executed(wf).nodes() if ".report_wf." not in f".{n.fullname}"}


def edges(wf) -> set[tuple[str, str, str, str]]:
    """``(source node, source field, destination node, destination field)`` of the nodes
    that run, across the factories' inputnode/outputnode."""
    out = set()
    for u, v, d in executed(wf).edges(data=True):
        for src, dst in d["connect"]:
            out.add((u.name, src if isinstance(src, str) else src[0], v.name, dst))
    return out


def node_of(wf, name: str):
    """The node ``name`` as it runs (names are unique), with the inputs its factory's
    inputnode gave it."""
    found = [n for n in executed(wf).nodes() if n.name == name]
    assert len(found) == 1, (name, found)
    return found[0]


def test_both_modalities(files, tmp_path):
    wf = build(files, tmp_path)
    assert names(wf) == CORE | OTHER | REF_DSEG | {"ds_ref_dseg_tsv"}
    e = edges(wf)
    # the other modality: coregistered to the moving one, then the moving one's transform;
    # the list acts on the reference point in order (reference -> T2w -> T1w)
    assert ("export_xfms", "reference_to_subject", "merge_xfms", "in1") in e
    assert ("coreg_other", "transform", "merge_xfms", "in2") in e
    assert ("merge_xfms", "out", "other_to_ref", "transforms") in e
    assert ("n4_moving", "out_file", "coreg_other", "fixed") in e
    assert ("n4_other", "out_file", "coreg_other", "moving") in e
    assert ("coreg_other", "moved", "ds_other_preproc", "in_file") in e
    # the moving image: N4 -> affine -> model grid -> registration -> transforms -> outputs
    assert ("n4_moving", "out_file", "affine_moving", "moving") in e
    assert ("validate_reference", "out_file", "affine_moving", "fixed") in e
    assert ("affine_moving", "transform", "prepare_pair", "affine") in e
    assert ("prepare_pair", "moving", "register", "moving") in e
    assert ("prepare_pair", "fixed", "register", "fixed") in e
    assert ("affine_moving", "transform", "export_xfms", "affine") in e
    assert ("export_xfms", "reference_to_subject", "moving_to_ref", "transforms") in e
    assert ("export_xfms", "subject_to_reference", "ref_dseg_to_subject", "transforms") in e
    assert ("export_xfms", "reference_to_subject", "ds_xfm_to_ref", "in_file") in e
    assert ("export_xfms", "subject_to_reference", "ds_xfm_from_ref", "in_file") in e
    assert ("register", "method", "metrics", "method") in e
    # the reference mask reaches the subject through the affine when no mask is given
    assert ("affine_moving", "transform", "brain_mask", "affine") in e
    assert ("reference_mask", "out_file", "brain_mask", "reference_mask") in e
    assert not isdefined(node_of(wf, "brain_mask").inputs.given_mask)
    # output names
    ds = node_of(wf, "ds_xfm_to_ref").inputs
    assert (getattr(ds, "from"), ds.to, ds.mode, ds.suffix) == ("T2w", "X", "image", "xfm")
    ds = node_of(wf, "ds_xfm_from_ref").inputs
    assert (getattr(ds, "from"), ds.to) == ("X", "T2w")
    ds = node_of(wf, "ds_ref_dseg").inputs
    assert (ds.space, ds.desc, ds.suffix) == ("T2w", "X", "dseg")
    ds = node_of(wf, "ds_ref_dseg_tsv").inputs
    assert (ds.space, ds.desc, ds.extension) == ("T2w", "X", ".tsv")
    assert node_of(wf, "ds_other_ref").inputs.source_file == [str(files["T1w"])]
    assert node_of(wf, "ds_moving_ref").inputs.source_file == [str(files["T2w"])]


@pytest.mark.parametrize("moving", ["T1w", "T2w"])
def test_one_modality(files, tmp_path, moving):
    """Only the moving modality: no coregistration branch; names follow the modality."""
    wf = build(files, tmp_path, anat=(moving,), moving=moving)
    assert names(wf) == CORE | REF_DSEG | {"ds_ref_dseg_tsv"}
    assert node_of(wf, "validate_moving").inputs.in_file == str(files[moving])
    assert getattr(node_of(wf, "ds_xfm_to_ref").inputs, "from") == moving
    assert node_of(wf, "ds_ref_dseg").inputs.space == moving
    assert node_of(wf, "ds_ref_mask").inputs.space == moving


def test_moving_t1w_with_t2w_as_the_other(files, tmp_path):
    wf = build(files, tmp_path, moving="T1w")
    assert OTHER <= names(wf)
    assert node_of(wf, "validate_moving").inputs.in_file == str(files["T1w"])
    assert node_of(wf, "validate_other").inputs.in_file == str(files["T2w"])


@pytest.mark.parametrize("session", [None, "1"])
def test_sessions(files, tmp_path, session):
    wf = build(files, tmp_path, anat=("T2w",), session=session)
    source = node_of(wf, "ds_preproc").inputs.source_file
    assert ("_ses-1_" in source[0]) is (session is not None)
    for node in ("ds_mask", "ds_moving_ref", "ds_xfm_to_ref", "ds_metrics"):
        assert node_of(wf, node).inputs.source_file == source


def test_precomputed_mask_and_labels(files, tmp_path):
    wf = build(files, tmp_path, derivs=("mask", "labels"))
    assert names(wf) == CORE | OTHER | REF_DSEG | SUBJECT_LABELS | {"ds_ref_dseg_tsv"}
    assert node_of(wf, "brain_mask").inputs.given_mask == str(files["mask"])
    metrics = node_of(wf, "metrics").inputs
    assert metrics.subject_labels == str(files["labels"])
    e = edges(wf)
    assert ("ref_dseg_to_subject", "out_file", "metrics", "reference_labels") in e
    assert ("affine_moving", "transform", "metrics", "affine") in e  # mean_dice_affine
    assert metrics.reference_dseg  # the reference labels, for the affine-only Dice
    assert ("export_xfms", "reference_to_subject", "subject_labels_to_ref", "transforms") in e
    assert ("validate_reference", "out_file", "subject_labels_to_ref", "reference") in e
    assert node_of(wf, "subject_labels_to_ref").inputs.interpolation == "label"
    assert node_of(wf, "ds_subject_dseg_ref").inputs.space == "X"


def test_labels_without_reference_dseg(files, tmp_path):
    """Subject labels still go to the reference; no Dice without reference labels."""
    wf = build(files, tmp_path, derivs=("labels",), ref_dseg=False)
    assert names(wf) == CORE | OTHER | SUBJECT_LABELS
    assert not isdefined(node_of(wf, "metrics").inputs.subject_labels)
    assert not any(dst == "metrics" and f == "reference_labels" for *_, dst, f in edges(wf))


def test_contrareg_and_ants(files, tmp_path):
    wf = build(files, tmp_path, lam=0.3, device="cuda:1", use_gpu=True)
    register = node_of(wf, "register")
    assert isinstance(register.interface, ContraRegister)
    assert register.inputs.model == str(files["model"])
    settings = register.inputs.settings  # the one settings object, as a dict
    assert (settings["lam"], settings["device"], register.inputs.use_gpu) == (0.3, "cuda:1", True)
    assert node_of(wf, "metrics").inputs.lam == 0.3
    import hashlib

    extra = node_of(wf, "metrics").inputs.extra  # what ran, in the metrics row
    digest = hashlib.sha256(Path(files["model"]).read_bytes()).hexdigest()
    assert extra["model"] == Path(files["model"]).name and extra["model_sha256"] == digest
    assert (extra["refine_steps"], extra["fine_steps"]) == (0, 0)

    wf = build(files, tmp_path, registration="ants", seed=7, sloppy=True)
    register = node_of(wf, "register")
    assert isinstance(register.interface, AntsRegister)
    assert (register.inputs.seed, register.inputs.sloppy) == (7, True)
    assert not isdefined(node_of(wf, "metrics").inputs.lam)
    extra = node_of(wf, "metrics").inputs.extra
    assert extra["seed"] == 7 and not {"model", "fine_steps"} & set(extra)
    assert names(wf) == CORE | OTHER | REF_DSEG | {"ds_ref_dseg_tsv"}


def test_refinement_gets_the_pair_at_the_references_resolution(files, tmp_path):
    """With --refine-steps the pair is also prepared at the reference's resolution and handed
    to the registration node (phase-sampled refinement); without, it is not."""
    wf = build(files, tmp_path, refine_steps=10, refine_draws=3)
    assert node_of(wf, "prepare_pair").inputs.phase_sampling
    assert node_of(wf, "register").inputs.settings["refine"]["draws"] == 3
    edges = {
        (u.name, v.name, src, dst)
        for u, v, d in executed(wf).edges(data=True)
        for src, dst in d["connect"]
    }
    assert ("prepare_pair", "register", "fine_moving", "fine_moving") in edges
    assert ("prepare_pair", "register", "fine_fixed", "fine_fixed") in edges
    assert not node_of(build(files, tmp_path), "prepare_pair").inputs.phase_sampling


def test_required_arguments(files, tmp_path):
    with pytest.raises(ValueError, match="model bundle is required"):
        build(files, tmp_path, model=None)
    with pytest.raises(ValueError, match="grid_shape and grid_spacing"):
        build(files, tmp_path, grid_shape=None)


def test_template_vs_participant_reference(files, tmp_path):
    """A template is used as it is; another participant's image gets N4 first."""
    wf = build(files, tmp_path, anat=("T2w",))
    assert "n4_reference" not in names(wf)
    assert ("validate_reference", "out_file", "reference_mask", "in_file") in edges(wf)
    assert node_of(wf, "reference_mask").inputs.given_mask == str(files["tpl_mask"])

    wf = build(files, tmp_path, anat=("T2w",), template=False)
    assert "n4_reference" in names(wf)
    e = edges(wf)
    assert ("n4_reference", "out_file", "reference_mask", "in_file") in e
    assert ("n4_reference", "out_file", "affine_moving", "fixed") in e
    assert not isdefined(node_of(wf, "reference_mask").inputs.given_mask)
    assert "ds_ref_dseg_tsv" not in names(wf)  # labels of a participant have no table
    assert node_of(wf, "ds_moving_ref").inputs.space == "sub02"


def test_cohort_entity(files, tmp_path):
    wf = build(files, tmp_path, cohort=2)
    for node in ("ds_moving_ref", "ds_other_ref"):
        inputs = node_of(wf, node).inputs
        assert (inputs.space, inputs.cohort) == ("X", "2")
    # the reference as a label of to-/from-/desc- keeps its cohort, alphanumeric (BIDS
    # labels; nibabies' X+2 is not one)
    assert node_of(wf, "ds_xfm_to_ref").inputs.to == "XCohort2"
    assert getattr(node_of(wf, "ds_xfm_from_ref").inputs, "from") == "XCohort2"
    for node in ("ds_ref_mask", "ds_ref_dseg", "ds_ref_dseg_tsv"):
        assert node_of(wf, node).inputs.desc == "XCohort2", node
    wf = build(files, tmp_path)
    assert not isdefined(node_of(wf, "ds_moving_ref").inputs.cohort)
    assert node_of(wf, "ds_xfm_to_ref").inputs.to == "X"
    assert node_of(wf, "ds_ref_dseg").inputs.desc == "X"


def test_omp_nthreads_on_threaded_nodes(files, tmp_path):
    """``--omp-nthreads``: every multi-threaded node gets that many threads and MultiProc
    slots; the others keep one slot."""
    wf = build(files, tmp_path, omp_nthreads=3)
    threaded = {"n4_moving", "affine_moving", "register", "n4_other", "coreg_other",
                "moving_to_ref", "ref_mask_to_subject", "ref_dseg_to_subject",
                "other_to_ref"}  # fmt: skip
    for name in threaded:
        node = node_of(wf, name)
        assert (node.inputs.num_threads, node.n_procs) == (3, 3), name
    assert node_of(wf, "normalize_moving").n_procs == 1
    wf = build(files, tmp_path, registration="ants")
    assert (node_of(wf, "register").inputs.num_threads, node_of(wf, "register").n_procs) == (1, 1)


# ---------------------------------------------------------------------------------------------
# resolve_reference: what --reference picks (real pybids layout, real TemplateFlow client)
# ---------------------------------------------------------------------------------------------
def _cfg(reference: str, **kw):
    from types import SimpleNamespace

    return SimpleNamespace(reference=reference, fixed_modality="T1w", bids_filters=None,
                           derivatives=kw.pop("derivatives", {}),
                           labels_desc=kw.pop("labels_desc", None), **kw)  # fmt: skip


def test_reference_template_resolution(tmp_path, monkeypatch):
    """``TEMPLATE:res-N`` picks that resolution (image, mask, dseg on one grid)."""
    from contrareg_bids.cli.inputs import resolve_reference
    from contrareg_bids.io import templates

    home = tmp_path / "tf"
    flat = home / "tpl-Flat"
    for res in (1, 2):
        _nii(flat / f"tpl-Flat_res-{res}_T1w.nii.gz")
        _nii(flat / f"tpl-Flat_res-{res}_desc-brain_mask.nii.gz", np.uint8)
        _nii(flat / f"tpl-Flat_res-{res}_desc-tissues_dseg.nii.gz", np.int16)
    (flat / "template_description.json").write_text('{"Name": "Flat"}')
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))
    monkeypatch.setenv("TEMPLATEFLOW_AUTOUPDATE", "0")
    templates.reset_clients()
    try:
        ref = resolve_reference(_cfg("Flat:res-2"), None, "01", None)
        assert ref.image.name == "tpl-Flat_res-2_T1w.nii.gz"
        assert ref.mask.name == "tpl-Flat_res-2_desc-brain_mask.nii.gz"
        assert ref.dseg.name == "tpl-Flat_res-2_desc-tissues_dseg.nii.gz"
        assert (ref.space, ref.cohort, ref.is_template) == ("Flat", None, True)
        assert resolve_reference(_cfg("Flat"), None, "01", None).image.name.startswith(
            "tpl-Flat_res-1_"
        )
    finally:
        templates.reset_clients()


def test_reference_participant_session(tmp_path):
    """``sub-01_ses-2`` takes the T1w (and derivatives) of that session, not the first one."""
    from contrareg_bids.cli.execution import SubjectError
    from contrareg_bids.cli.inputs import resolve_reference
    from contrareg_bids.io.bids import make_layout
    from tests.bids_factory import make_bids_dataset, make_volume

    bids = make_bids_dataset(
        tmp_path / "bids",
        {"01": {"1": {"T1w": make_volume(), "age": 38}, "2": {"T1w": make_volume(), "age": 42}},
         "02": {"1": {"T2w": make_volume(), "age": 40}}},
        sessions=True, age_source="sessions",
    )  # fmt: skip
    deriv = tmp_path / "deriv"
    for ses in ("1", "2"):
        _nii(deriv / "sub-01" / f"ses-{ses}" / "anat" / f"sub-01_ses-{ses}_dseg.nii.gz")
    layout = make_layout(bids)
    ref = resolve_reference(_cfg("sub-01_ses-2", derivatives={"l": deriv}), layout, "02", "1")
    assert ref.image.name == "sub-01_ses-2_T1w.nii.gz"
    assert ref.dseg.name == "sub-01_ses-2_dseg.nii.gz"
    assert (ref.space, ref.is_template) == ("sub01", False)
    assert ref.description == "sub-01_ses-2 T1w"
    ref = resolve_reference(_cfg("sub-01"), layout, "02", "1")
    assert ref.image.name == "sub-01_ses-1_T1w.nii.gz"
    with pytest.raises(SubjectError, match="--reference sub-02: no T1w image"):
        resolve_reference(_cfg("sub-02"), layout, "01", "1")


def test_sidecar_sources_and_spatial_reference(tmp_path):
    """Derivatives name their inputs (BIDS URIs) and, in reference space, the reference."""
    from contrareg_bids.workflows.registration import (
        ReferenceInputs,
        source_uri,
        spatial_reference,
    )

    bids = tmp_path / "bids"
    f = bids / "sub-01" / "anat" / "sub-01_T2w.nii.gz"
    f.parent.mkdir(parents=True)
    f.write_bytes(b"")
    assert source_uri(f, bids) == "bids:raw:sub-01/anat/sub-01_T2w.nii.gz"
    assert source_uri(tmp_path / "x.nii.gz", bids) == str(tmp_path / "x.nii.gz")
    tpl = ReferenceInputs(image=tmp_path / "tf/tpl-X/cohort-1/tpl-X_cohort-1_T1w.nii.gz",
                          space="X", cohort=1)  # fmt: skip
    assert spatial_reference(tpl, bids) == "tpl-X/cohort-1/tpl-X_cohort-1_T1w.nii.gz"
    subj = ReferenceInputs(image=f, space="sub01", is_template=False)
    assert spatial_reference(subj, bids) == "bids:raw:sub-01/anat/sub-01_T2w.nii.gz"


def test_report_nodes(files, tmp_path):
    """The QC reportlets: the brain mask, the coregistration flicker, both registration
    flickers, label outlines on both modalities, the Jacobian, the summary and (ContraReg
    only) the lambda strip, each with its sink; none when off."""
    reports = {n for n in build(files, tmp_path).list_node_names() if n.startswith("report_wf.")}
    views = {"mask_contours", "flicker_coreg", "flicker_affine", "flicker_registration",
             "labels_subject", "labels_other", "jacobian", "summary", "lambda_strip"}  # fmt: skip
    assert {f"report_wf.{v}" for v in views} <= reports
    assert len([n for n in reports if ".ds_report_" in n]) == len(views)
    ants = build(files, tmp_path, registration="ants").list_node_names()
    assert "report_wf.jacobian" in ants and "report_wf.lambda_strip" not in ants
    off = build(files, tmp_path, reports=False).list_node_names()
    assert not any(n.startswith("report_wf.") for n in off)


def test_prepared_reference_feeds_the_same_connections(files, tmp_path):
    """A run prepares the reference once (``init_reference_wf``); subject workflows then
    take its files in place of its nodes, wired the same way."""
    from contrareg_bids.workflows.anatomical import init_reference_wf

    own = {"validate_reference", "n4_reference", "reference_mask", "normalize_reference"}
    ref_wf = init_reference_wf(is_template=False)
    assert {n.name for n in ref_wf._graph.nodes()} == own | {"inputnode", "outputnode"}
    for template in (True, False):
        plain = build(files, tmp_path, template=template)
        prepared = build(files, tmp_path, template=template, reference_files={
            k: files["T1w"] for k in ("validated", "image", "mask", "normalized")})  # fmt: skip
        assert names(prepared) == names(plain) - own
        assert edges(prepared) - edges(plain) == set()
        assert all(e[0] in own for e in edges(plain) - edges(prepared))
        # the prepared files reach the nodes the removed ones fed, as their input values
        assert not any(e[2] == "affine_moving" and e[3] == "fixed" for e in edges(prepared))
        assert node_of(prepared, "affine_moving").inputs.fixed == str(files["T1w"])
        assert node_of(prepared, "prepare_pair").inputs.reference == str(files["T1w"])


def test_prepared_reference_is_remade_when_its_files_are_gone(tmp_path):
    """Regression: the per-process cache of the prepared reference pointed at files of a
    work directory that had been removed since."""
    import shutil

    from contrareg_bids.cli import inputs

    brain = np.zeros((12, 14, 10), np.float32)
    brain[2:10, 3:11, 2:8] = 100.0
    ref_img = tmp_path / "ref_T1w.nii.gz"
    nib.save(nib.Nifti1Image(brain, np.eye(4)), str(ref_img))
    mask = tmp_path / "ref_mask.nii.gz"
    nib.save(nib.Nifti1Image((brain > 0).astype(np.uint8), np.eye(4)), str(mask))
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image(brain * (1 + 0.1 * rng.random(brain.shape)).astype(np.float32),
                             np.eye(4)), str(ref_img))  # fmt: skip
    ref = ReferenceInputs(image=ref_img, space="X", mask=mask, is_template=True)
    cfg = _cfg("x", work_dir=tmp_path / "w", output_dir=tmp_path / "o", sloppy=True,
               random_seed=0, run_uuid="r", threads_per_node=1)  # fmt: skip
    first = inputs.prepare_reference(cfg, ref, tmp_path / "crash")
    assert all(f.is_file() for f in first.values())
    shutil.rmtree(tmp_path / "w")
    again = inputs.prepare_reference(cfg, ref, tmp_path / "crash")
    assert all(f.is_file() for f in again.values())


def test_preparing_a_participant_reference_keeps_the_run_threads(tmp_path):
    """Regression: N4 of a participant reference, prepared in the main process, set the
    process to one thread (torch, OpenMP, ITK), so the train level after it trained on one
    thread whatever ``--nprocs``; its nodes now get the run's threads."""
    import torch

    from contrareg_bids.cli import inputs
    from contrareg_bids.runtime import limit_threads

    rng = np.random.default_rng(1)
    brain = np.zeros((12, 14, 10), np.float32)
    brain[2:10, 3:11, 2:8] = 100.0 * (1 + 0.1 * rng.random((8, 8, 6)))
    ref_img = tmp_path / "sub-02_T1w.nii.gz"
    nib.save(nib.Nifti1Image(brain, np.eye(4)), str(ref_img))
    mask = tmp_path / "sub-02_mask.nii.gz"
    nib.save(nib.Nifti1Image((brain > 0).astype(np.uint8), np.eye(4)), str(mask))
    ref = ReferenceInputs(image=ref_img, space="sub02", mask=mask, is_template=False)
    cfg = _cfg("sub-02", work_dir=tmp_path / "w", output_dir=tmp_path / "o", sloppy=True,
               random_seed=0, run_uuid="r", threads_per_node=2)  # fmt: skip
    before = torch.get_num_threads()
    try:
        limit_threads(2)
        inputs.prepare_reference(cfg, ref, tmp_path / "crash")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_workflow_describes_what_it_runs(files, tmp_path):
    """The subject workflow is literate (niworkflows' ``visit_desc``, as smriprep's): its
    description names what was built (the brain mask's source, the method, lambda, the
    refinement and the fine stage) in the words of the methods text, which reads the same
    sentences from the metrics row after the run."""
    from contrareg_bids.reports.boilerplate import methods_text

    wf = build(files, tmp_path, lam=0.3, refine_steps=10, fine_steps=5)
    desc = wf.visit_desc()
    assert desc.startswith(" The T2w image was corrected for intensity non-uniformity")
    assert "its brain mask is the reference's mask carried through the affine" in desc
    assert "at lambda = 0.3" in desc and "for 10 steps with the model's own objective" in desc
    assert "optimised for 5 steps at the reference's resolution" in desc
    row = {"lambda": "0.3", "refine_steps": "10", "fine_steps": "5", "brain_mask": "reference",
           "reference_template": "X"}  # fmt: skip
    assert desc in methods_text(row, "T2w", "X")
    ants = build(files, tmp_path, registration="ants", derivs=("mask",)).visit_desc()
    assert "registered deformably with ANTs SyN" in ants and "ContraReg" not in ants
    assert "The brain mask of the subject was given with the data." in ants
    auto = build(files, tmp_path, lam="auto").visit_desc()
    assert "a regularisation weight chosen per subject" in auto


def test_readme_embedding_snippet_builds(tmp_path, tiny_bundle, monkeypatch):
    """README's Python example (the pair factory with one settings object) runs as written,
    in a folder holding the files it names."""
    import re

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    intro = readme.index("In your own Nipype pipeline")
    code = re.search(r"```python\n(.*?)```", readme[intro:], re.S).group(1)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(Path(tiny_bundle).read_bytes())
    for name in ("tpl_T1w.nii.gz", "tpl_mask.nii.gz", "sub-01_T2w.nii.gz"):
        _nii(tmp_path / name)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    pair_wf = scope["pair_wf"]
    assert pair_wf.name == "pair_wf" and pair_wf.inputs.inputnode.in_file == "sub-01_T2w.nii.gz"
    assert "lambda = 0.8" in pair_wf.visit_desc()
