#!/usr/bin/env python3
"""Embed contrareg-bids nodes in your own Nipype workflow (an example for pipeline authors).

Registers one MOVING image (e.g. a T2w) to one FIXED image (e.g. a T1w or a template) with a
trained ContraReg bundle, after the usual preprocessing nodes, and resamples the moving
image into the fixed space and the fixed brain mask into the moving space::

    python workflows/embed_contrareg.py sub-01_T2w.nii.gz tpl_T1w.nii.gz model.safetensors out/

Writes ``out/moving_in_fixed.nii.gz``, ``out/fixed_mask_in_moving.nii.gz`` and the ITK
composite transforms ``out/fixed_to_moving_xfm.h5`` (resamples the moving image onto the
fixed grid) and ``out/moving_to_fixed_xfm.h5`` (the inverse), readable by
``antsApplyTransforms``, SimpleITK and nitransforms. Nipype's work directory is kept
(``--work-dir``): running again reuses every finished node.

The nodes, in order (the same chain as the BIDS-App's participant workflow):
StandardizeImage -> N4BiasCorrect -> AffineRegister -> BrainMask -> NormalizeIntensity ->
PrepareModelPair (the model grid, from the bundle) -> ContraRegister -> ExportTransforms ->
ApplyWarp.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from contrareg_bids.interfaces import (
    AffineRegister,
    ApplyWarp,
    BrainMask,
    ContraRegister,
    ExportTransforms,
    N4BiasCorrect,
    NormalizeIntensity,
    PrepareModelPair,
    StandardizeImage,
)
from contrareg_bids.io.bundle import describe_bundle

#: Workflow outputs -> (node, output) that makes it, and the file name in the output folder.
OUTPUTS = {
    "moving_in_fixed": ("moving_to_fixed", "out_file", "moving_in_fixed.nii.gz"),
    "fixed_mask_in_moving": ("mask_to_moving", "out_file", "fixed_mask_in_moving.nii.gz"),
    "fixed_to_moving_xfm": ("export_xfms", "reference_to_subject", "fixed_to_moving_xfm.h5"),
    "moving_to_fixed_xfm": ("export_xfms", "subject_to_reference", "moving_to_fixed_xfm.h5"),
}


def model_grid(model: Path) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Shape and spacing of the grid the network was trained on (header only, no weights)."""
    grid = describe_bundle(model)["metadata"]["grid"]
    return tuple(grid["shape"]), tuple(grid["spacing"])


