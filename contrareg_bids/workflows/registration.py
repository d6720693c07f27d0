"""Registration: the pair onto the model grid, ContraReg (or ANTs SyN), the transforms
(:func:`init_registration_wf`), resampling with them (:func:`init_apply_wf`), and one
subject-session of the participant level built from these and the anatomical pieces
(:func:`init_subject_registration_wf`, docs/architecture.md, data flow).

Node names equal variable names; every factory has an ``inputnode`` and an ``outputnode``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces import (
    AntsRegister,
    ApplyWarp,
    ContraRegister,
    ExportTransforms,
    PrepareModelPair,
    RegistrationMetrics,
)
from ..metrics import FOLDING_LIMIT_PERCENT


@dataclass
class ReferenceInputs:
    """What the factory knows of the reference before anything runs."""

    image: Path  # fixed modality
    space: str  # BIDS space label, e.g. dhcpVol, sub01, custom
    cohort: int | None = None
    mask: Path | None = None
    dseg: Path | None = None
    dseg_tsv: Path | None = None
    is_template: bool = True
    description: str = ""


@dataclass
class SubjectInputs:
    subject: str
    session: str | None
    anat: dict[str, str]  # modality -> path (first run)
    moving_modality: str
    derivatives: dict[str, Path] = field(default_factory=dict)  # mask, labels
    #: post-menstrual age given on the command line (``--pma``/``--age-months``) and how;
    #: None: read from the BIDS tables for the report
    age_weeks: float | None = None
    age_source: str = ""
    #: extract the brain of the moving image (a scan with skull; ``--skull-strip``)
    skull_strip: bool = False


def source_uri(path: str | Path, bids_dir: Path | None) -> str:
    """``bids:raw:<relative path>`` for a file of the input dataset, else its path."""
    p = Path(path)
    if bids_dir is not None:
        try:
            return f"bids:raw:{p.resolve().relative_to(Path(bids_dir).resolve()).as_posix()}"
        except ValueError:
            pass
    return str(p)


def reference_label(ref: ReferenceInputs) -> str:
    """The reference as one entity label: ``dhcpVol``, or ``dhcpVolCohort40`` for a cohort.

    An image in reference space carries the cohort as its own entity
    (``space-dhcpVol_cohort-40``), but in ``to-``/``from-``/``desc-`` the reference is a label
    of another entity, and BIDS labels are alphanumeric: nibabies' ``MNIInfant+1`` is not a
    valid label, so template and cohort are joined by the word ``Cohort``. Without the
    cohort the outputs of two cohorts would share one name.
    """
    return f"{ref.space}Cohort{ref.cohort}" if ref.cohort is not None else ref.space


def spatial_reference(ref: ReferenceInputs, bids_dir: Path | None) -> str:
    """A template's TemplateFlow path (``tpl-X/...``), else a URI of the reference image."""
    parts = Path(ref.image).parts
    tpl = [i for i, part in enumerate(parts[:-1]) if part.startswith("tpl-")]  # folders
    if ref.is_template and tpl:
        return "/".join(parts[tpl[-1] :])
    return source_uri(ref.image, bids_dir)


#: ``outputnode`` fields of :func:`init_registration_wf`.
REGISTRATION_FIELDS = (
    "reference_to_subject",  # composite .h5: resamples the subject onto the reference grid
    "subject_to_reference",  # its inverse
    "forward_field",  # displacement on the model grid
    "lam",  # the lambda used (chosen per subject with ``lam="auto"``)
    "lambda_search",  # the search trace (``lam="auto"``)
    "method",  # what ran: "contrareg" or "ants-syn"
    "model_moving",  # the pair on the model grid, and the fixed mask there
    "model_fixed",
    "model_mask",
)


