"""Test-time refinement on a finer grid than the model's, on the CPU-recipe subjects.

The participant level refines the network's velocity on the model grid (2.5 mm for the CPU
recipe) and carries the displacement to native resolution by interpolation. This probe asks
what refining on a finer grid buys: for each subject of a ``bench_cpu_recipe.py`` work
directory (preprocessing already cached there by a participant run), the network's velocity
is predicted on the model grid, resampled onto a grid ``factor`` times finer over the same
extent, refined there with the bundle's own objective, and scored exactly as the app scores
it (its composite transforms, the reference labels resampled into the subject, the app's
Dice). Variants are ``factor:steps:lr:coarse:lambda[:draws[:jitter[:cosine[:init]]]]``,
``init``: the lambda at which the network predicts the starting velocity (default: lambda),
``jitter``
> 1: each step samples the pair at a random sub-voxel phase of the grid from images
``jitter`` times finer (:func:`contrareg_bids.nn.refine.phase_view`); ``cosine`` 1: the
learning rate annealed to 0 over the steps; ``1:30:0.05:2:0.8:1:2.909:1`` is what
``participant --refine-steps 30`` does at 0.86 mm (a check that this probe reproduces the app).
A variant may end in comma-separated test-time changes of the PatchNCE similarity:
``,tau=T`` (softmax temperature), ``,layers=0-1-4`` (the feature layers kept, others weighted
0); with either, the similarity is rescaled so that it pulls a reference deformation back as
hard as the bundle's own (:func:`contrareg_bids.training.calibration.pull_ratio` on the pair,
16 draws), which keeps lambda's meaning.
``convexadam:factor`` registers the pair with ConvexAdam instead (MIND, its defaults) on that
grid, e.g. ``convexadam:2.909`` at the atlas's own 0.86 mm from a 2.5 mm model grid: the
peer at native resolution, scored the same way (its inverse by ITK's fixed-point inversion).
``convexadam:factor:project`` then low-passes its field onto a grid ``project`` times the
model grid's resolution and back (``1``: the 2.5 mm model grid; ``0.5``: the refinement's
default 5 mm update grid): what a warp limited to that grid can score.

    python benchmarks/probe_refine_grid.py --work-dir /tmp/cpu-recipe \\
        --model cpu-recipe-1500 --subjects c31s3 c35s3 --variants 1:30:0.05:2:0.8 2:30:0.05:2:0.8
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cpu_recipe import paired


def subject_paths(work: Path, sid: str) -> dict[str, Path]:
    """The cached inputs of a subject's registration in the app's work directory."""
    from nipype.utils.filemanip import loadpkl

    wf = work / "work" / f"sub_{sid}_wf"
    prep = loadpkl(wf / "registration_wf" / "prepare_pair" / "_inputs.pklz")
    met = loadpkl(wf / "metrics" / "_inputs.pklz")
    return {
        "moving": Path(prep["moving"]),
        "reference": Path(prep["reference"]),
        "reference_mask": Path(prep["reference_mask"]),
        "affine": Path(prep["affine"]),
        "subject_grid": wf / "anat_preproc_wf" / "n4_moving" / "n4.nii.gz",
        "subject_labels": Path(met["subject_labels"]),
        "reference_dseg": Path(met["reference_dseg"]),
    }


def inverse_field(disp: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The inverse of a displacement field ``(3, X, Y, Z)`` (voxels), by ITK's fixed-point
    inversion (for a peer that returns the forward field only)."""
    import SimpleITK as sitk

    from contrareg_bids.io.transforms import (
        array_from_image,
        displacement_image,
        world_disp_to_voxel,
    )

    img = displacement_image(disp, affine)
    inv = sitk.InvertDisplacementField(
        img, maximumNumberOfIterations=50, maxErrorToleranceThreshold=0.01,
        meanErrorToleranceThreshold=0.001, enforceBoundaryCondition=True,
    )  # fmt: skip
    return world_disp_to_voxel(array_from_image(inv), affine).astype(np.float32)


