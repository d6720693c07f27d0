"""Anatomical preprocessing: the reference, the subject's moving image, its other modality.

Each factory returns a workflow with an ``inputnode`` and an ``outputnode`` (smriprep's
convention), so that the participant level, the train level and other pipelines build from
the same pieces: the train level and the participant level then share their work directory
node for node.
"""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces import (
    AffineRegister,
    BrainMask,
    ExportLinearTransform,
    N4BiasCorrect,
    NormalizeIntensity,
    SkullStrip,
    StandardizeImage,
)

#: ``outputnode`` fields of :func:`init_reference_wf`.
REFERENCE_FIELDS = ("validated", "image", "mask", "normalized")


def init_reference_wf(
    *,
    is_template: bool = True,
    given_mask: Path | None = None,
    sloppy: bool = False,
    seed: int = 0,
    name: str = "reference_wf",
) -> pe.Workflow:
    """The reference's preprocessing (validate, N4 unless a template: a template is
    bias-free already, brain mask: ``given_mask`` else computed, intensity normalisation),
    run once for every subject of a run.

    Inputs
    ------
    in_file
        the reference image (fixed modality)

    Outputs
    -------
    validated
        the reference on its own grid, RAS (the grid outputs are resampled on)
    image
        what the affine sees: N4-corrected, unless a template
    mask
        brain mask (the given one, else computed)
    normalized
        intensities scaled inside the mask (what the network sees)
    """
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["in_file"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=list(REFERENCE_FIELDS)), name="outputnode")
    validate_reference = pe.Node(StandardizeImage(), name="validate_reference")
    reference_mask = pe.Node(BrainMask(), name="reference_mask")
    if given_mask is not None:
        reference_mask.inputs.given_mask = str(given_mask)
    normalize_reference = pe.Node(NormalizeIntensity(), name="normalize_reference")
    image = validate_reference
    if not is_template:
        n4_reference = pe.Node(N4BiasCorrect(sloppy=sloppy, seed=seed), name="n4_reference")
        wf.connect(validate_reference, "out_file", n4_reference, "in_file")
        image = n4_reference
    wf.connect([
        (inputnode, validate_reference, [("in_file", "in_file")]),
        (image, reference_mask, [("out_file", "in_file")]),
        (image, normalize_reference, [("out_file", "in_file")]),
        (reference_mask, normalize_reference, [("out_file", "mask_file")]),
        (validate_reference, outputnode, [("out_file", "validated")]),
        (image, outputnode, [("out_file", "image")]),
        (reference_mask, outputnode, [("out_file", "mask")]),
        (normalize_reference, outputnode, [("out_file", "normalized")]),
    ])  # fmt: skip
    return wf