def init_registration_wf(
    *,
    grid_shape: tuple[int, int, int],
    grid_spacing: tuple[float, float, float],
    registration: str = "contrareg",
    model: Path | None = None,
    lam: float | str = 0.1,
    max_folding: float = FOLDING_LIMIT_PERCENT,
    refine_steps: int = 0,
    refine_draws: int = 1,
    fine_steps: int = 0,
    device: str = "auto",
    use_gpu: bool = False,
    seed: int = 0,
    sloppy: bool = False,
    name: str = "registration_wf",
) -> pe.Workflow:
    """Deformable registration of a preprocessed pair: onto the model grid, ContraReg (or
    ANTs SyN), and the composite transforms (affine + deformation) at native resolution.

    ``lam="auto"`` chooses lambda per pair under the ``max_folding`` % budget;
    ``refine_steps`` refines each warp with the bundle's own objective
    (:mod:`contrareg_bids.nn.refine`), ``refine_draws`` PatchNCE samples per step;
    ``fine_steps`` then optimises the warp again at the reference's resolution
    (:func:`contrareg_bids.nn.refine.refine_fine`).

    Inputs
    ------
    moving
        the subject, intensity-normalised, subject space
    reference
        the reference, intensity-normalised
    reference_mask
        the reference's brain mask
    affine
        reference -> subject affine (ITK .mat, :func:`init_anat_preproc_wf`)

    Outputs: :data:`REGISTRATION_FIELDS`.
    """
    if registration == "contrareg" and model is None:
        raise ValueError("a model bundle is required for --registration contrareg")
    auto_lambda = lam == "auto"
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["moving", "reference", "reference_mask", "affine"]),
        name="inputnode",
    )
    outputnode = pe.Node(
        niu.IdentityInterface(fields=list(REGISTRATION_FIELDS)), name="outputnode"
    )
    # the refinement samples the pair at random sub-voxel phases of the model grid from the
    # images at the reference's resolution (when the model grid is coarser)
    phase_sampling = registration == "contrareg" and (refine_steps > 0 or fine_steps > 0)
    prepare_pair = pe.Node(
        PrepareModelPair(
            shape=tuple(grid_shape), spacing=tuple(grid_spacing), phase_sampling=phase_sampling
        ),
        name="prepare_pair",
    )
    if registration == "contrareg":
        register = pe.Node(
            ContraRegister(
                model=str(model),
                lam=0.1 if auto_lambda else lam,
                auto_lambda=auto_lambda,
                max_folding=max_folding,
                device=device,
                use_gpu=use_gpu,
                refine_steps=refine_steps,
                refine_draws=refine_draws,
                fine_steps=fine_steps,
                seed=seed,
            ),
            name="register",
            n_procs=1,
        )
        wf.connect(register, "lam", outputnode, "lam")
        if phase_sampling:
            wf.connect([
                (prepare_pair, register, [("fine_moving", "fine_moving"),
                                          ("fine_fixed", "fine_fixed")]),
            ])  # fmt: skip
        if auto_lambda:
            wf.connect(register, "lambda_search_info", outputnode, "lambda_search")
    else:
        register = pe.Node(AntsRegister(seed=seed, sloppy=sloppy), name="register")
    export_xfms = pe.Node(ExportTransforms(), name="export_xfms")
    wf.connect([
        (inputnode, prepare_pair, [("moving", "moving"), ("reference", "reference"),
                                   ("reference_mask", "reference_mask"), ("affine", "affine")]),
        (inputnode, export_xfms, [("affine", "affine")]),
        (prepare_pair, register, [("moving", "moving"), ("fixed", "fixed")]),
        (register, export_xfms, [("forward_field", "forward_field"),
                                 ("inverse_field", "inverse_field")]),
        (export_xfms, outputnode, [("reference_to_subject", "reference_to_subject"),
                                   ("subject_to_reference", "subject_to_reference")]),
        # the method the node ran ("contrareg", "ants-syn"), not the --registration choice
        (register, outputnode, [("forward_field", "forward_field"), ("method", "method")]),
        (prepare_pair, outputnode, [("moving", "model_moving"), ("fixed", "model_fixed"),
                                    ("fixed_mask", "model_mask")]),
    ])  # fmt: skip
    return wf


