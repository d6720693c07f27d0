"""Reportlets of one subject-session (docs/architecture.md, data flow), written to
``OUTPUT_DIR/sub-X/figures/`` by the derivatives sink; the HTML page is assembled after the
workflow ran (:func:`contrareg_bids.reports.subject.write_subject_report`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces.bids import DerivativesDataSink
from ..interfaces.registration import LambdaSweep
from ..interfaces.reports import (
    FlickerReport,
    JacobianReport,
    LabelContoursReport,
    LambdaStripReport,
    SummaryReport,
)

#: Fields of the report workflow's ``inputnode`` (what the registration workflow provides).
REPORT_FIELDS = (
    "reference",  # reference image (its grid)
    "reference_mask",
    "affine_moved",  # subject on the reference grid, affine only
    "registered",  # subject on the reference grid, affine + deformable
    "subject",  # subject image of the moving modality (subject space)
    "other",  # the other modality, coregistered onto the moving one (optional)
    "subject_mask",
    "labels_in_subject",  # reference labels (or mask) carried into the subject
    "forward_field",  # model grid
    "model_moving",
    "model_fixed",
    "model_mask",
    "affine",  # reference -> subject (ITK)
    "lam",
    "metrics",  # the metrics row (dict)
)


def report_device(device: str, use_gpu: bool) -> str:
    """The device the ContraReg node runs on (the node's own rule)."""
    from ..nn.device import device_name

    return device_name(device, prefer_gpu=use_gpu)


def subject_age(bids_dir: Path | None, subject: str, session: str | None, source: str):
    """``(weeks, where)`` of the subject-session, ``(None, why)`` when unknown."""
    if bids_dir is None:
        return None, "no BIDS directory"
    try:
        from ..io.bids import get_age_weeks

        return get_age_weeks(bids_dir, subject, session, scan_path=source)
    except Exception as err:  # the age only decorates the report here
        return None, str(err)


def init_report_wf(
    *,
    output_dir: Path,
    source_file: str,
    moving_modality: str,
    other_modality: str | None,
    info: dict[str, Any],
    reference_labels: Path | None = None,
    subject_labels: Path | None = None,
    model: Path | None = None,
    device: str = "cpu",
    name: str = "report_wf",
) -> pe.Workflow:
    """Reportlets: the brain mask on the subject, the other modality's coregistration
    (flicker), two flickers (affine, deformable), label outlines in the subject, the
    log-Jacobian, the summary panel and (ContraReg) the lambda strip."""
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=list(REPORT_FIELDS)), name="inputnode")
    mod = moving_modality
    ref_name = info.get("reference", "reference")

    def sink(name: str, node: pe.Node, desc: str, suffix: str = mod) -> pe.Node:
        ds = pe.Node(
            DerivativesDataSink(
                base_directory=str(output_dir),
                source_file=source_file,
                datatype="figures",
                desc=desc,
                suffix=suffix,
                dismiss_entities=("echo",),
            ),
            name=name,
            run_without_submitting=True,
        )
        wf.connect(node, "out_report", ds, "in_file")
        return ds

    flicker_titles = {"affine": "after the affine only", "registration": "after registration"}
    for desc, field in (("affine", "affine_moved"), ("registration", "registered")):
        node = pe.Node(
            FlickerReport(
                titles=(f"reference ({ref_name})", f"{mod} {flicker_titles[desc]}"),
                out_name=f"{desc}.svg",
            ),
            name=f"flicker_{desc}",
        )
        if reference_labels is not None:
            node.inputs.labels = str(reference_labels)
        wf.connect([
            (inputnode, node, [("reference", "reference"), (field, "moving"),
                               ("reference_mask", "mask")]),
        ])  # fmt: skip
        sink(f"ds_report_{desc}", node, desc)

    brain_mask = pe.Node(
        LabelContoursReport(title=f"{mod}, brain mask", out_name="brain_mask.svg"),
        name="mask_contours",
    )
    wf.connect([
        (inputnode, brain_mask, [("subject", "image"), ("subject_mask", "labels"),
                                 ("subject_mask", "mask")]),
    ])  # fmt: skip
    sink("ds_report_brain_mask", brain_mask, "brain", suffix="mask")
    if other_modality is not None:
        coreg = pe.Node(
            FlickerReport(titles=(mod, f"{other_modality} coregistered"), out_name="coreg.svg"),
            name="flicker_coreg",
        )
        wf.connect([
            (inputnode, coreg, [("subject", "reference"), ("other", "moving"),
                                ("subject_mask", "mask")]),
        ])  # fmt: skip
        sink("ds_report_coreg", coreg, "coreg", suffix=other_modality)

    labels_subject = pe.Node(
        LabelContoursReport(title=f"{mod}, reference labels", out_name="labels.svg"),
        name="labels_subject",
    )
    wf.connect([
        (inputnode, labels_subject, [("subject", "image"), ("labels_in_subject", "labels"),
                                     ("subject_mask", "mask")]),
    ])  # fmt: skip
    sink("ds_report_labels", labels_subject, "labels")
    if other_modality is not None:
        labels_other = pe.Node(
            LabelContoursReport(
                title=f"{other_modality}, reference labels", out_name="labels_other.svg"
            ),
            name="labels_other",
        )
        wf.connect([
            (inputnode, labels_other, [("other", "image"), ("labels_in_subject", "labels"),
                                       ("subject_mask", "mask")]),
        ])  # fmt: skip
        sink("ds_report_labels_other", labels_other, "labels", suffix=other_modality)

    jacobian = pe.Node(JacobianReport(), name="jacobian")
    wf.connect([
        (inputnode, jacobian, [("forward_field", "forward_field"), ("model_fixed", "background"),
                               ("model_mask", "mask")]),
    ])  # fmt: skip
    sink("ds_report_jacobian", jacobian, "jacobian")

    summary = pe.Node(SummaryReport(info={**info, "device": device}), name="summary")
    if model is not None:
        summary.inputs.model = str(model)
    wf.connect(inputnode, "metrics", summary, "metrics")
    sink("ds_report_summary", summary, "summary")

    if model is not None:
        # computed by its own node (the network at five lambdas), drawn by the report node
        sweep = pe.Node(LambdaSweep(model=str(model), device=device), name="lambda_sweep")
        if reference_labels is not None:
            sweep.inputs.reference_labels = str(reference_labels)
        if subject_labels is not None:
            sweep.inputs.subject_labels = str(subject_labels)
        strip = pe.Node(LambdaStripReport(), name="lambda_strip")
        wf.connect([
            (inputnode, sweep, [("model_moving", "moving"), ("model_fixed", "fixed"),
                                ("model_mask", "mask"), ("affine", "affine"), ("lam", "lam")]),
            (sweep, strip, [("out_file", "sweep")]),
        ])  # fmt: skip
        sink("ds_report_lambda", strip, "lambda")
    return wf