def grid_at(grid, factor: float) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Shape and spacing of the grid ``factor`` times finer than the bundle's model grid over
    its extent (:func:`contrareg_bids.processing.grid.finer_grid`)."""
    from contrareg_bids.processing.grid import finer_grid

    affine, shape = finer_grid(np.asarray(grid.affine), grid.shape, factor)
    return shape, tuple(float(x) for x in np.linalg.norm(affine[:3, :3], axis=0))


_PEER_FIELDS: dict[tuple[str, float], tuple[np.ndarray, float]] = {}


def project_field(disp: np.ndarray, coarse_shape: tuple[int, ...]) -> np.ndarray:
    """``disp`` ``(3, X, Y, Z)`` low-passed onto a coarser grid of the same extent and back:
    Gaussian anti-aliasing (sigma half the voxel ratio), then trilinear both ways."""
    import torch
    from scipy.ndimage import gaussian_filter

    from contrareg_bids.nn.integrate import resize_field

    ratio = [(s - 1) / (c - 1) for s, c in zip(disp.shape[1:], coarse_shape, strict=True)]
    smooth = np.stack([gaussian_filter(c, [r / 2 for r in ratio]) for c in disp])
    t = torch.from_numpy(smooth)[None]
    back = resize_field(resize_field(t, coarse_shape), disp.shape[1:])
    return back[0].numpy().astype(np.float32)


@contextlib.contextmanager
def patchnce_changed(objective, batch, ts: int, options: dict[str, str]):
    """Within: every PatchNCE loss of ``objective`` uses ``options`` (``tau``, ``layers``)
    and ``alpha`` is rescaled so the pull ratio on ``batch`` matches the unchanged one."""
    import torch

    from contrareg_bids.losses.patchnce import PatchNCELoss, more_draws
    from contrareg_bids.training.calibration import pull_ratio, reference_velocity

    if not options:
        yield
        return
    losses = [m for m in objective.modules() if isinstance(m, PatchNCELoss)]
    shape = tuple(int(s) for s in batch["fixed"].shape[2:])
    v_ref = reference_velocity(shape, ts, torch.Generator().manual_seed(4242))

    def ratio() -> float:
        with more_draws(objective, 16):
            return pull_ratio(objective, batch, v_ref, ts, torch.Generator().manual_seed(7))

    before = ratio()
    saved = [(m.tau, m.__dict__.get("_layer_loss")) for m in losses]
    alpha = objective.alpha
    keep = None
    if "layers" in options:
        keep = {int(k) for k in options["layers"].split("-")}
    for m in losses:
        m.tau = float(options.get("tau", m.tau))
        if keep is not None:
            plain = type(m)._layer_loss.__get__(m)

            def weighted(*args, _plain=plain, **kwargs):
                k = args[4]
                return _plain(*args, **kwargs) * (1.0 if k in keep else 0.0)

            m._layer_loss = weighted
    try:
        after = ratio()
        objective.alpha = alpha * before / after
        print(f"  pull ratio {before:.3g} -> {after:.3g}: alpha x {before / after:.3g}")
        yield
    finally:
        objective.alpha = alpha
        for m, (tau, own) in zip(losses, saved, strict=True):
            m.tau = tau
            if own is None:
                m.__dict__.pop("_layer_loss", None)
            else:
                m._layer_loss = own


def run_variant(paths, bundle, objective, variant: str, out: Path) -> dict:
    """Register one subject with one variant; the app's metrics row for it."""
    import torch

    from contrareg_bids.io.images import load_nifti
    from contrareg_bids.nn.integrate import integrate_velocity, resize_field
    from contrareg_bids.nn.refine import RefineSettings, refine_velocity
    from contrareg_bids.processing.model_space import prepare_model_pair

    variant, *changes = variant.split(",")
    options = dict(c.split("=", 1) for c in changes)
    peer = variant.startswith("convexadam:")
    if peer:  # ConvexAdam (MIND, its defaults) on the pair at that grid, for comparison
        factor, *project = (float(x) for x in variant.split(":")[1:])
    else:
        factor, steps, lr, coarse, lam, *rest = (float(x) for x in variant.split(":"))
    grid = bundle.metadata.grid
    shape = tuple(int(s) for s in grid.shape)
    args = (paths["moving"], paths["reference"], paths["affine"])
    fine_shape, fine_spacing = grid_at(grid, factor)
    jitter = not peer and len(rest) > 1 and rest[1] > 1  # phase-sampled from rest[1] x finer
    fine = prepare_model_pair(
        *args, fine_shape, fine_spacing, out / "fine", reference_mask=paths["reference_mask"],
        fine_factor=rest[1] if jitter else None,
    )  # fmt: skip

    def tensor(path):
        return torch.from_numpy(load_nifti(path).get_fdata(dtype=np.float32))[None, None]

    net = bundle.regnet.eval()
    t0 = time.perf_counter()
    if peer:
        from contrareg_bids.evaluation.peers import convexadam_forward_field

        key = (str(paths["moving"]), factor)
        if key not in _PEER_FIELDS:
            mov, fix = (
                load_nifti(x).get_fdata(dtype=np.float32) for x in (fine.moving, fine.fixed)
            )
            _PEER_FIELDS.clear()
            _PEER_FIELDS[key] = convexadam_forward_field(mov, fix)
        fwd, seconds = _PEER_FIELDS[key]
        if project:
            coarse_shape = tuple(round((s - 1) * project[0]) + 1 for s in shape)
            fwd = project_field(fwd, coarse_shape)
        inv = inverse_field(fwd, fine.grid_affine)
        return score(paths, fwd, inv, fine, out, seconds)
    model = prepare_model_pair(*args, shape, tuple(grid.spacing), out / "model")
    init_lam = rest[3] if len(rest) > 3 else lam  # the network's lambda for the start
    with torch.inference_mode():
        v = net.velocity(tensor(model.moving), tensor(model.fixed), init_lam).float()
    v = resize_field(v.clone(), fine_shape)
    draws = int(rest[0]) if rest else 1
    schedule = "cosine" if len(rest) > 2 and rest[2] else "constant"
    settings = RefineSettings(
        steps=int(steps), lr=lr, coarse=int(coarse), draws=draws, schedule=schedule
    )
    cfg = net.config
    fine_images = None
    if jitter:
        fine_images = (tensor(fine.fine_moving), tensor(fine.fine_fixed))
    pair = {"moving": tensor(fine.moving), "fixed": tensor(fine.fixed)}
    with patchnce_changed(objective, pair, cfg.ts, options):
        v = refine_velocity(
            v, pair["moving"], pair["fixed"], objective, lam, cfg.ts, settings,
            cfg.int_downsize, fine_images=fine_images,
        )  # fmt: skip
    with torch.inference_mode():
        fwd = integrate_velocity(v, cfg.ts, cfg.int_downsize)[0].numpy()
        inv = integrate_velocity(-v, cfg.ts, cfg.int_downsize)[0].numpy()
    return score(paths, fwd, inv, fine, out, time.perf_counter() - t0)