#: ``outputnode`` fields of :func:`init_apply_wf`.
APPLY_FIELDS = (
    "moving_in_reference",
    "reference_mask_in_subject",
    "reference_dseg_in_subject",  # with ``reference_dseg``
    "subject_dseg_in_reference",  # with ``subject_dseg``
    "other_in_reference",  # with ``other``
)


def init_apply_wf(
    *,
    reference_dseg: Path | None = None,
    subject_dseg: Path | None = None,
    other: bool = False,
    name: str = "apply_wf",
) -> pe.Workflow:
    """Resample with the registration's transforms: the subject (and its other modality)
    into reference space, the reference's mask and labels into the subject, the subject's
    labels into reference space.

    Inputs
    ------
    moving
        the subject's bias-corrected image (subject space)
    reference
        the reference on its own grid (the grid of reference-space outputs)
    reference_mask
        the reference's brain mask
    reference_to_subject, subject_to_reference
        :func:`init_registration_wf`'s transforms
    other, other_transform
        the other modality (own space) and its coregistration onto ``moving``

    Outputs: :data:`APPLY_FIELDS`.
    """
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(
        niu.IdentityInterface(
            fields=[
                "moving",
                "reference",
                "reference_mask",
                "reference_to_subject",
                "subject_to_reference",
                "other",
                "other_transform",
            ]
        ),
        name="inputnode",
    )
    outputnode = pe.Node(niu.IdentityInterface(fields=list(APPLY_FIELDS)), name="outputnode")
    moving_to_ref = pe.Node(ApplyWarp(out_name="moving_in_ref.nii.gz"), name="moving_to_ref")
    ref_mask_to_subject = pe.Node(
        ApplyWarp(interpolation="nearest", out_name="ref_mask.nii.gz"), name="ref_mask_to_subject"
    )
    wf.connect([
        (inputnode, moving_to_ref, [("moving", "in_file"), ("reference", "reference"),
                                    ("reference_to_subject", "transforms")]),
        (inputnode, ref_mask_to_subject, [("reference_mask", "in_file"), ("moving", "reference"),
                                          ("subject_to_reference", "transforms")]),
        (moving_to_ref, outputnode, [("out_file", "moving_in_reference")]),
        (ref_mask_to_subject, outputnode, [("out_file", "reference_mask_in_subject")]),
    ])  # fmt: skip
    # label maps (one-hot linear): the reference's into the subject, the subject's into the
    # reference: (node, label map, file name, target grid, transform, output)
    for name, dseg, out_name, grid, xfm, out in (
        (
            "ref_dseg_to_subject",
            reference_dseg,
            "ref_dseg.nii.gz",
            "moving",
            "subject_to_reference",
            "reference_dseg_in_subject",
        ),
        (
            "subject_labels_to_ref",
            subject_dseg,
            "subject_dseg_in_ref.nii.gz",
            "reference",
            "reference_to_subject",
            "subject_dseg_in_reference",
        ),
    ):
        if dseg is None:
            continue
        warp = pe.Node(
            ApplyWarp(in_file=str(dseg), interpolation="label", out_name=out_name), name=name
        )
        wf.connect([
            (inputnode, warp, [(grid, "reference"), (xfm, "transforms")]),
            (warp, outputnode, [("out_file", out)]),
        ])  # fmt: skip
    if other:
        other_to_ref = pe.Node(ApplyWarp(out_name="other_in_ref.nii.gz"), name="other_to_ref")
        merge_xfms = pe.Node(niu.Merge(2), name="merge_xfms", run_without_submitting=True)
        wf.connect([
            # antspyx transformlist order: the FIRST acts first on the reference point
            # (reference -> moving-modality subject space -> other modality)
            (inputnode, merge_xfms, [("reference_to_subject", "in1"), ("other_transform", "in2")]),
            (inputnode, other_to_ref, [("other", "in_file"), ("reference", "reference")]),
            (merge_xfms, other_to_ref, [("out", "transforms")]),
            (other_to_ref, outputnode, [("out_file", "other_in_reference")]),
        ])  # fmt: skip
    return wf


