"""Derivatives sinks (``init_ds_*_wf``): what one subject-session writes to OUTPUT_DIR, with
BIDS-Derivatives names and sidecars (``Sources``, ``SpatialReference``), as smriprep's
``init_ds_*`` workflows do. Their ``inputnode`` takes the files; nothing else is decided
here."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces.bids import DerivativesDataSink, SkullStrippedSidecar

if TYPE_CHECKING:
    from .spec import ReferenceInputs

#: ``inputnode`` fields of :func:`init_ds_registration_wf`.
DS_REGISTRATION_FIELDS = (
    "preproc",  # bias-corrected moving image, subject space
    "mask",  # its brain mask
    "moving_in_reference",
    "reference_to_subject",  # .h5
    "subject_to_reference",  # .h5
    "reference_mask_in_subject",
    "reference_dseg_in_subject",
    "subject_dseg_in_reference",
    "metrics_tsv",
    "metrics_json",
)


def _sink(
    wf: pe.Workflow,
    name: str,
    field: str,
    *,
    output_dir: Path,
    source_file: str,
    meta: dict | None = None,
    dismiss: tuple[str, ...] = ("echo",),
    **entities,
) -> pe.Node:
    """One DerivativesDataSink fed by ``inputnode.<field>`` (None: ``in_file`` set by the
    caller); NIfTI compressed; ``from`` is a Python keyword, hence ``from_``."""
    frm = entities.pop("from_", None)
    if entities.get("extension") is None:
        entities["compress"] = True
    node = pe.Node(
        DerivativesDataSink(
            base_directory=str(output_dir),
            source_file=source_file,
            **({"dismiss_entities": dismiss} if dismiss else {}),
            **({"meta_dict": meta} if meta else {}),
            **entities,
        ),
        name=name,
        run_without_submitting=True,
    )
    if frm is not None:
        setattr(node.inputs, "from", frm)
    if field is None:
        wf.add_nodes([node])
    else:
        wf.connect(wf.get_node("inputnode"), field, node, "in_file")
    return node


def _preproc_sink(wf: pe.Workflow, name: str, field: str, *, meta: dict, **kwargs) -> pe.Node:
    """A ``desc-preproc`` image's sink whose sidecar also says whether the image is skull
    stripped (BIDS requires ``SkullStripped`` for it), measured on the file itself."""
    node = _sink(wf, name, field, desc="preproc", **kwargs)
    sidecar = pe.Node(SkullStrippedSidecar(meta=meta), name=f"{name}_meta")
    wf.connect([
        (wf.get_node("inputnode"), sidecar, [(field, "in_file")]),
        (sidecar, node, [("meta_dict", "meta_dict")]),
    ])  # fmt: skip
    return node


def init_ds_registration_wf(
    *,
    output_dir: Path,
    source_file: str,
    moving_modality: str,
    ref: ReferenceInputs,
    bids_dir: Path | None = None,
    reference_dseg: bool = False,
    subject_dseg: bool = False,
    registration_meta: dict | None = None,
    name: str = "ds_registration_wf",
) -> pe.Workflow:
    """The moving image's outputs: preprocessed image and mask, the image in reference space,
    the transforms both ways, the reference's mask (and labels, ``reference_dseg``) in the
    subject, the subject's labels in reference space (``subject_dseg``), the metrics table.

    Inputs: :data:`DS_REGISTRATION_FIELDS` (those of absent outputs are left unconnected).
    ``registration_meta`` (the method, model and its sha256, lambda, steps, seed) goes into
    the transforms' sidecars.
    """
    from .spec import reference_label, source_uri, spatial_reference

    wf = pe.Workflow(name=name)
    fields = list(DS_REGISTRATION_FIELDS)
    wf.add_nodes([pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")])
    mod = moving_modality
    label = reference_label(ref)
    space = {"space": ref.space, **({"cohort": str(ref.cohort)} if ref.cohort else {})}
    sources = {"Sources": [source_uri(source_file, bids_dir)]}
    in_ref = {**sources, "SpatialReference": spatial_reference(ref, bids_dir)}
    # images in the subject's space-<modality> (a space BIDS does not define): its scan
    in_subject = {**sources, "SpatialReference": source_uri(source_file, bids_dir)}
    common = {"output_dir": output_dir, "source_file": source_file}
    xfm_meta = {**in_ref, **(registration_meta or {})}
    xfm = {"mode": "image", "suffix": "xfm", "extension": ".h5", "meta": xfm_meta}

    _preproc_sink(wf, "ds_preproc", "preproc", meta=sources, **common)
    _sink(wf, "ds_mask", "mask", desc="brain", suffix="mask", meta=sources, **common)
    _preproc_sink(wf, "ds_moving_ref", "moving_in_reference", meta=in_ref, **space, **common)
    _sink(wf, "ds_xfm_to_ref", "reference_to_subject", from_=mod, to=label, **xfm, **common)
    _sink(wf, "ds_xfm_from_ref", "subject_to_reference", from_=label, to=mod, **xfm, **common)
    _sink(
        wf,
        "ds_ref_mask",
        "reference_mask_in_subject",
        space=mod,
        label="brain",
        desc=label,
        suffix="mask",
        meta=in_subject,
        **common,
    )
    if reference_dseg:
        _sink(
            wf,
            "ds_ref_dseg",
            "reference_dseg_in_subject",
            space=mod,
            desc=label,
            suffix="dseg",
            meta=in_subject,
            **common,
        )
        if ref.dseg_tsv is not None:
            ds_tsv = _sink(
                wf,
                "ds_ref_dseg_tsv",
                None,
                space=mod,
                desc=label,
                suffix="dseg",
                extension=".tsv",
                dismiss=(),
                **common,
            )
            ds_tsv.inputs.in_file = str(ref.dseg_tsv)
    if subject_dseg:
        _sink(
            wf,
            "ds_subject_dseg_ref",
            "subject_dseg_in_reference",
            suffix="dseg",
            meta=in_ref,
            **space,
            **common,
        )
    for field, ext in (("metrics_tsv", ".tsv"), ("metrics_json", ".json")):
        _sink(
            wf,
            f"ds_{field}".replace("_tsv", ""),
            field,
            desc="registration",
            suffix="metrics",
            extension=ext,
            **common,
        )
    return wf


def init_ds_other_wf(
    *,
    output_dir: Path,
    source_file: str,
    moving_source: str,
    moving_modality: str,
    other_modality: str,
    ref: ReferenceInputs,
    bids_dir: Path | None = None,
    name: str = "ds_other_wf",
) -> pe.Workflow:
    """The other modality's outputs: coregistered onto the moving one, in reference space,
    and the T1w <-> T2w coregistration both ways.

    Inputs
    ------
    preproc
        the other modality on the moving image's grid
    in_reference
        the other modality in reference space
    to_moving, to_other
        the coregistration as ITK .h5 (``from-<other>_to-<moving>`` and back)
    """
    from .spec import source_uri, spatial_reference

    wf = pe.Workflow(name=name)
    fields = ["preproc", "in_reference", "to_moving", "to_other"]
    wf.add_nodes([pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")])
    space = {"space": ref.space, **({"cohort": str(ref.cohort)} if ref.cohort else {})}
    moving_sources = [source_uri(moving_source, bids_dir)]
    sources = {"Sources": [source_uri(source_file, bids_dir), *moving_sources]}
    in_ref = {**sources, "SpatialReference": spatial_reference(ref, bids_dir)}
    # on the moving image's grid: space-<moving modality>, as the reference's labels there
    on_moving = {**sources, "SpatialReference": moving_sources[0]}
    _preproc_sink(
        wf,
        "ds_other_preproc",
        "preproc",
        meta=on_moving,
        space=moving_modality,
        dismiss=(),
        output_dir=output_dir,
        source_file=source_file,
    )
    _preproc_sink(
        wf,
        "ds_other_ref",
        "in_reference",
        meta=in_ref,
        **space,
        dismiss=(),
        output_dir=output_dir,
        source_file=source_file,
    )
    # the coregistration is named after the moving image (as the participant's transforms)
    coreg = {
        "mode": "image",
        "suffix": "xfm",
        "extension": ".h5",
        "meta": {"Sources": moving_sources, "SpatialReference": spatial_reference(ref, bids_dir)},
        "output_dir": output_dir,
        "source_file": moving_source,
    }
    _sink(wf, "ds_coreg_to_moving", "to_moving", from_=other_modality, to=moving_modality, **coreg)
    _sink(wf, "ds_coreg_to_other", "to_other", from_=moving_modality, to=other_modality, **coreg)
    return wf
