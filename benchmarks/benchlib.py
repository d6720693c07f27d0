"""What the benchmark scripts share: the command line they print, the app they run, the one
place they pass registration settings to the package, the scorers, the paired statistics
and the markdown they write.

The scripts are tools, run from anywhere as ``python benchmarks/<name>.py ...``: Python puts
their own folder first on ``sys.path``, so they import this module (and each other) by
name, ``import benchlib``. The tests import them the same way: pytest puts ``benchmarks/``
on ``sys.path`` (``pythonpath`` in pyproject.toml), so each script is one module under one
name in both cases (there is no ``benchmarks`` package, which would give a second copy).

Everything measured goes through the package: preprocessing
(:mod:`contrareg_bids.processing`), registration (:func:`register`), scoring
(:mod:`contrareg_bids.metrics`, :mod:`contrareg_bids.evaluation.sweep`) and statistics
(:func:`contrareg_bids.evaluation.stats.paired_difference`: mean, SD with ddof 1, pairs
better, Wilcoxon p).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from contrareg_bids.evaluation.stats import PairedDifference, paired_difference

if TYPE_CHECKING:
    from contrareg_bids.nn.inference import InferenceResult

__all__ = [
    "REPO",
    "PairedDifference",
    "app",
    "app_transform",
    "command_line",
    "derivative",
    "fmt_table",
    "load_volumes",
    "log",
    "paired_difference",
    "register",
    "registration_options",
    "run_peer",
    "score_arrays",
    "score_files",
    "work_files",
    "write_docs",
]

#: The checkout these scripts belong to (the app they run is its ``contrareg_bids``).
REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- console


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def command_line(script: str, argv: Sequence[str] | None = None, env: Sequence[str] = ()) -> str:
    """``python benchmarks/<script> ARGS`` as it was run (``argv`` when a caller passed one,
    else ``sys.argv[1:]``), after the environment variables named in ``env`` that are set;
    scripts print it first (``# ...``) so that every figure comes with its command."""
    args = list(sys.argv[1:] if argv is None else argv)
    prefix = "".join(f"{k}={shlex.quote(os.environ[k])} " for k in env if k in os.environ)
    return f"{prefix}python benchmarks/{script} {shlex.join(args)}".rstrip()


def fmt_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def write_docs(path: Path, heading: str, section: str) -> None:
    """Replace the section under ``heading`` (a ``## `` line) of the markdown file ``path``
    by ``section`` (which starts with that heading), keeping the others; append it when the
    file has no such section."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = text.splitlines()
    start = next((k for k, ln in enumerate(lines) if ln.strip() == heading), None)
    if start is None:
        new = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    else:
        end = next(
            (k for k in range(start + 1, len(lines)) if lines[k].startswith("## ")), len(lines)
        )
        tail = "\n".join(lines[end:])
        new = "\n".join(lines[:start]) + "\n" + section.rstrip("\n") + "\n"
        if tail:
            new += "\n" + tail.rstrip("\n") + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


# --------------------------------------------------------------------------- the app


def app(
    argv: Sequence[str], src: Path = REPO, env_extra: Mapping[str, str] | None = None
) -> tuple[int, float]:
    """Run the BIDS-App (``contrareg_bids.cli.run``) of the checkout ``src`` in a child
    process; (exit code, wall seconds). Its stderr's tail is logged when it fails."""
    env = {**os.environ, "PYTHONPATH": str(src), **(env_extra or {})}
    cmd = [sys.executable, "-m", "contrareg_bids.cli.run", *argv]
    t0 = time.perf_counter()
    # cwd outside every checkout: ``python -m`` puts the cwd first on sys.path
    done = subprocess.run(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        check=False, cwd="/",
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    if done.returncode:
        log(f"  exit {done.returncode}: {done.stderr[-3000:]}")
    return done.returncode, seconds


def registration_options(
    *,
    lam: float | str | None = None,
    refine_steps: int | None = None,
    refine_draws: int | None = None,
    fine_steps: int | None = None,
) -> list[str]:
    """The participant level's registration options (``--lambda``, ``--refine-steps``,
    ``--refine-draws``, ``--fine-steps``) for the given values (None: the app's default).

    The one place where the scripts spell these options: adapt it here when they change."""
    out: list[str] = []
    for flag, value in (
        ("--lambda", lam),
        ("--refine-steps", refine_steps),
        ("--refine-draws", refine_draws),
        ("--fine-steps", fine_steps),
    ):
        if value is not None:
            out += [flag, value if isinstance(value, str) else f"{value:g}"]
    return out


def app_transform(out: Path, moving: str) -> Path:
    """The subject's exported transform (reference -> subject T2w) of a participant run."""
    hits = [
        p
        for p in (out / f"sub-{moving}" / "anat").glob(
            f"sub-{moving}_from-T2w_to-*_mode-image_xfm.h5"
        )
        if "_to-T1w_" not in p.name
    ]
    if len(hits) != 1:
        raise FileNotFoundError(
            f"{out}/sub-{moving}/anat: expected one from-T2w transform, got {hits}"
        )
    return hits[0]


def work_files(work: Path, moving: str) -> tuple[Path, Path, Path]:
    """The app's preprocessed moving T2w, its affine (reference -> subject), the reference's
    preprocessed T1w, from a participant run's work folder."""
    sub = work / f"sub_{moving}_wf" / "pair_wf" / "anat_preproc_wf"
    refs = sorted(work.glob("reference_*_wf/normalize_reference/norm.nii.gz"))
    if len(refs) != 1:
        raise FileNotFoundError(f"{work}: expected one preprocessed reference, got {refs}")
    return (
        sub / "normalize_moving" / "norm.nii.gz",
        sub / "affine_moving" / "affine_0GenericAffine.mat",
        refs[0],
    )


def run_peer(name: str, work: Path, moving: str) -> tuple[object, float]:
    """(transform reference -> moving subject, seconds) of a peer (``affine``, ``convexadam``,
    ``fireants-cc``, ``fireants-mi``) on the app's affine-aligned, preprocessed pair read from
    a participant run's work folder (:func:`work_files`)."""
    import nibabel as nib

    from contrareg_bids.io.transforms import (
        array_from_image,
        chain_transforms,
        displacement_transform,
        read_ants_affine,
        resample_image,
        sitk_image_from_file,
    )

    norm, affine_mat, ref = work_files(work, moving)
    affine = read_ants_affine(affine_mat)
    if name == "affine":
        return affine, 0.0
    ref_img = sitk_image_from_file(ref)
    fixed = array_from_image(ref_img)
    moved = array_from_image(resample_image(sitk_image_from_file(norm), ref_img, affine))
    ref_nii = nib.load(ref)
    if name == "convexadam":
        from contrareg_bids.evaluation.peers import convexadam_forward_field

        disp, seconds = convexadam_forward_field(moved, fixed)
    elif name in ("fireants-cc", "fireants-mi"):
        from contrareg_bids.evaluation.peers import FireANTsSettings, fireants_forward_field

        disp, seconds = fireants_forward_field(
            moved,
            fixed,
            spacing=ref_nii.header.get_zooms()[:3],
            settings=FireANTsSettings(loss=name.split("-", 1)[1]),
        )
    else:
        raise ValueError(f"unknown peer {name!r}")
    field = displacement_transform(disp, ref_nii.affine)
    return chain_transforms([field, affine]), seconds


# --------------------------------------------------------------------------- registration


def register(
    regnet,
    moving: np.ndarray,
    fixed: np.ndarray,
    *,
    lam: float,
    device: str = "cpu",
    refine: Mapping[str, Any] | None = None,
    objective=None,
    moving_mask: np.ndarray | None = None,
    fixed_mask: np.ndarray | None = None,
) -> InferenceResult:
    """The network of a bundle on one pair of arrays at ``lam``
    (:func:`contrareg_bids.nn.inference.register_arrays`), refined when ``refine`` holds the
    refinement's settings by name (``steps``, ``lr``, ``coarse``, ``draws``, ``schedule``,
    ``seed``) with ``objective`` (the bundle's) inside the masks.

    The one place where the scripts pass registration settings to the package in Python:
    adapt it here when those keywords change."""
    from contrareg_bids.nn.inference import register_arrays

    settings = None
    if refine:
        from contrareg_bids.settings import RefineSettings

        settings = RefineSettings(**refine)
    return register_arrays(
        regnet, moving, fixed, lam=lam, device=device, refine=settings, objective=objective,
        moving_mask=moving_mask, fixed_mask=fixed_mask,
    )  # fmt: skip


# --------------------------------------------------------------------------- data and scores


def load_volumes(paths: Mapping[str, Path]) -> dict[str, np.ndarray]:
    """The arrays of NIfTI files by key (as stored: labels keep their integer type)."""
    from contrareg_bids.io.images import read_volume

    return {k: read_volume(p, dtype=None, finite=False)[0] for k, p in paths.items()}


def score_arrays(
    moving: Mapping[str, np.ndarray],
    fixed: Mapping[str, np.ndarray],
    disp: np.ndarray,
    labels: Sequence[int],
) -> dict[str, float]:
    """One pair on one grid, scored by the package's sweep: the moving ``labels`` map carried
    through the forward field ``disp`` (voxels, one-hot linear), mean Dice over ``labels``
    against the fixed map, folding % and std log|J| inside the fixed ``mask``
    (:func:`contrareg_bids.evaluation.sweep.evaluate_pair`)."""
    from contrareg_bids.evaluation.sweep import evaluate_pair, warp_label_map

    moved = warp_label_map(moving["labels"], disp)
    return evaluate_pair(moved, fixed["labels"], disp, fixed["mask"] > 0, labels)


def derivative(bids: Path, sub: str, suffix: str) -> Path:
    """A file of a dataset's label derivatives (``derivatives/labels``), e.g. ``dseg``."""
    return bids / "derivatives" / "labels" / f"sub-{sub}" / "anat" / f"sub-{sub}_{suffix}.nii.gz"


def score_files(
    moving_labels: Path,
    fixed_labels: Path,
    fixed_mask: Path,
    transform,
    labels: Sequence[int],
    scored: Callable[[np.ndarray], np.ndarray],
    tmp: Path,
) -> dict:
    """One pair of label files through a transform (reference -> moving, as the app writes
    it), scored by the package's scorer (:func:`contrareg_bids.metrics.registration_metrics`):
    the moving labels carried onto the fixed grid (nearest neighbour), both maps made
    ``scored`` (the label set of the benchmark), mean Dice over ``labels``; folding % and std
    log|J| of the whole transform inside the fixed brain mask. ``tmp``: a scratch file."""
    import nibabel as nib

    from contrareg_bids.io.transforms import apply_transform, compose_to_field
    from contrareg_bids.metrics import registration_metrics

    fixed_img = nib.load(fixed_labels)
    apply_transform(moving_labels, fixed_labels, transform, tmp, "nearest")
    moved = scored(np.asarray(nib.load(tmp).dataobj))
    tmp.unlink()
    field = compose_to_field(transform, fixed_img.affine, fixed_img.shape)
    mask = np.asarray(nib.load(fixed_mask).dataobj) > 0
    s = registration_metrics(
        scored(np.asarray(fixed_img.dataobj)), moved, field, mask, labels=labels
    )
    return {
        "dice": s["mean_dice"],
        "dice_per_label": s["dice_per_label"],
        "folding_percent": s["folding_percent"],
        "std_log_jacobian": s["std_log_jacobian"],
    }