def provenance_columns(
    *,
    registration: str,
    model: Path | None,
    refine_steps: int,
    fine_steps: int,
    seed: int,
    reference: str,
    reference_template: str = "",
    brain_mask: str = "",
) -> dict:
    """The metrics row's record of what ran: the model (name and sha256 of the bundle), the
    refinement and fine-stage steps (ContraReg only), the seed, the reference (and its
    TemplateFlow identifier, which the methods text cites) and where the subject's brain
    mask came from (:data:`BRAIN_MASK_SOURCES`)."""
    from ..io.bundle import file_sha256

    columns: dict = {}
    if registration == "contrareg":
        if model is not None:
            columns.update(model=Path(model).name, model_sha256=file_sha256(model))
        columns.update(refine_steps=refine_steps, fine_steps=fine_steps)
    columns.update(seed=seed, reference=reference)
    if reference_template:
        columns["reference_template"] = reference_template
    if brain_mask:
        columns["brain_mask"] = brain_mask
    return columns


#: How the subject's brain mask was obtained (the metrics' ``brain_mask`` column).
BRAIN_MASK_SOURCES = {
    "given": "given in a derivatives dataset (--derivatives)",
    "extracted": "extracted from the scan with skull (--skull-strip)",
    "reference": "the reference's mask carried through the affine (a skull-stripped scan)",
}


def brain_mask_source(subj: SubjectInputs) -> str:
    """Which of :data:`BRAIN_MASK_SOURCES` the anatomical workflow of ``subj`` uses (the
    rule of :func:`.anatomical.init_anat_preproc_wf`)."""
    if subj.derivatives.get("mask") is not None:
        return "given"
    return "extracted" if subj.skull_strip else "reference"


def transform_provenance(columns: dict, *, registration: str, lam: float | str) -> dict:
    """What the transform sidecars say of the registration that made them (BIDS-style
    keys), from :func:`provenance_columns`: the method, the model bundle and its sha256,
    lambda (as asked: a number, or ``auto``), the refinement and fine-stage steps, the seed."""
    if registration != "contrareg":
        meta = {"RegistrationMethod": "ANTs SyN (antspyx, Mattes MI)"}
    else:
        meta = {"RegistrationMethod": "ContraReg", "Lambda": lam}
        for column, key in (
            ("model", "Model"),
            ("model_sha256", "ModelSHA256"),
            ("refine_steps", "RefineSteps"),
            ("fine_steps", "FineSteps"),
        ):
            if column in columns:
                meta[key] = columns[column]
    meta["RandomSeed"] = columns["seed"]
    return meta  # fmt: skip