def init_anat_preproc_wf(
    *,
    given_mask: Path | None = None,
    skull_strip: bool = False,
    sloppy: bool = False,
    seed: int = 0,
    name: str = "anat_preproc_wf",
) -> pe.Workflow:
    """The subject's moving image: validate, N4, affine to the reference, brain mask (the
    reference's mask carried through the affine, or ``given_mask``), normalise. With
    ``skull_strip`` (a scan with skull and scalp, no ``given_mask``) the brain is extracted
    after N4 (:class:`~contrareg_bids.interfaces.preproc.SkullStrip`): its mask is the brain
    mask and the affine sees the brain alone.

    Inputs
    ------
    in_file
        the subject's image (moving modality)
    reference
        the reference image the affine is estimated against
    reference_mask
        the reference's brain mask

    Outputs
    -------
    preproc
        bias-corrected image, subject space
    affine
        reference -> subject affine (ITK .mat)
    affine_moved
        the subject on the reference grid through the affine alone
    mask
        brain mask, subject space
    normalized
        intensities scaled inside the mask
    """
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["in_file", "reference", "reference_mask"]),
        name="inputnode",
    )
    outputnode = pe.Node(
        niu.IdentityInterface(fields=["preproc", "affine", "affine_moved", "mask", "normalized"]),
        name="outputnode",
    )
    validate_moving = pe.Node(StandardizeImage(), name="validate_moving")
    n4_moving = pe.Node(N4BiasCorrect(sloppy=sloppy, seed=seed), name="n4_moving")
    affine_moving = pe.Node(AffineRegister(seed=seed, sloppy=sloppy), name="affine_moving")
    brain_mask = pe.Node(BrainMask(), name="brain_mask")
    if given_mask is not None:
        brain_mask.inputs.given_mask = str(given_mask)
    normalize_moving = pe.Node(NormalizeIntensity(), name="normalize_moving")
    wf.connect([
        (inputnode, validate_moving, [("in_file", "in_file")]),
        (inputnode, affine_moving, [("reference", "fixed")]),
        (inputnode, brain_mask, [("reference_mask", "reference_mask")]),
        (validate_moving, n4_moving, [("out_file", "in_file")]),
        (n4_moving, affine_moving, [("out_file", "moving")]),
        (n4_moving, brain_mask, [("out_file", "in_file")]),
        (affine_moving, brain_mask, [("transform", "affine")]),
        (n4_moving, normalize_moving, [("out_file", "in_file")]),
        (brain_mask, normalize_moving, [("out_file", "mask_file")]),
        (n4_moving, outputnode, [("out_file", "preproc")]),
        (affine_moving, outputnode, [("transform", "affine"), ("moved", "affine_moved")]),
        (brain_mask, outputnode, [("out_file", "mask")]),
        (normalize_moving, outputnode, [("out_file", "normalized")]),
    ])  # fmt: skip
    if skull_strip and given_mask is None:
        strip = pe.Node(SkullStrip(seed=seed, sloppy=sloppy), name="skull_strip")
        wf.disconnect(n4_moving, "out_file", affine_moving, "moving")
        wf.connect([
            (inputnode, strip, [("reference", "reference"), ("reference_mask", "reference_mask")]),
            (n4_moving, strip, [("out_file", "in_file")]),
            (strip, affine_moving, [("out_brain", "moving")]),
            (strip, brain_mask, [("out_mask", "given_mask")]),
        ])  # fmt: skip
    return wf


def init_coreg_other_wf(
    *, sloppy: bool = False, seed: int = 0, name: str = "coreg_other_wf"
) -> pe.Workflow:
    """The subject's other modality: validate, N4, rigid onto the moving modality, and that
    coregistration as ITK .h5 both ways (as nibabies writes it).

    Inputs
    ------
    in_file
        the other modality's image
    target
        the bias-corrected moving-modality image (subject space)

    Outputs
    -------
    corrected
        the other modality, bias-corrected, in its own space
    preproc
        the same resampled onto ``target``
    transform
        target -> other (antspyx transform list order: acts on a target point)
    to_target
        ``from-<other>_to-<moving>`` .h5 (resamples the other modality into the target)
    from_target
        its inverse
    """
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["in_file", "target"]), name="inputnode")
    fields = ["corrected", "preproc", "transform", "to_target", "from_target"]
    outputnode = pe.Node(niu.IdentityInterface(fields=fields), name="outputnode")
    validate_other = pe.Node(StandardizeImage(), name="validate_other")
    n4_other = pe.Node(N4BiasCorrect(sloppy=sloppy, seed=seed), name="n4_other")
    coreg_other = pe.Node(
        AffineRegister(transform_type="Rigid", seed=seed, sloppy=sloppy), name="coreg_other"
    )
    export_coreg = pe.Node(ExportLinearTransform(), name="export_coreg")
    wf.connect([
        (inputnode, validate_other, [("in_file", "in_file")]),
        (inputnode, coreg_other, [("target", "fixed")]),
        (validate_other, n4_other, [("out_file", "in_file")]),
        (n4_other, coreg_other, [("out_file", "moving")]),
        (coreg_other, export_coreg, [("transform", "transform")]),
        (n4_other, outputnode, [("out_file", "corrected")]),
        (coreg_other, outputnode, [("moved", "preproc"), ("transform", "transform")]),
        (export_coreg, outputnode, [("forward", "to_target"), ("inverse", "from_target")]),
    ])  # fmt: skip
    return wf
