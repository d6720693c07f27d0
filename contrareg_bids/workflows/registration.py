"""Registration: the pair onto the model grid, ContraReg (or ANTs SyN), the transforms
(:func:`init_registration_wf`), resampling with them (:func:`init_apply_wf`), and one
subject-session of the participant level built from these and the anatomical pieces
(:func:`init_subject_registration_wf`, docs/architecture.md, data flow).

Node names equal variable names; every factory has an ``inputnode`` and an ``outputnode``.
"""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe
from niworkflows.engine.workflows import LiterateWorkflow

from ..interfaces import (
    AntsRegister,
    ApplyWarp,
    ContraRegister,
    ExportTransforms,
    PrepareModelPair,
    RegistrationMetrics,
)
from ..settings import RegistrationSettings
from .spec import (  # noqa: F401 (the data models, importable from here as before)
    ReferenceInputs,
    SubjectInputs,
    brain_mask_source,
    mask_source,
    reference_label,
    source_uri,
    spatial_reference,
)

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
    settings: RegistrationSettings,
    use_gpu: bool = False,
    seed: int = 0,
    sloppy: bool = False,
    name: str = "registration_wf",
) -> pe.Workflow:
    """Deformable registration of a preprocessed pair: onto the model grid, ContraReg (or
    ANTs SyN), and the composite transforms (affine + deformation) at native resolution,
    as ``settings`` say (:class:`~contrareg_bids.settings.RegistrationSettings`: the
    method and model, lambda or ``"auto"`` under a folding budget, the refinement with the
    bundle's own objective, the fine stage at the reference's resolution, the device).
    ``seed`` and ``sloppy`` are ANTs SyN's.

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
    from ..reports.boilerplate import registration_desc

    registration, model = settings.method, settings.model
    if registration == "contrareg" and model is None:
        raise ValueError("a model bundle is required for --registration contrareg")
    wf = LiterateWorkflow(name=name)
    wf.__desc__ = registration_desc(
        registration, settings.lam, settings.refine.steps, settings.fine.steps
    )
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["moving", "reference", "reference_mask", "affine"]),
        name="inputnode",
    )
    outputnode = pe.Node(
        niu.IdentityInterface(fields=list(REGISTRATION_FIELDS)), name="outputnode"
    )
    # the refinement samples the pair at random sub-voxel phases of the model grid from the
    # images at the reference's resolution (when the model grid is coarser)
    phase_sampling = registration == "contrareg" and (
        settings.refine.steps > 0 or settings.fine.steps > 0
    )
    prepare_pair = pe.Node(
        PrepareModelPair(
            shape=tuple(grid_shape), spacing=tuple(grid_spacing), phase_sampling=phase_sampling
        ),
        name="prepare_pair",
    )
    if registration == "contrareg":
        register = pe.Node(
            ContraRegister(model=str(model), settings=settings.to_dict(), use_gpu=use_gpu),
            name="register",
            n_procs=1,
        )
        wf.connect(register, "lam", outputnode, "lam")
        if phase_sampling:
            wf.connect([
                (prepare_pair, register, [("fine_moving", "fine_moving"),
                                          ("fine_fixed", "fine_fixed")]),
            ])  # fmt: skip
        if settings.auto_lambda:
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


#: ``outputnode`` fields of :func:`init_pair_registration_wf`: the reference's
#: (``reference_`` + :data:`~.anatomical.REFERENCE_FIELDS`), the subject's preprocessing,
#: :data:`REGISTRATION_FIELDS`, :data:`APPLY_FIELDS`, and with ``other`` the other modality
#: (bias-corrected on the moving image's grid, its coregistration both ways).
PAIR_FIELDS = (
    "reference_validated",
    "reference_image",
    "reference_mask",
    "reference_normalized",
    "preproc",
    "mask",
    "affine",
    "affine_moved",
    "normalized",
    *REGISTRATION_FIELDS,
    *APPLY_FIELDS,
    "other_preproc",
    "other_to_moving",
    "other_from_moving",
)


def init_pair_registration_wf(
    *,
    ref: ReferenceInputs,
    settings: RegistrationSettings,
    grid_shape: tuple[int, int, int],
    grid_spacing: tuple[float, float, float],
    reference_files: dict[str, Path] | None = None,
    given_mask: Path | None = None,
    skull_strip: bool = False,
    subject_dseg: Path | None = None,
    other: bool = False,
    moving_modality: str = "moving",
    use_gpu: bool = False,
    seed: int = 0,
    sloppy: bool = False,
    name: str = "pair_wf",
) -> pe.Workflow:
    """One moving image registered to the reference, from the pieces: the reference
    (:func:`.anatomical.init_reference_wf`, or the ``reference_files`` it made once for a
    run), the subject (:func:`.anatomical.init_anat_preproc_wf`: N4, affine, brain mask,
    with ``skull_strip`` the brain extracted), the registration (:func:`init_registration_wf`
    as ``settings`` say), resampling (:func:`init_apply_wf`), and with ``other`` the other
    modality (:func:`.anatomical.init_coreg_other_wf`) carried along. The participant level
    adds metrics, derivatives and reports around it; pipeline authors embed it as it is
    (``workflows/embed_contrareg.py``).

    Inputs: ``in_file`` (the moving image), ``other`` (the other modality, with ``other``).
    Outputs: :data:`PAIR_FIELDS`. Its ``__desc__`` (and its registration's) say what it
    does in the words of the methods text (``visit_desc()``); ``moving_modality`` names the
    image there.
    """
    from ..reports.boilerplate import anat_desc
    from .anatomical import REFERENCE_FIELDS, init_anat_preproc_wf, init_coreg_other_wf

    wf = LiterateWorkflow(name=name)
    wf.__desc__ = anat_desc(
        moving_modality,
        ref.description or ref.space,
        ref.space if ref.is_template else "",
        mask_source(given_mask, skull_strip),
    )
    inputnode = pe.Node(niu.IdentityInterface(fields=["in_file", "other"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=list(PAIR_FIELDS)), name="outputnode")
    reference = reference_node(wf, ref, reference_files, sloppy=sloppy, seed=seed)
    anat_preproc_wf = init_anat_preproc_wf(
        given_mask=given_mask, skull_strip=skull_strip, sloppy=sloppy, seed=seed
    )
    registration_wf = init_registration_wf(
        grid_shape=grid_shape,
        grid_spacing=grid_spacing,
        settings=settings,
        use_gpu=use_gpu,
        seed=seed,
        sloppy=sloppy,
    )
    apply_wf = init_apply_wf(reference_dseg=ref.dseg, subject_dseg=subject_dseg, other=other)
    anat_fields = ("preproc", "mask", "affine", "affine_moved", "normalized")
    wf.connect([
        (inputnode, anat_preproc_wf, [("in_file", "inputnode.in_file")]),
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
        (reference, outputnode, [(f, f"reference_{f}") for f in REFERENCE_FIELDS]),
        (anat_preproc_wf, outputnode, [(f"outputnode.{f}", f) for f in anat_fields]),
        (registration_wf, outputnode, [
            (f"outputnode.{f}", f) for f in REGISTRATION_FIELDS
            if f not in ("lam", "lambda_search")]),
        (apply_wf, outputnode, [("outputnode.moving_in_reference", "moving_in_reference"),
                                ("outputnode.reference_mask_in_subject",
                                 "reference_mask_in_subject")]),
    ])  # fmt: skip
    if settings.method == "contrareg":
        wf.connect(registration_wf, "outputnode.lam", outputnode, "lam")
        if settings.auto_lambda:
            wf.connect(registration_wf, "outputnode.lambda_search", outputnode, "lambda_search")
    for label_field, given in (
        ("reference_dseg_in_subject", ref.dseg),
        ("subject_dseg_in_reference", subject_dseg),
    ):
        if given is not None:
            wf.connect(apply_wf, f"outputnode.{label_field}", outputnode, label_field)
    if other:
        coreg_other_wf = init_coreg_other_wf(sloppy=sloppy, seed=seed)
        wf.connect([
            (inputnode, coreg_other_wf, [("other", "inputnode.in_file")]),
            (anat_preproc_wf, coreg_other_wf, [("outputnode.preproc", "inputnode.target")]),
            (coreg_other_wf, apply_wf, [("outputnode.corrected", "inputnode.other"),
                                        ("outputnode.transform", "inputnode.other_transform")]),
            (coreg_other_wf, outputnode, [("outputnode.preproc", "other_preproc"),
                                          ("outputnode.to_target", "other_to_moving"),
                                          ("outputnode.from_target", "other_from_moving")]),
            (apply_wf, outputnode, [("outputnode.other_in_reference", "other_in_reference")]),
        ])  # fmt: skip
    return wf


def provenance_columns(
    *,
    settings: RegistrationSettings,
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
    if settings.method == "contrareg":
        if settings.model is not None:
            columns.update(model=settings.model.name, model_sha256=file_sha256(settings.model))
        columns.update(refine_steps=settings.refine.steps, fine_steps=settings.fine.steps)
    columns.update(seed=seed, reference=reference)
    if reference_template:
        columns["reference_template"] = reference_template
    if brain_mask:
        columns["brain_mask"] = brain_mask
    return columns


def transform_provenance(columns: dict, *, settings: RegistrationSettings) -> dict:
    """What the transform sidecars say of the registration that made them (BIDS-style
    keys), from :func:`provenance_columns`: the method, the model bundle and its sha256,
    lambda (as asked: a number, or ``auto``), the refinement and fine-stage steps, the seed."""
    if settings.method != "contrareg":
        meta = {"RegistrationMethod": "ANTs SyN (antspyx, Mattes MI)"}
    else:
        meta = {"RegistrationMethod": "ContraReg", "Lambda": settings.lam}
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
    settings: RegistrationSettings,
    grid_shape: tuple[int, int, int] | None = None,
    grid_spacing: tuple[float, float, float] | None = None,
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

    ``settings`` say how the pair is registered
    (:class:`~contrareg_bids.settings.RegistrationSettings`, passed whole to
    :func:`init_registration_wf`).
    ``bids_dir`` lets the sidecars name their ``Sources`` as BIDS URIs (``bids:raw:...``).
    ``omp_nthreads`` is the threads (and MultiProc slots) of each multi-threaded node.
    ``lam="auto"``: the chosen lambda and the search trace go to the metrics TSV/JSON.
    """
    from .outputs import init_ds_other_wf, init_ds_registration_wf

    if grid_shape is None or grid_spacing is None:
        raise ValueError("grid_shape and grid_spacing are required (model grid or reference grid)")
    registration, model, lam = settings.method, settings.model, settings.lam
    wf = LiterateWorkflow(name=name)  # its visit_desc() is the methods text of what runs
    mod = subj.moving_modality
    source = subj.anat[mod]
    other = next((m for m in subj.anat if m != mod), None)
    labels = subj.derivatives.get("labels")

    pair_wf = init_pair_registration_wf(
        ref=ref,
        settings=settings,
        grid_shape=grid_shape,
        grid_spacing=grid_spacing,
        reference_files=reference_files,
        given_mask=subj.derivatives.get("mask"),
        skull_strip=subj.skull_strip,
        subject_dseg=labels,
        other=other is not None,
        moving_modality=mod,
        use_gpu=use_gpu,
        seed=seed,
        sloppy=sloppy,
    )
    pair_wf.inputs.inputnode.in_file = source
    if other is not None:
        pair_wf.inputs.inputnode.other = subj.anat[other]
    provenance = provenance_columns(
        settings=settings, seed=seed, reference=ref.description,
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
        registration_meta=transform_provenance(provenance, settings=settings),
        reference_dseg=ref.dseg is not None,
        subject_dseg=labels is not None,
    )
    wf.connect([
        (pair_wf, metrics, [("outputnode.forward_field", "forward_field"),
                            ("outputnode.method", "method"),
                            ("outputnode.model_mask", "mask")]),
        (pair_wf, ds_registration_wf, [
            ("outputnode.preproc", "inputnode.preproc"),
            ("outputnode.mask", "inputnode.mask"),
            ("outputnode.reference_to_subject", "inputnode.reference_to_subject"),
            ("outputnode.subject_to_reference", "inputnode.subject_to_reference"),
            ("outputnode.moving_in_reference", "inputnode.moving_in_reference"),
            ("outputnode.reference_mask_in_subject", "inputnode.reference_mask_in_subject")]),
        (metrics, ds_registration_wf, [("out_tsv", "inputnode.metrics_tsv"),
                                       ("out_json", "inputnode.metrics_json")]),
    ])  # fmt: skip
    if registration == "contrareg" and lam == "auto":
        wf.connect([
            (pair_wf, metrics, [("outputnode.lam", "lam"),
                                ("outputnode.lambda_search", "lambda_search")]),
        ])  # fmt: skip
    elif registration == "contrareg":
        metrics.inputs.lam = lam
    if ref.dseg is not None:
        wf.connect(
            pair_wf,
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
                (pair_wf, metrics, [("outputnode.reference_dseg_in_subject", "reference_labels"),
                                    ("outputnode.affine", "affine")]),
            ])  # fmt: skip
    if labels is not None:
        wf.connect(
            pair_wf,
            "outputnode.subject_dseg_in_reference",
            ds_registration_wf,
            "inputnode.subject_dseg_in_reference",
        )

    # --- the other modality's derivatives (pair_wf coregistered and resampled it)
    if other is not None:
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
            (pair_wf, ds_other_wf, [("outputnode.other_preproc", "inputnode.preproc"),
                                    ("outputnode.other_to_moving", "inputnode.to_moving"),
                                    ("outputnode.other_from_moving", "inputnode.to_other"),
                                    ("outputnode.other_in_reference", "inputnode.in_reference")]),
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
        dev = "cpu (ANTs)"
        if registration == "contrareg":
            dev = report_device(settings.device, use_gpu)
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
            (pair_wf, report_wf, [
                ("outputnode.reference_image", "inputnode.reference"),
                ("outputnode.reference_mask", "inputnode.reference_mask"),
                ("outputnode.affine_moved", "inputnode.affine_moved"),
                ("outputnode.affine", "inputnode.affine"),
                ("outputnode.preproc", "inputnode.subject"),
                ("outputnode.mask", "inputnode.subject_mask"),
                ("outputnode.moving_in_reference", "inputnode.registered"),
                (labels_in_subject, "inputnode.labels_in_subject"),
                ("outputnode.forward_field", "inputnode.forward_field"),
                ("outputnode.model_moving", "inputnode.model_moving"),
                ("outputnode.model_fixed", "inputnode.model_fixed"),
                ("outputnode.model_mask", "inputnode.model_mask")]),
            (metrics, report_wf, [("metrics", "inputnode.metrics")]),
        ])  # fmt: skip
        if registration == "contrareg":
            wf.connect(pair_wf, "outputnode.lam", report_wf, "inputnode.lam")
        if other is not None:
            wf.connect(pair_wf, "outputnode.other_preproc", report_wf, "inputnode.other")
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