def init_subject_registration_wf(
    *,
    subj: SubjectInputs,
    ref: ReferenceInputs,
    output_dir: Path,
    registration: str = "contrareg",
    model: Path | None = None,
    grid_shape: tuple[int, int, int] | None = None,
    grid_spacing: tuple[float, float, float] | None = None,
    lam: float | str = 0.1,
    max_folding: float = FOLDING_LIMIT_PERCENT,
    refine_steps: int = 0,
    refine_draws: int = 1,
    fine_steps: int = 0,
    device: str = "auto",
    use_gpu: bool = False,
    seed: int = 0,
    sloppy: bool = False,
    omp_nthreads: int = 1,
    bids_dir: Path | None = None,
    reports: bool = True,
    reference_files: dict[str, Path] | None = None,
    name: str = "subject_wf",
) -> pe.Workflow:
    """One subject-session of the participant level, from the pieces: the reference
    (:func:`.anatomical.init_reference_wf`, or ``reference_files`` it made once for a whole
    run), the subject (:func:`.anatomical.init_anat_preproc_wf`,
    :func:`.anatomical.init_coreg_other_wf`), the registration (:func:`init_registration_wf`),
    resampling (:func:`init_apply_wf`), the metrics, the derivatives
    (:func:`.outputs.init_ds_registration_wf`, :func:`.outputs.init_ds_other_wf`) and the QC
    reportlets (:func:`.reports.init_report_wf`, ``reports``).

    ``bids_dir`` lets the sidecars name their ``Sources`` as BIDS URIs (``bids:raw:...``).
    ``omp_nthreads`` is the threads (and MultiProc slots) of each multi-threaded node.
    ``lam="auto"``: the chosen lambda and the search trace go to the metrics TSV/JSON.
    """
    from .anatomical import init_anat_preproc_wf, init_coreg_other_wf
    from .outputs import init_ds_other_wf, init_ds_registration_wf

    if grid_shape is None or grid_spacing is None:
        raise ValueError("grid_shape and grid_spacing are required (model grid or reference grid)")
    wf = pe.Workflow(name=name)
    mod = subj.moving_modality
    source = subj.anat[mod]
    other = next((m for m in subj.anat if m != mod), None)
    labels = subj.derivatives.get("labels")

    reference = reference_node(wf, ref, reference_files, sloppy=sloppy, seed=seed)
    anat_preproc_wf = init_anat_preproc_wf(
        given_mask=subj.derivatives.get("mask"),
        skull_strip=subj.skull_strip,
        sloppy=sloppy,
        seed=seed,
    )
    anat_preproc_wf.inputs.inputnode.in_file = source
    registration_wf = init_registration_wf(
        grid_shape=grid_shape,
        grid_spacing=grid_spacing,
        registration=registration,
        model=model,
        lam=lam,
        max_folding=max_folding,
        refine_steps=refine_steps,
        refine_draws=refine_draws,
        fine_steps=fine_steps,
        device=device,
        use_gpu=use_gpu,
        seed=seed,
        sloppy=sloppy,
    )
    apply_wf = init_apply_wf(reference_dseg=ref.dseg, subject_dseg=labels, other=other is not None)
    provenance = provenance_columns(
        registration=registration, model=model, refine_steps=refine_steps,
        fine_steps=fine_steps, seed=seed, reference=ref.description,
        reference_template=ref.space if ref.is_template else "",
        brain_mask=brain_mask_source(subj),
    )  # fmt: skip
    metrics = pe.Node(RegistrationMetrics(extra=provenance), name="metrics")
    ds_registration_wf = init_ds_registration_wf(
        output_dir=output_dir,
        source_file=source,
        moving_modality=mod,
        ref=ref,
        bids_dir=bids_dir,
        registration_meta=transform_provenance(provenance, registration=registration, lam=lam),
        reference_dseg=ref.dseg is not None,
        subject_dseg=labels is not None,
    )
    wf.connect([
        (reference, anat_preproc_wf, [("image", "inputnode.reference"),
                                      ("mask", "inputnode.reference_mask")]),
        (reference, registration_wf, [("normalized", "inputnode.reference"),
                                      ("mask", "inputnode.reference_mask")]),
        (anat_preproc_wf, registration_wf, [("outputnode.normalized", "inputnode.moving"),
                                            ("outputnode.affine", "inputnode.affine")]),
        (reference, apply_wf, [("validated", "inputnode.reference"),
                               ("mask", "inputnode.reference_mask")]),
        (anat_preproc_wf, apply_wf, [("outputnode.preproc", "inputnode.moving")]),
        (registration_wf, apply_wf, [
            ("outputnode.reference_to_subject", "inputnode.reference_to_subject"),
            ("outputnode.subject_to_reference", "inputnode.subject_to_reference")]),
        (registration_wf, metrics, [("outputnode.forward_field", "forward_field"),
                                    ("outputnode.method", "method"),
                                    ("outputnode.model_mask", "mask")]),
        (anat_preproc_wf, ds_registration_wf, [("outputnode.preproc", "inputnode.preproc"),
                                               ("outputnode.mask", "inputnode.mask")]),
        (registration_wf, ds_registration_wf, [
            ("outputnode.reference_to_subject", "inputnode.reference_to_subject"),
            ("outputnode.subject_to_reference", "inputnode.subject_to_reference")]),
        (apply_wf, ds_registration_wf, [
            ("outputnode.moving_in_reference", "inputnode.moving_in_reference"),
            ("outputnode.reference_mask_in_subject", "inputnode.reference_mask_in_subject")]),
        (metrics, ds_registration_wf, [("out_tsv", "inputnode.metrics_tsv"),
                                       ("out_json", "inputnode.metrics_json")]),
    ])  # fmt: skip
    if registration == "contrareg" and lam == "auto":
        wf.connect([
            (registration_wf, metrics, [("outputnode.lam", "lam"),
                                        ("outputnode.lambda_search", "lambda_search")]),
        ])  # fmt: skip
    elif registration == "contrareg":
        metrics.inputs.lam = lam
    if ref.dseg is not None:
        wf.connect(
            apply_wf,
            "outputnode.reference_dseg_in_subject",
            ds_registration_wf,
            "inputnode.reference_dseg_in_subject",
        )
        if labels is not None:
            metrics.inputs.subject_labels = str(labels)
            if "labels_tsv" in subj.derivatives:
                metrics.inputs.subject_labels_tsv = str(subj.derivatives["labels_tsv"])
            if ref.dseg_tsv is not None:
                metrics.inputs.reference_labels_tsv = str(ref.dseg_tsv)
            # the affine-only baseline (mean_dice_affine): the same labels, no deformation
            metrics.inputs.reference_dseg = str(ref.dseg)
            wf.connect([
                (apply_wf, metrics, [("outputnode.reference_dseg_in_subject",
                                      "reference_labels")]),
                (anat_preproc_wf, metrics, [("outputnode.affine", "affine")]),
            ])  # fmt: skip
    if labels is not None:
        wf.connect(
            apply_wf,
            "outputnode.subject_dseg_in_reference",
            ds_registration_wf,
            "inputnode.subject_dseg_in_reference",
        )

    # --- the other modality: coregistered to the moving one, carried through the transforms
    if other is not None:
        coreg_other_wf = init_coreg_other_wf(sloppy=sloppy, seed=seed)
        coreg_other_wf.inputs.inputnode.in_file = subj.anat[other]
        ds_other_wf = init_ds_other_wf(
            output_dir=output_dir,
            source_file=subj.anat[other],
            moving_source=source,
            moving_modality=mod,
            other_modality=other,
            ref=ref,
            bids_dir=bids_dir,
        )
        wf.connect([
            (anat_preproc_wf, coreg_other_wf, [("outputnode.preproc", "inputnode.target")]),
            (coreg_other_wf, apply_wf, [("outputnode.corrected", "inputnode.other"),
                                        ("outputnode.transform", "inputnode.other_transform")]),
            (coreg_other_wf, ds_other_wf, [("outputnode.preproc", "inputnode.preproc"),
                                           ("outputnode.to_target", "inputnode.to_moving"),
                                           ("outputnode.from_target", "inputnode.to_other")]),
            (apply_wf, ds_other_wf, [("outputnode.other_in_reference",
                                      "inputnode.in_reference")]),
        ])  # fmt: skip

    # --- QC reportlets (the HTML page is assembled after the run, cli/)
    if reports:
        from .reports import init_report_wf, report_device, subject_age

        age, age_source = (
            (subj.age_weeks, subj.age_source)
            if subj.age_weeks is not None
            else subject_age(bids_dir, subj.subject, subj.session, source)
        )
        info = {
            "subject": subj.subject,
            "session": subj.session,
            "moving_modality": mod,
            "inputs": {m: source_uri(p, bids_dir) for m, p in subj.anat.items()},
            "age_weeks": age,
            "age_source": age_source if age is not None else "",
            "reference": ref.description or ref.space,
            "cohort": ref.cohort,
            "method": "contrareg" if registration == "contrareg" else "ants-syn",
        }
        dev = report_device(device, use_gpu) if registration == "contrareg" else "cpu (ANTs)"
        report_wf = init_report_wf(
            output_dir=output_dir,
            source_file=source,
            moving_modality=mod,
            other_modality=other,
            info=info,
            reference_labels=ref.dseg,
            subject_labels=labels,
            model=model if registration == "contrareg" else None,
            device=dev,
        )
        labels_in_subject = (
            "outputnode.reference_dseg_in_subject"
            if ref.dseg is not None
            else "outputnode.reference_mask_in_subject"
        )
        wf.connect([
            (reference, report_wf, [("image", "inputnode.reference"),
                                    ("mask", "inputnode.reference_mask")]),
            (anat_preproc_wf, report_wf, [("outputnode.affine_moved", "inputnode.affine_moved"),
                                          ("outputnode.affine", "inputnode.affine"),
                                          ("outputnode.preproc", "inputnode.subject"),
                                          ("outputnode.mask", "inputnode.subject_mask")]),
            (apply_wf, report_wf, [("outputnode.moving_in_reference", "inputnode.registered"),
                                   (labels_in_subject, "inputnode.labels_in_subject")]),
            (registration_wf, report_wf, [
                ("outputnode.forward_field", "inputnode.forward_field"),
                ("outputnode.model_moving", "inputnode.model_moving"),
                ("outputnode.model_fixed", "inputnode.model_fixed"),
                ("outputnode.model_mask", "inputnode.model_mask")]),
            (metrics, report_wf, [("metrics", "inputnode.metrics")]),
        ])  # fmt: skip
        if registration == "contrareg":
            wf.connect(registration_wf, "outputnode.lam", report_wf, "inputnode.lam")
        if other is not None:
            wf.connect(coreg_other_wf, "outputnode.preproc", report_wf, "inputnode.other")
    set_node_threads(wf, omp_nthreads)
    return wf