def init_embedded_contrareg_wf(
    *,
    model: Path,
    lam: float = 0.1,
    device: str = "auto",
    use_gpu: bool = False,
    sloppy: bool = False,
    seed: int = 0,
    fixed_mask: Path | None = None,
    name: str = "embedded_contrareg_wf",
) -> pe.Workflow:
    """A workflow with ``inputnode.moving``/``inputnode.fixed`` and the keys of
    :data:`OUTPUTS` as fields of ``outputnode``; ``fixed_mask`` is needed when FIXED is not
    skull-stripped (the mask of the moving image is then carried through the affine)."""
    shape, spacing = model_grid(model)
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["moving", "fixed"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=list(OUTPUTS)), name="outputnode")

    validate_fixed = pe.Node(StandardizeImage(), name="validate_fixed")
    validate_moving = pe.Node(StandardizeImage(), name="validate_moving")
    fixed_brain = pe.Node(BrainMask(), name="fixed_brain")
    if fixed_mask is not None:
        fixed_brain.inputs.given_mask = str(fixed_mask)
    normalize_fixed = pe.Node(NormalizeIntensity(), name="normalize_fixed")
    n4_moving = pe.Node(N4BiasCorrect(sloppy=sloppy, seed=seed), name="n4_moving")
    affine_moving = pe.Node(AffineRegister(sloppy=sloppy, seed=seed), name="affine_moving")
    moving_brain = pe.Node(BrainMask(), name="moving_brain")
    normalize_moving = pe.Node(NormalizeIntensity(), name="normalize_moving")
    prepare_pair = pe.Node(PrepareModelPair(shape=shape, spacing=spacing), name="prepare_pair")
    # use_gpu asks MultiProc for one of its n_gpu_procs slots (nipype >= 1.9)
    register = pe.Node(
        ContraRegister(model=str(model), lam=lam, device=device, use_gpu=use_gpu),
        name="register",
    )
    export_xfms = pe.Node(ExportTransforms(), name="export_xfms")
    moving_to_fixed = pe.Node(ApplyWarp(out_name="moving_in_fixed.nii.gz"), name="moving_to_fixed")
    mask_to_moving = pe.Node(
        ApplyWarp(interpolation="nearest", out_name="fixed_mask_in_moving.nii.gz"),
        name="mask_to_moving",
    )

    wf.connect([
        (inputnode, validate_fixed, [("fixed", "in_file")]),
        (inputnode, validate_moving, [("moving", "in_file")]),
        (validate_fixed, fixed_brain, [("out_file", "in_file")]),
        (validate_fixed, normalize_fixed, [("out_file", "in_file")]),
        (fixed_brain, normalize_fixed, [("out_file", "mask_file")]),
        (validate_moving, n4_moving, [("out_file", "in_file")]),
        (validate_fixed, affine_moving, [("out_file", "fixed")]),
        (n4_moving, affine_moving, [("out_file", "moving")]),
        (n4_moving, moving_brain, [("out_file", "in_file")]),
        (affine_moving, moving_brain, [("transform", "affine")]),
        (fixed_brain, moving_brain, [("out_file", "reference_mask")]),
        (n4_moving, normalize_moving, [("out_file", "in_file")]),
        (moving_brain, normalize_moving, [("out_file", "mask_file")]),
        (normalize_moving, prepare_pair, [("out_file", "moving")]),
        (normalize_fixed, prepare_pair, [("out_file", "reference")]),
        (fixed_brain, prepare_pair, [("out_file", "reference_mask")]),
        (affine_moving, prepare_pair, [("transform", "affine")]),
        (prepare_pair, register, [("moving", "moving"), ("fixed", "fixed")]),
        (register, export_xfms, [("forward_field", "forward_field"),
                                 ("inverse_field", "inverse_field")]),
        (affine_moving, export_xfms, [("transform", "affine")]),
        (n4_moving, moving_to_fixed, [("out_file", "in_file")]),
        (validate_fixed, moving_to_fixed, [("out_file", "reference")]),
        (export_xfms, moving_to_fixed, [("reference_to_subject", "transforms")]),
        (fixed_brain, mask_to_moving, [("out_file", "in_file")]),
        (n4_moving, mask_to_moving, [("out_file", "reference")]),
        (export_xfms, mask_to_moving, [("subject_to_reference", "transforms")]),
        (moving_to_fixed, outputnode, [("out_file", "moving_in_fixed")]),
        (mask_to_moving, outputnode, [("out_file", "fixed_mask_in_moving")]),
        (export_xfms, outputnode, [("reference_to_subject", "fixed_to_moving_xfm"),
                                   ("subject_to_reference", "moving_to_fixed_xfm")]),
    ])  # fmt: skip
    return wf


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("moving", type=Path, help="image to register (the bundle's moving modality)")
    p.add_argument("fixed", type=Path, help="image to register to (the fixed modality)")
    p.add_argument("model", type=Path, help="ContraReg model bundle (.safetensors)")
    p.add_argument("out_dir", type=Path, help="where the results are copied")
    p.add_argument("--fixed-mask", type=Path, help="brain mask of FIXED (if not skull-stripped)")
    p.add_argument("-w", "--work-dir", type=Path, help="Nipype work dir (default OUT_DIR/work)")
    p.add_argument("--lambda", dest="lam", type=float, default=0.1, help="regularisation weight")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1")
    p.add_argument("--nprocs", type=int, default=1, help="MultiProc processes (1: Linear)")
    p.add_argument("--n-gpus", type=int, default=0, help="MultiProc GPU slots (n_gpu_procs)")
    p.add_argument("--sloppy", action="store_true", help="fewer N4/affine iterations (tests)")
    args = p.parse_args(argv)

    wf = init_embedded_contrareg_wf(
        model=args.model.absolute(), lam=args.lam, device=args.device,
        use_gpu=args.n_gpus > 0, sloppy=args.sloppy,
        fixed_mask=args.fixed_mask.absolute() if args.fixed_mask else None,
    )  # fmt: skip
    wf.inputs.inputnode.moving = str(args.moving.absolute())
    wf.inputs.inputnode.fixed = str(args.fixed.absolute())
    wf.base_dir = str((args.work_dir or args.out_dir / "work").absolute())
    wf.config["execution"] = {"crashdump_dir": str(args.out_dir.absolute())}
    if args.nprocs > 1 or args.n_gpus > 0:
        plugin_args = {"n_procs": max(args.nprocs, 1), "n_gpu_procs": args.n_gpus}
        graph = wf.run(plugin="MultiProc", plugin_args=plugin_args)
    else:
        graph = wf.run(plugin="Linear")

    # Nipype drops identity nodes (outputnode) from the executed graph: read the producers.
    done = {node.name: node for node in graph.nodes()}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for node_name, field, filename in OUTPUTS.values():
        src = getattr(done[node_name].result.outputs, field)
        shutil.copyfile(src, args.out_dir / filename)
        print(args.out_dir / filename)
    return 0


if __name__ == "__main__":
    sys.exit(main())