def score(paths, fwd, inv, fine, out: Path, seconds: float) -> dict:
    """The app's metrics of a pair of fields on the grid of ``fine``: its composites, the
    reference labels resampled into the subject, its Dice and warp quality."""
    from contrareg_bids.io.transforms import apply_transform, write_displacement_nifti
    from contrareg_bids.processing.model_space import export_transforms
    from contrareg_bids.processing.participant_metrics import subject_dice, warp_quality

    fwd_path = write_displacement_nifti(fwd, fine.grid_affine, out / "fwd.nii.gz")
    inv_path = write_displacement_nifti(inv, fine.grid_affine, out / "inv.nii.gz")
    _, subj_to_ref = export_transforms(paths["affine"], fwd_path, inv_path, out)
    ref_in_subject = apply_transform(
        paths["reference_dseg"], paths["subject_grid"], [subj_to_ref], out / "ref_dseg.nii.gz",
        "label",
    )  # fmt: skip
    row = subject_dice(
        paths["subject_labels"], ref_in_subject, reference_dseg=paths["reference_dseg"],
        affine=paths["affine"],
    )  # fmt: skip
    row.update(warp_quality(fwd_path, fine.fixed_mask))
    row["seconds"] = seconds
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work-dir", type=Path, required=True, help="bench_cpu_recipe's work dir")
    p.add_argument("--model", default="cpu-recipe", help="the bundle's name in out-train")
    p.add_argument("--subjects", nargs="+", required=True, help="e.g. c31s3 c35s3")
    p.add_argument(
        "--variants",
        nargs="+",
        required=True,
        help="factor:steps:lr:coarse:lambda[:draws[:jitter[:cosine[:init]]]] or "
        "convexadam:factor[:project]",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="results as JSON")
    a = p.parse_args(argv)
    return run_probe(a, "probe_refine_grid.py", run_variant)


def run_probe(a: argparse.Namespace, script: str, run) -> int:
    """Run ``run(paths, bundle, objective, variant, out_dir)`` for every subject and variant
    of ``a`` (``work_dir``, ``model``, ``subjects``, ``variants``, ``threads``, ``out``):
    a line per registration, then a table against the first variant, and the rows as JSON."""
    print(f"# python benchmarks/{script} {shlex.join(sys.argv[1:])}", flush=True)
    import torch

    from contrareg_bids.io.atomic import write_text_atomic
    from contrareg_bids.io.bundle import load_model
    from contrareg_bids.training.objective import objective_from_bundle

    torch.set_num_threads(a.threads)
    work = a.work_dir.resolve()
    bundle = load_model(work / "out-train" / "models" / f"{a.model}.safetensors")
    objective = objective_from_bundle(bundle)
    rows: dict[str, dict[str, dict]] = {v: {} for v in a.variants}
    for sid in a.subjects:
        paths = subject_paths(work, sid)
        for variant in a.variants:
            with tempfile.TemporaryDirectory() as tmp:
                row = run(paths, bundle, objective, variant, Path(tmp))
            rows[variant][sid] = row
            print(
                f"{sid} {variant}: Dice {row['mean_dice']:.4f} (affine "
                f"{row['mean_dice_affine']:.4f}), folding {row['folding_percent']:.3f} %, "
                f"std log|J| {row['std_log_jacobian']:.3f}, {row['seconds']:.0f} s",
                flush=True,
            )
    base = a.variants[0]
    print(f"\n| variant | mean Dice | vs {base} | folding % | std log|J| | s/subject |")
    print("|---|---|---|---|---|---|")
    for v in a.variants:
        dice = [rows[v][s]["mean_dice"] for s in a.subjects]
        fold = statistics.mean(rows[v][s]["folding_percent"] for s in a.subjects)
        sdj = statistics.mean(rows[v][s]["std_log_jacobian"] for s in a.subjects)
        sec = statistics.mean(rows[v][s]["seconds"] for s in a.subjects)
        vs = paired(dice, [rows[base][s]["mean_dice"] for s in a.subjects])
        print(f"| {v} | {statistics.mean(dice):.4f} | {vs} | {fold:.3f} | {sdj:.3f} | {sec:.0f} |")
    if a.out:
        write_text_atomic(a.out, json.dumps(rows, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
