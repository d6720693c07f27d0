"""One subject-session: preprocessing, affine, ContraReg (or SyN), transforms, outputs.

Node order follows DESIGN.md (data flow steps 2-10). Node names equal variable names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces import (
    AffineRegister,
    AntsRegister,
    ApplyWarp,
    BrainMask,
    ContraRegister,
    ExportLinearTransform,
    ExportTransforms,
    N4BiasCorrect,
    NormalizeIntensity,
    PrepareModelPair,
    RegistrationMetrics,
    StandardizeImage,
)
from ..metrics import FOLDING_LIMIT_PERCENT
from .outputs import DerivativesDataSink


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
    """The reference as one entity label: ``dhcpVol``, or ``dhcpVol+40`` for a cohort.

    An image in reference space carries the cohort as its own entity
    (``space-dhcpVol_cohort-40``), but in ``to-``/``from-``/``desc-`` the reference is a label
    of another entity; smriprep and nibabies then join template and cohort with ``+``
    (``from-T1w_to-MNIInfant+1_mode-image_xfm.h5``). Without it the outputs of two cohorts
    would share one name.
    """
    return f"{ref.space}+{ref.cohort}" if ref.cohort is not None else ref.space


def spatial_reference(ref: ReferenceInputs, bids_dir: Path | None) -> str:
    """A template's TemplateFlow path (``tpl-X/...``), else a URI of the reference image."""
    parts = Path(ref.image).parts
    tpl = [i for i, part in enumerate(parts[:-1]) if part.startswith("tpl-")]  # folders
    if ref.is_template and tpl:
        return "/".join(parts[tpl[-1] :])
    return source_uri(ref.image, bids_dir)


def _reference_nodes(wf: pe.Workflow, ref: ReferenceInputs, *, sloppy: bool, seed: int):
    """validate -> [N4, not for templates] -> mask -> normalise, added to ``wf``; returns the
    nodes (N4 None for a template)."""
    validate_reference = pe.Node(
        StandardizeImage(in_file=str(ref.image)), name="validate_reference"
    )
    reference_mask = pe.Node(BrainMask(), name="reference_mask")
    if ref.mask is not None:
        reference_mask.inputs.given_mask = str(ref.mask)
    normalize_reference = pe.Node(NormalizeIntensity(), name="normalize_reference")
    n4_reference = None
    image = validate_reference
    if not ref.is_template:
        n4_reference = pe.Node(N4BiasCorrect(sloppy=sloppy, seed=seed), name="n4_reference")
        wf.connect(validate_reference, "out_file", n4_reference, "in_file")
        image = n4_reference
    wf.connect([
        (image, reference_mask, [("out_file", "in_file")]),
        (image, normalize_reference, [("out_file", "in_file")]),
        (reference_mask, normalize_reference, [("out_file", "mask_file")]),
    ])  # fmt: skip
    return validate_reference, n4_reference, reference_mask, normalize_reference


