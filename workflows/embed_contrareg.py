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

Built from the factory the BIDS-App's participant workflow is built on,
``init_pair_registration_wf`` (FIXED: validate, mask, normalise; MOVING: validate, N4,
affine, mask, normalise; the model grid, ContraReg, composite transforms; resampling), with
one :class:`~contrareg_bids.settings.RegistrationSettings` saying how to register.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from contrareg_bids.io.bundle import describe_bundle
from contrareg_bids.settings import RegistrationSettings
from contrareg_bids.workflows.registration import ReferenceInputs, init_pair_registration_wf

#: Workflow outputs -> (node that makes it, its output) and the file name in the output folder.
OUTPUTS = {
    "moving_in_fixed": ("moving_to_ref", "out_file", "moving_in_fixed.nii.gz"),
    "fixed_mask_in_moving": ("ref_mask_to_subject", "out_file", "fixed_mask_in_moving.nii.gz"),
    "fixed_to_moving_xfm": ("export_xfms", "reference_to_subject", "fixed_to_moving_xfm.h5"),
    "moving_to_fixed_xfm": ("export_xfms", "subject_to_reference", "moving_to_fixed_xfm.h5"),
}


def bundle_grid(model: Path) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Shape and spacing of the grid the network was trained on (header only, no weights)."""
    grid = describe_bundle(model)["metadata"]["grid"]
    return tuple(grid["shape"]), tuple(grid["spacing"])


def init_embedded_contrareg_wf(
    *,
    fixed: Path,
    settings: RegistrationSettings,
    use_gpu: bool = False,
    sloppy: bool = False,
    seed: int = 0,
    fixed_mask: Path | None = None,
    name: str = "embedded_contrareg_wf",
) -> pe.Workflow:
    """A workflow with ``inputnode.moving`` and the keys of :data:`OUTPUTS` as fields of
    ``outputnode``: the package's pair factory registering MOVING to ``fixed`` as
    ``settings`` say (their ``model`` is the bundle); ``fixed_mask`` is needed when FIXED
    is not skull-stripped."""
    shape, spacing = bundle_grid(settings.model)
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["moving"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=list(OUTPUTS)), name="outputnode")
    # FIXED as a template: validated, masked, normalised, no N4
    ref = ReferenceInputs(image=Path(fixed), space="fixed", mask=fixed_mask)
    # use_gpu asks MultiProc for one of its n_gpu_procs slots (nipype >= 1.9)
    pair_wf = init_pair_registration_wf(
        ref=ref,
        settings=settings,
        grid_shape=shape,
        grid_spacing=spacing,
        use_gpu=use_gpu,
        seed=seed,
        sloppy=sloppy,
    )
    wf.connect([
        (inputnode, pair_wf, [("moving", "inputnode.in_file")]),
        (pair_wf, outputnode, [
            ("outputnode.moving_in_reference", "moving_in_fixed"),
            ("outputnode.reference_mask_in_subject", "fixed_mask_in_moving"),
            ("outputnode.reference_to_subject", "fixed_to_moving_xfm"),
            ("outputnode.subject_to_reference", "moving_to_fixed_xfm")]),
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
    p.add_argument("--lambda", dest="lam", type=float, help="regularisation weight")
    p.add_argument("--refine-steps", type=int, help="test-time refinement steps")
    p.add_argument("--fine-steps", type=int, help="fine-stage steps (reference resolution)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1")
    p.add_argument("--nprocs", type=int, default=1, help="MultiProc processes (1: Linear)")
    p.add_argument("--n-gpus", type=int, default=0, help="MultiProc GPU slots (n_gpu_procs)")
    p.add_argument("--sloppy", action="store_true", help="fewer N4/affine iterations (tests)")
    args = p.parse_args(argv)

    # the app's defaults for every option not given (contrareg_bids.settings)
    options = {k: getattr(args, k) for k in ("lam", "refine_steps", "fine_steps", "device")}
    settings = RegistrationSettings.from_options({**options, "model": args.model.absolute()})
    wf = init_embedded_contrareg_wf(
        fixed=args.fixed.absolute(),
        settings=settings,
        use_gpu=args.n_gpus > 0,
        sloppy=args.sloppy,
        fixed_mask=args.fixed_mask.absolute() if args.fixed_mask else None,
    )
    wf.inputs.inputnode.moving = str(args.moving.absolute())
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