def reference_node(
    wf: pe.Workflow,
    ref: ReferenceInputs,
    reference_files: dict[str, Path] | None,
    *,
    sloppy: bool,
    seed: int,
) -> pe.Node:
    """A node ``reference`` of ``wf`` with the fields of
    :data:`~.anatomical.REFERENCE_FIELDS`: fed by :func:`init_reference_wf` inside ``wf``, or
    holding ``reference_files``, the files that workflow made once for a whole run."""
    from .anatomical import REFERENCE_FIELDS, init_reference_wf

    reference = pe.Node(niu.IdentityInterface(fields=list(REFERENCE_FIELDS)), name="reference")
    if reference_files is None:
        reference_wf = init_reference_wf(
            is_template=ref.is_template, given_mask=ref.mask, sloppy=sloppy, seed=seed
        )
        reference_wf.inputs.inputnode.in_file = str(ref.image)
        wf.connect([
            (reference_wf, reference, [(f"outputnode.{f}", f) for f in REFERENCE_FIELDS]),
        ])  # fmt: skip
    else:
        for f in REFERENCE_FIELDS:
            setattr(reference.inputs, f, str(reference_files[f]))
        wf.add_nodes([reference])
    return reference


def set_node_threads(wf: pe.Workflow, omp_nthreads: int) -> None:
    """Give every node with a ``num_threads`` input that many threads and as many MultiProc
    slots (``n_procs``), so that concurrent nodes do not oversubscribe the CPUs."""
    for node in wf._get_all_nodes():
        if "num_threads" in node.inputs.copyable_trait_names():
            node.inputs.num_threads = omp_nthreads
            node.n_procs = omp_nthreads