def init_reference_wf(
    *, ref: ReferenceInputs, sloppy: bool = False, seed: int = 0, name: str = "reference_wf"
) -> pe.Workflow:
    """The reference's preprocessing alone (validate, N4 unless a template, brain mask,
    intensity normalisation), to run once for every subject of a run.

    Outputs (``outputnode``): ``validated`` (the grid the outputs are resampled on),
    ``image`` (what the affine sees: N4-corrected unless a template), ``mask``,
    ``normalized``.
    """
    wf = pe.Workflow(name=name)
    validate, n4, mask, normalize = _reference_nodes(wf, ref, sloppy=sloppy, seed=seed)
    outputnode = pe.Node(
        niu.IdentityInterface(fields=["validated", "image", "mask", "normalized"]),
        name="outputnode",
    )
    wf.connect([
        (validate, outputnode, [("out_file", "validated")]),
        (validate if n4 is None else n4, outputnode, [("out_file", "image")]),
        (mask, outputnode, [("out_file", "mask")]),
        (normalize, outputnode, [("out_file", "normalized")]),
    ])  # fmt: skip
    return wf


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
    """Build the workflow of one subject-session (see the module docstring).

    ``reference_files`` (``validated``, ``image``, ``mask``, ``normalized``: what
    :func:`init_reference_wf` makes) skips the reference's preprocessing: a run prepares a
    reference once for all its subjects.

    ``bids_dir`` lets the sidecars name their ``Sources`` as BIDS URIs (``bids:raw:...``).
    ``reports`` adds the QC reportlets (``sub-X/figures/``, :mod:`.reports`).
    ``omp_nthreads`` is the threads (and MultiProc slots) of each multi-threaded node.
    ``lam="auto"`` chooses lambda per subject under the ``max_folding`` % budget; the
    chosen lambda and the search trace go to the metrics TSV/JSON. ``refine_steps`` refines
    each subject's warp with the bundle's objective (:mod:`contrareg_bids.nn.refine`).
    """
    wf = pe.Workflow(name=name)
    auto_lambda = lam == "auto"
    mod = subj.moving_modality
    source = subj.anat[mod]
    other = next((m for m in subj.anat if m != mod), None)
    entity_space = {"space": ref.space, **({"cohort": str(ref.cohort)} if ref.cohort else {})}
    ref_label = reference_label(ref)  # the reference as the label of to-/from-/desc-

    # --- the reference (fixed modality): validate, [N4], mask, normalise; or, when the run
    # prepared it once for all subjects (reference_files), the same node names holding
    # its files, so that every connection below is the same either way
    if reference_files is None:
        validate_reference, n4_reference, reference_mask, normalize_reference = _reference_nodes(
            wf, ref, sloppy=sloppy, seed=seed
        )
    else:

        def given(node_name: str, key: str) -> pe.Node:
            node = pe.Node(niu.IdentityInterface(fields=["out_file"]), name=node_name)
            node.inputs.out_file = str(reference_files[key])
            return node

        validate_reference = given("validate_reference", "validated")
        reference_mask = given("reference_mask", "mask")
        normalize_reference = given("normalize_reference", "normalized")
        n4_reference = None if ref.is_template else given("n4_reference", "image")
        wf.add_nodes(
            [
                n
                for n in (validate_reference, reference_mask, normalize_reference, n4_reference)
                if n is not None
            ]
        )
    ref_image = (validate_reference if n4_reference is None else n4_reference, "out_file")

    # --- the subject: validate, N4, affine to the reference, mask, normalise
    validate_moving = pe.Node(StandardizeImage(in_file=source), name="validate_moving")
    n4_moving = pe.Node(N4BiasCorrect(sloppy=sloppy, seed=seed), name="n4_moving")
    affine_moving = pe.Node(AffineRegister(seed=seed, sloppy=sloppy), name="affine_moving")
    brain_mask = pe.Node(BrainMask(), name="brain_mask")
    if "mask" in subj.derivatives:
        brain_mask.inputs.given_mask = str(subj.derivatives["mask"])
    normalize_moving = pe.Node(NormalizeIntensity(), name="normalize_moving")
    wf.connect([
        (validate_moving, n4_moving, [("out_file", "in_file")]),
        (n4_moving, affine_moving, [("out_file", "moving")]),
        (n4_moving, brain_mask, [("out_file", "in_file")]),
        (affine_moving, brain_mask, [("transform", "affine")]),
        (reference_mask, brain_mask, [("out_file", "reference_mask")]),
        (n4_moving, normalize_moving, [("out_file", "in_file")]),
        (brain_mask, normalize_moving, [("out_file", "mask_file")]),
    ])  # fmt: skip
    wf.connect(*ref_image, affine_moving, "fixed")

    # --- the model grid and the registration
    if grid_shape is None or grid_spacing is None:
        raise ValueError("grid_shape and grid_spacing are required (model grid or reference grid)")
    prepare_pair = pe.Node(
        PrepareModelPair(shape=tuple(grid_shape), spacing=tuple(grid_spacing)), name="prepare_pair"
    )
    wf.connect([
        (normalize_moving, prepare_pair, [("out_file", "moving")]),
        (normalize_reference, prepare_pair, [("out_file", "reference")]),
        (reference_mask, prepare_pair, [("out_file", "reference_mask")]),
        (affine_moving, prepare_pair, [("transform", "affine")]),
    ])  # fmt: skip
    if registration == "contrareg":
        if model is None:
            raise ValueError("a model bundle is required for --registration contrareg")
        register = pe.Node(
            ContraRegister(
                model=str(model),
                lam=0.1 if auto_lambda else lam,
                auto_lambda=auto_lambda,
                max_folding=max_folding,
                device=device,
                use_gpu=use_gpu,
                refine_steps=refine_steps,
                seed=seed,
            ),
            name="register",
            n_procs=1,
        )
    else:
        register = pe.Node(AntsRegister(seed=seed, sloppy=sloppy), name="register")
    export_xfms = pe.Node(ExportTransforms(), name="export_xfms")
    wf.connect([
        (prepare_pair, register, [("moving", "moving"), ("fixed", "fixed")]),
        (register, export_xfms, [("forward_field", "forward_field"),
                                 ("inverse_field", "inverse_field")]),
        (affine_moving, export_xfms, [("transform", "affine")]),
    ])  # fmt: skip

    # --- apply: subject into reference space, reference labels and mask into the subject
    moving_to_ref = pe.Node(ApplyWarp(out_name="moving_in_ref.nii.gz"), name="moving_to_ref")
    wf.connect([
        (n4_moving, moving_to_ref, [("out_file", "in_file")]),
        (validate_reference, moving_to_ref, [("out_file", "reference")]),
        (export_xfms, moving_to_ref, [("reference_to_subject", "transforms")]),
    ])  # fmt: skip
    ref_mask_to_subject = pe.Node(
        ApplyWarp(interpolation="nearest", out_name="ref_mask.nii.gz"), name="ref_mask_to_subject"
    )
    wf.connect([
        (reference_mask, ref_mask_to_subject, [("out_file", "in_file")]),
        (n4_moving, ref_mask_to_subject, [("out_file", "reference")]),
        (export_xfms, ref_mask_to_subject, [("subject_to_reference", "transforms")]),
    ])  # fmt: skip

    spatial_ref = spatial_reference(ref, bids_dir)
    sources = [source_uri(source, bids_dir)]

    def sink(name, in_node, in_field, **entities):
        if entities.get("extension") is None:
            entities["compress"] = True  # NIfTI outputs as .nii.gz
        if entities.get("extension") in (None, ".h5"):  # images and transforms: sidecars
            entities["meta_dict"] = {"Sources": sources}
            if entities.get("space") == ref.space or entities.get("suffix") == "xfm":
                entities["meta_dict"]["SpatialReference"] = spatial_ref
        node = pe.Node(
            DerivativesDataSink(
                base_directory=str(output_dir),
                source_file=source,
                dismiss_entities=("echo",),
                **entities,
            ),
            name=name,
            run_without_submitting=True,
        )
        wf.connect(in_node, in_field, node, "in_file")
        return node

    sink("ds_preproc", n4_moving, "out_file", desc="preproc")
    sink("ds_mask", brain_mask, "out_file", desc="brain", suffix="mask")
    sink("ds_moving_ref", moving_to_ref, "out_file", desc="preproc", **entity_space)
    ds_xfm_fwd = sink(
        "ds_xfm_to_ref",
        export_xfms,
        "reference_to_subject",
        to=ref_label,
        mode="image",
        suffix="xfm",
        extension=".h5",
    )
    setattr(ds_xfm_fwd.inputs, "from", mod)
    ds_xfm_inv = sink(
        "ds_xfm_from_ref",
        export_xfms,
        "subject_to_reference",
        to=mod,
        mode="image",
        suffix="xfm",
        extension=".h5",
    )
    setattr(ds_xfm_inv.inputs, "from", ref_label)
    sink(
        "ds_ref_mask",
        ref_mask_to_subject,
        "out_file",
        space=mod,
        label="brain",
        desc=ref_label,
        suffix="mask",
    )

    metrics = pe.Node(
        RegistrationMetrics(extra={"seed": seed, "reference": ref.description}),
        name="metrics",
    )
    if registration == "contrareg" and auto_lambda:
        wf.connect(
            [(register, metrics, [("lam", "lam"), ("lambda_search_info", "lambda_search")])]
        )
    elif registration == "contrareg":
        metrics.inputs.lam = lam
    wf.connect([
        # the method the node ran ("contrareg", "ants-syn"), not the --registration choice
        (register, metrics, [("forward_field", "forward_field"), ("method", "method")]),
        (prepare_pair, metrics, [("fixed_mask", "mask")]),
    ])  # fmt: skip

    if ref.dseg is not None:
        ref_dseg_to_subject = pe.Node(
            ApplyWarp(in_file=str(ref.dseg), interpolation="label", out_name="ref_dseg.nii.gz"),
            name="ref_dseg_to_subject",
        )
        wf.connect([
            (n4_moving, ref_dseg_to_subject, [("out_file", "reference")]),
            (export_xfms, ref_dseg_to_subject, [("subject_to_reference", "transforms")]),
        ])  # fmt: skip
        sink(
            "ds_ref_dseg",
            ref_dseg_to_subject,
            "out_file",
            space=mod,
            desc=ref_label,
            suffix="dseg",
        )
        if ref.dseg_tsv is not None:
            ds_tsv = pe.Node(
                DerivativesDataSink(
                    base_directory=str(output_dir),
                    source_file=source,
                    in_file=str(ref.dseg_tsv),
                    space=mod,
                    desc=ref_label,
                    suffix="dseg",
                    extension=".tsv",
                ),
                name="ds_ref_dseg_tsv",
                run_without_submitting=True,
            )
            wf.add_nodes([ds_tsv])
        if "labels" in subj.derivatives:
            metrics.inputs.subject_labels = str(subj.derivatives["labels"])
            if "labels_tsv" in subj.derivatives:
                metrics.inputs.subject_labels_tsv = str(subj.derivatives["labels_tsv"])
            if ref.dseg_tsv is not None:
                metrics.inputs.reference_labels_tsv = str(ref.dseg_tsv)
            # the affine-only baseline (mean_dice_affine): the same labels, no deformation
            metrics.inputs.reference_dseg = str(ref.dseg)
            wf.connect([
                (ref_dseg_to_subject, metrics, [("out_file", "reference_labels")]),
                (affine_moving, metrics, [("transform", "affine")]),
            ])  # fmt: skip

    if "labels" in subj.derivatives:
        subject_labels_to_ref = pe.Node(
            ApplyWarp(
                in_file=str(subj.derivatives["labels"]),
                interpolation="label",
                out_name="subject_dseg_in_ref.nii.gz",
            ),
            name="subject_labels_to_ref",
        )
        wf.connect([
            (validate_reference, subject_labels_to_ref, [("out_file", "reference")]),
            (export_xfms, subject_labels_to_ref, [("reference_to_subject", "transforms")]),
        ])  # fmt: skip
        sink(
            "ds_subject_dseg_ref", subject_labels_to_ref, "out_file", suffix="dseg", **entity_space
        )

    sink("ds_metrics", metrics, "out_tsv", desc="registration", suffix="metrics", extension=".tsv")
    sink(
        "ds_metrics_json",
        metrics,
        "out_json",
        desc="registration",
        suffix="metrics",
        extension=".json",
    )

    # --- the other modality: coregistered to the moving one, carried through the transforms
    if other is not None:
        validate_other = pe.Node(StandardizeImage(in_file=subj.anat[other]), name="validate_other")
        n4_other = pe.Node(N4BiasCorrect(sloppy=sloppy, seed=seed), name="n4_other")
        coreg_other = pe.Node(
            AffineRegister(transform_type="Rigid", seed=seed, sloppy=sloppy), name="coreg_other"
        )
        other_to_ref = pe.Node(ApplyWarp(out_name="other_in_ref.nii.gz"), name="other_to_ref")
        merge_xfms = pe.Node(niu.Merge(2), name="merge_xfms", run_without_submitting=True)
        wf.connect([
            (validate_other, n4_other, [("out_file", "in_file")]),
            (n4_moving, coreg_other, [("out_file", "fixed")]),
            (n4_other, coreg_other, [("out_file", "moving")]),
            # antspyx transformlist order: the FIRST acts first on the reference point
            # (reference -> moving-modality subject space -> other modality)
            (export_xfms, merge_xfms, [("reference_to_subject", "in1")]),
            (coreg_other, merge_xfms, [("transform", "in2")]),
            (n4_other, other_to_ref, [("out_file", "in_file")]),
            (validate_reference, other_to_ref, [("out_file", "reference")]),
            (merge_xfms, other_to_ref, [("out", "transforms")]),
        ])  # fmt: skip
        # the subject's own T1w <-> T2w coregistration, both ways (as nibabies writes it):
        # from-<other>_to-<moving> resamples the other modality into the moving one's space
        export_coreg = pe.Node(ExportLinearTransform(), name="export_coreg")
        wf.connect(coreg_other, "transform", export_coreg, "transform")
        for nm, fld, frm, to in (
            ("ds_coreg_to_moving", "forward", other, mod),
            ("ds_coreg_to_other", "inverse", mod, other),
        ):
            ds = sink(nm, export_coreg, fld, to=to, mode="image", suffix="xfm", extension=".h5")
            setattr(ds.inputs, "from", frm)
        other_source = subj.anat[other]
        other_sources = [source_uri(other_source, bids_dir), *sources]
        for nm, node, fld, ents in (
            ("ds_other_preproc", coreg_other, "moved", {"desc": "preproc"}),
            ("ds_other_ref", other_to_ref, "out_file", {"desc": "preproc", **entity_space}),
        ):
            meta = {"Sources": other_sources}
            if "space" in ents:
                meta["SpatialReference"] = spatial_ref
            ds = pe.Node(
                DerivativesDataSink(
                    base_directory=str(output_dir),
                    source_file=other_source,
                    compress=True,
                    meta_dict=meta,
                    **ents,
                ),
                name=nm,
                run_without_submitting=True,
            )
            wf.connect(node, fld, ds, "in_file")

    # --- QC reportlets (the HTML page is assembled after the run, workflows/base.py)
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
            subject_labels=subj.derivatives.get("labels"),
            model=model if registration == "contrareg" else None,
            device=dev,
        )
        labels_in_subject = ref_dseg_to_subject if ref.dseg is not None else ref_mask_to_subject
        wf.connect([
            (ref_image[0], report_wf, [(ref_image[1], "inputnode.reference")]),
            (reference_mask, report_wf, [("out_file", "inputnode.reference_mask")]),
            (affine_moving, report_wf, [("moved", "inputnode.affine_moved"),
                                        ("transform", "inputnode.affine")]),
            (moving_to_ref, report_wf, [("out_file", "inputnode.registered")]),
            (n4_moving, report_wf, [("out_file", "inputnode.subject")]),
            (brain_mask, report_wf, [("out_file", "inputnode.subject_mask")]),
            (labels_in_subject, report_wf, [("out_file", "inputnode.labels_in_subject")]),
            (register, report_wf, [("forward_field", "inputnode.forward_field")]),
            (prepare_pair, report_wf, [("moving", "inputnode.model_moving"),
                                       ("fixed", "inputnode.model_fixed"),
                                       ("fixed_mask", "inputnode.model_mask")]),
            (metrics, report_wf, [("metrics", "inputnode.metrics")]),
        ])  # fmt: skip
        if registration == "contrareg":
            wf.connect(register, "lam", report_wf, "inputnode.lam")
        if other is not None:
            wf.connect(coreg_other, "moved", report_wf, "inputnode.other")
    set_node_threads(wf, omp_nthreads)
    return wf


def set_node_threads(wf: pe.Workflow, omp_nthreads: int) -> None:
    """Give every node with a ``num_threads`` input that many threads and as many MultiProc
    slots (``n_procs``), so that concurrent nodes do not oversubscribe the CPUs."""
    for node in wf._get_all_nodes():
        if "num_threads" in node.inputs.copyable_trait_names():
            node.inputs.num_threads = omp_nthreads
            node.n_procs = omp_nthreads
