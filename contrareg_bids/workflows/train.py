"""The train level's preprocessing of one subject-session, built from the participant
workflow's factories (:func:`init_train_inputs_wf`); the level itself runs from
:mod:`contrareg_bids.cli.train_level`."""

from __future__ import annotations

from pathlib import Path

from nipype.pipeline import engine as pe

from .spec import ReferenceInputs, SubjectInputs


def init_train_inputs_wf(
    *,
    subj: SubjectInputs,
    ref: ReferenceInputs,
    grid_shape: tuple[int, int, int],
    grid_spacing: tuple[float, float, float],
    reference_files: dict[str, Path] | None = None,
    seed: int = 0,
    sloppy: bool = False,
    omp_nthreads: int = 1,
    name: str = "subject_wf",
) -> pe.Workflow:
    """The participant level's preprocessing of one subject-session (the same factories,
    nested in a workflow of the same name as the participant level's
    :func:`~.registration.init_pair_registration_wf`: with the participant workflow's
    ``name`` the two levels share their work directory), then the pair on the model grid
    (``prepare_pair``) and the volumes training reads (``training_volumes``: moving, the
    other modality, mask, labels on that grid)."""
    from ..interfaces import NormalizeIntensity, PrepareModelPair
    from ..interfaces.training import TrainingVolumes
    from .anatomical import init_anat_preproc_wf, init_coreg_other_wf
    from .registration import reference_node, set_node_threads

    wf = pe.Workflow(name=name)
    mod = subj.moving_modality
    other = next((m for m in subj.anat if m != mod), None)
    reference = reference_node(wf, ref, reference_files, sloppy=sloppy, seed=seed)
    anat_preproc_wf = init_anat_preproc_wf(
        given_mask=subj.derivatives.get("mask"),
        skull_strip=subj.skull_strip,
        sloppy=sloppy,
        seed=seed,
    )
    anat_preproc_wf.inputs.inputnode.in_file = subj.anat[mod]
    # the participant level's nesting (pair_wf/anat_preproc_wf/...): one work directory
    pair_wf = pe.Workflow(name="pair_wf")
    pair_wf.add_nodes([anat_preproc_wf])
    prepare_pair = pe.Node(
        PrepareModelPair(shape=tuple(grid_shape), spacing=tuple(grid_spacing)), name="prepare_pair"
    )
    training_volumes = pe.Node(
        TrainingVolumes(shape=tuple(grid_shape), spacing=tuple(grid_spacing)),
        name="training_volumes",
    )
    if "labels" in subj.derivatives:
        training_volumes.inputs.labels = str(subj.derivatives["labels"])
    anat = "anat_preproc_wf.outputnode"
    wf.connect([
        (reference, pair_wf, [("image", "anat_preproc_wf.inputnode.reference"),
                              ("mask", "anat_preproc_wf.inputnode.reference_mask")]),
        (reference, prepare_pair, [("normalized", "reference"), ("mask", "reference_mask")]),
        (pair_wf, prepare_pair, [(f"{anat}.normalized", "moving"), (f"{anat}.affine", "affine")]),
        (reference, training_volumes, [("normalized", "reference"), ("mask", "reference_mask")]),
        (pair_wf, training_volumes, [(f"{anat}.normalized", "moving"),
                                     (f"{anat}.mask", "mask"),
                                     (f"{anat}.affine", "affine")]),
    ])  # fmt: skip
    if other is not None:
        coreg_other_wf = init_coreg_other_wf(sloppy=sloppy, seed=seed)
        coreg_other_wf.inputs.inputnode.in_file = subj.anat[other]
        pair_wf.connect(anat_preproc_wf, "outputnode.preproc", coreg_other_wf, "inputnode.target")
        normalize_other = pe.Node(NormalizeIntensity(), name="normalize_other")
        wf.connect([
            (pair_wf, normalize_other, [("coreg_other_wf.outputnode.preproc", "in_file"),
                                        (f"{anat}.mask", "mask_file")]),
            (normalize_other, training_volumes, [("out_file", "other")]),
        ])  # fmt: skip
    set_node_threads(wf, omp_nthreads)
    return wf
