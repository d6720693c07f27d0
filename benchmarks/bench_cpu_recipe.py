"""The CPU recipe end to end on neonatal pseudo-subjects of the development atlas, a secondary
set to the real scans of ``bench_real_pairs.py``: ``train --train-preset cpu``, then
``participant`` with the network alone, with the app's default registration, and with ANTs
SyN, and ConvexAdam on the app's own preprocessed, affine-aligned pairs, in one run.

A BIDS dataset is made from the development atlas (``tpl-Serag2012``, 0.86 mm, 28-44
weeks). Training subjects: one per training cohort, warped by
:func:`contrareg_bids.simulate.simulate_subject`'s velocity fields (the family of the
training augmentation). Test subjects: three per held-out cohort (31/35/39/43), and the
reference (one subject of the held-out cohort 37), warped by a deformation of **another
family**, a cubic B-spline free-form deformation (``--test-warp bspline``, control points
every ``--test-warp-spacing`` mm, coefficients up to ``--test-warp-amplitude`` mm, below the
bound that keeps it one-to-one), so that neither the test anatomies, their warps nor the
reference are anything the model was trained on. Every subject has per-modality gamma, bias
field and noise and is placed in the scanner by its own random rigid transform (header only:
the app's affine step has to find it). Moving T2w of each test subject -> the reference's
T1w.

    python benchmarks/bench_cpu_recipe.py --work-dir /tmp/cpu-recipe

Dice: every method scored the same way, through its own transform (labels carried onto the
reference grid nearest-neighbour), mean over the tissues {1, 2, 3, 5, 6, 7, 8} of the atlas
(4, the non-brain band, and 9, a class of a few hundred voxels, are not scored); folding %
and std log|J| inside the reference's brain mask; paired differences with ddof 1, n better
and a signed-rank p. ``--test-per-cohort 5 --register-index 3 4`` registers two more subjects
per held-out cohort instead of the test subjects: a selection set for choosing settings.
A method whose output folder already holds every registered subject is not run again.
Needs the atlas (``TEMPLATEFLOW_HOME``); academic use only, nothing of it is kept in the
repository.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from bench_train_atlas import COHORTS, TEMPLATE, TISSUES, preprocess_cohort
from benchlib import (
    app,
    app_transform,
    command_line,
    derivative,
    log,
    paired_difference,
    registration_options,
    run_peer,
    score_files,
)

HELD_OUT = [31, 35, 39, 43]
APP_METHODS = ("network", "defaults", "ants")
PEERS = ("convexadam", "fireants-mi")
NETWORK_LAMBDA = 0.8


def rigid(rng: np.random.Generator, degrees: float, mm: float) -> np.ndarray:
    """A random rigid transform (4x4): rotations up to ``degrees`` about each axis,
    translations up to ``mm``."""
    from scipy.spatial.transform import Rotation

    angles = rng.uniform(-degrees, degrees, 3)
    mat = np.eye(4)
    mat[:3, :3] = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    mat[:3, 3] = rng.uniform(-mm, mm, 3)
    return mat


def tissues(labels: np.ndarray) -> np.ndarray:
    """The scored label map: the tissues of :data:`TISSUES`, everything else 0."""
    return np.where(np.isin(labels, TISSUES), labels, 0).astype(np.int16)


def write_dataset(args, root: Path) -> tuple[list[str], list[str], str]:
    """Pseudo-subjects as a BIDS dataset (labels and masks in ``derivatives/labels``);
    returns (training ids, held-out ids, the reference's id). Kept when written before with
    the same settings."""
    import nibabel as nib

    from contrareg_bids.simulate import bspline_displacement, simulate_subject

    if args.reference_cohort in args.held_out:
        sys.exit("error: --reference-cohort must not be one of --held-out")
    kept_out = {*args.held_out, args.reference_cohort}
    train_cohorts = [c for c in COHORTS if c not in kept_out]
    plan = [(c, k) for c in train_cohorts for k in range(args.train_per_cohort)]
    plan += [(c, k) for c in args.held_out for k in range(args.test_per_cohort)]
    plan += [(args.reference_cohort, 0)]
    ids = {(c, k): f"c{c}s{k}" for c, k in plan}
    settings = {
        k: getattr(args, k)
        for k in (
            "amplitude",
            "sigma",
            "test_warp",
            "test_warp_spacing",
            "test_warp_amplitude",
            "rotation",
            "shift",
            "train_per_cohort",
            "test_per_cohort",
            "reference_cohort",
            "seed",
        )
    }
    settings["held_out"] = list(args.held_out)
    stamp = root / "code" / "bench_cpu_recipe.json"
    train = [ids[p] for p in plan if p[0] not in kept_out]
    test = [ids[p] for p in plan if p[0] in args.held_out]
    reference = ids[(args.reference_cohort, 0)]
    if stamp.is_file() and json.loads(stamp.read_text()) == settings:
        return train, test, reference
    if root.exists():
        sys.exit(f"error: {root} holds another dataset: give another --work-dir")
    tf_root = Path(os.environ.get("TEMPLATEFLOW_HOME", "")) / TEMPLATE
    if not tf_root.is_dir():
        sys.exit(f"error: the atlas is missing ({tf_root}): set TEMPLATEFLOW_HOME")
    native = root.parent / "native"
    labels = root / "derivatives" / "labels"
    for path, name, kind in (
        (root, "pseudo-subjects of tpl-Serag2012", "raw"),
        (labels, "labels and masks", "derivative"),
    ):
        path.mkdir(parents=True, exist_ok=True)
        (path / "dataset_description.json").write_text(
            json.dumps({"Name": name, "BIDSVersion": "1.9.0", "DatasetType": kind}) + "\n"
        )
    rows = ["participant_id\tpma"]
    for c, k in plan:
        paths = preprocess_cohort(tf_root.parent, c, 1, native)
        imgs = {key: nib.load(p) for key, p in paths.items()}
        spacing = float(imgs["T1w"].header.get_zooms()[0])
        base = {
            "t1w": imgs["T1w"].get_fdata(dtype=np.float32),
            "t2w": imgs["T2w"].get_fdata(dtype=np.float32),
            "mask": imgs["mask"].get_fdata(dtype=np.float32),
            "labels": np.asarray(imgs["labels"].dataobj).astype(np.int64),
        }
        rng = np.random.default_rng([args.seed, c, k])
        disp = None
        if c in kept_out and args.test_warp == "bspline":
            disp = bspline_displacement(
                base["t1w"].shape,
                rng,
                spacing=args.test_warp_spacing / spacing,
                amplitude=args.test_warp_amplitude / spacing,
            )
        s = simulate_subject(
            base,
            rng,
            amplitude=args.amplitude / spacing,
            sigma=args.sigma / spacing,
            displacement=disp,
        )
        affine = rigid(rng, args.rotation, args.shift) @ imgs["T1w"].affine
        sid = ids[(c, k)]
        out = {
            root / f"sub-{sid}/anat/sub-{sid}_T1w.nii.gz": (s["t1w"], np.float32),
            root / f"sub-{sid}/anat/sub-{sid}_T2w.nii.gz": (s["t2w"], np.float32),
            labels / f"sub-{sid}/anat/sub-{sid}_desc-brain_mask.nii.gz": (s["mask"], np.uint8),
            labels / f"sub-{sid}/anat/sub-{sid}_dseg.nii.gz": (s["labels"], np.int16),
        }
        for path, (arr, dtype) in out.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(arr.astype(dtype), affine), str(path))
        rows.append(f"sub-{sid}\t{c}")
        log(f"  sub-{sid} written")
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(settings) + "\n")
    return train, test, reference


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/cpu-recipe"))
    p.add_argument("--held-out", type=int, nargs="+", default=HELD_OUT)
    p.add_argument("--train-per-cohort", type=int, default=1)
    p.add_argument("--test-per-cohort", type=int, default=3)
    p.add_argument(
        "--register-index",
        type=int,
        nargs="+",
        default=None,
        help="which of each held-out cohort's subjects to register (default: all); e.g. "
        "subjects beyond the test set as a selection set",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=[*APP_METHODS, "convexadam"],
        choices=[*APP_METHODS, *PEERS],
        help="what to run (default: every app method and ConvexAdam)",
    )
    p.add_argument("--reference-cohort", type=int, default=37, help="held out of training")
    p.add_argument("--amplitude", type=float, default=5.0, help="training warps: velocity, mm")
    p.add_argument("--sigma", type=float, default=10.0, help="training warps: smoothness, mm")
    p.add_argument(
        "--test-warp",
        choices=("bspline", "velocity"),
        default="bspline",
        help="family of the test subjects' and the reference's warps",
    )
    p.add_argument("--test-warp-spacing", type=float, default=14.0, help="B-spline, mm")
    p.add_argument(
        "--test-warp-amplitude", type=float, default=5.5, help="B-spline coefficients, mm"
    )
    p.add_argument("--rotation", type=float, default=6.0, help="degrees, each axis")
    p.add_argument("--shift", type=float, default=6.0, help="mm, each axis")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--participant-options",
        default="",
        help="participant options added to the defaults' run (quoted); its folder is tagged",
    )
    p.add_argument("--tag", default="", help="appended to the defaults' output folder")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--train-options", default="", help="extra train-level options (quoted)")
    p.add_argument(
        "--model-name", default="cpu-recipe", help="the bundle's name (another for other options)"
    )
    args = p.parse_args(argv)
    log("command: " + command_line("bench_cpu_recipe.py", argv, env=("TEMPLATEFLOW_HOME",)))

    work = args.work_dir.resolve()
    bids = work / "bids"
    train, test, reference = write_dataset(args, bids)
    if args.register_index is not None:
        test = [t for t in test if int(t.split("s")[-1]) in args.register_index]
    common = [
        "-w",
        str(work / "work"),
        "--reference",
        f"sub-{reference}",
        "--derivatives",
        f"labels={bids / 'derivatives' / 'labels'}",
        "--random-seed",
        str(args.seed),
        "--nprocs",
        "1",
        "--omp-nthreads",
        str(args.threads),
        "--device",
        "cpu",
    ]
    models = work / "out-train"
    seconds: dict[str, float] = {}
    bundle = models / "models" / f"{args.model_name}.safetensors"
    if not bundle.exists():
        argv_train = [
            str(bids),
            str(models),
            "train",
            *common,
            "--train-preset",
            "cpu",
            "--model-name",
            args.model_name,
            "--participant-label",
            *train,
            *shlex.split(args.train_options),
        ]
        log("train: contrareg-bids " + shlex.join(argv_train))
        rc, seconds["train"] = app(argv_train)
        if rc:
            return rc
        log(f"  train level {seconds['train'] / 60:.1f} min ({len(train)} subjects)")
    methods = {
        "network": [
            *("--model", str(bundle)),
            *registration_options(lam=NETWORK_LAMBDA, refine_steps=0, fine_steps=0),
        ],
        "defaults": ["--model", str(bundle), *shlex.split(args.participant_options)],
        "ants": ["--registration", "ants"],
    }
    folders = {
        "network": f"out-{args.model_name}-network",
        "defaults": f"out-{args.model_name}-defaults{args.tag}",
        "ants": "out-ants",
    }
    if args.participant_options and not args.tag:
        sys.exit("error: --participant-options needs a --tag (the defaults' folder is kept)")
    ordered = [m for m in APP_METHODS if m in args.methods]
    ordered += [m for m in PEERS if m in args.methods]
    scores: dict[str, dict[str, dict]] = {}
    cache = work / "scores"
    for name in ordered:
        out = work / folders.get(name, name)
        cached = cache / f"{folders.get(name, name)}.json"
        done = json.loads(cached.read_text()) if cached.is_file() else {}
        todo = [t for t in test if t not in done]
        if todo and name in APP_METHODS:
            argv_p = [str(bids), str(out), "participant", *common, "--participant-label"]
            argv_p += [*todo, *methods[name]]
            log(f"{name}: contrareg-bids " + shlex.join(argv_p))
            rc, seconds[name] = app(argv_p)
            if rc:
                log(f"  {name} exited {rc}: scoring the subjects that finished")
        for t in todo:
            if name in APP_METHODS:
                try:
                    transform = str(app_transform(out, t))
                    took = seconds.get(name, float("nan")) / len(todo)
                except FileNotFoundError as err:
                    log(f"  {name} sub-{t}: {err}")
                    continue
            else:
                transform, took = run_peer(name, work / "work", t)
            s = score_tissues(bids, t, reference, transform, work)
            s["seconds"] = took
            done[t] = s
            log(f"  {name} sub-{t}: Dice {s['dice']:.4f} ({took:.0f} s)")
            cache.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(".tmp")
            tmp.write_text(json.dumps(done, indent=1) + "\n")
            tmp.replace(cached)
        scores[name] = {t: done[t] for t in test if t in done}
    aff = {t: s for t in test if (s := affine_score(bids, work, t, reference)) is not None}
    scores = {"affine": aff, **scores}
    report(scores, reference, seconds)
    (work / f"results-{args.model_name}{args.tag}.json").write_text(
        json.dumps(
            {"scores": scores, "seconds": seconds, "args": vars(args) | {"work_dir": str(work)}},
            indent=1,
            default=str,
        )
        + "\n"
    )
    return 0


def score_tissues(bids: Path, moving: str, fixed: str, transform, work: Path) -> dict:
    """Dice over :data:`TISSUES` of the ``dseg`` maps, folding % and std log|J| in the fixed
    brain (:func:`benchlib.score_files`)."""
    return score_files(
        derivative(bids, moving, "dseg"),
        derivative(bids, fixed, "dseg"),
        derivative(bids, fixed, "desc-brain_mask"),
        transform,
        TISSUES,
        tissues,
        work / f"_moved_{moving}_{fixed}.nii.gz",
    )


def affine_score(bids: Path, work: Path, moving: str, reference: str) -> dict | None:
    """The app's affine step alone, scored like the others (cached)."""
    cached = work / "scores" / "affine" / f"{moving}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    try:
        transform, _ = run_peer("affine", work / "work", moving)
    except FileNotFoundError:
        return None
    s = score_tissues(bids, moving, reference, transform, work)
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(s) + "\n")
    return s


def report(scores: dict[str, dict[str, dict]], reference: str, seconds: dict) -> None:
    """The table: Dice, differences against the default registration, smoothness, time."""
    subjects = sorted(set.intersection(*(set(r) for r in scores.values() if r)))
    if not subjects:
        log("no subject was scored by every method")
        return
    dice = {m: [scores[m][s]["dice"] for s in subjects] for m in scores if scores[m]}
    primary = "defaults" if "defaults" in dice else next(iter(dice))
    print(
        f"\n{len(subjects)} test subjects -> sub-{reference} (moving T2w, fixed T1w), "
        f"atlas-derived pseudo-subjects; mean Dice over tissues {TISSUES}"
    )
    print(
        f"| method | mean Dice | {primary} minus method | folding % | std log|J| | s / subject |"
    )
    print("|---|---|---|---|---|---|")
    for m in dice:
        fold = np.mean([scores[m][s]["folding_percent"] for s in subjects])
        sdj = np.mean([scores[m][s]["std_log_jacobian"] for s in subjects])
        diff = "-" if m == primary else str(paired_difference(dice[primary], dice[m]))
        took = [scores[m][s].get("seconds", float("nan")) for s in subjects]
        per = (
            seconds[m] / len(subjects)
            if m in seconds
            else float(np.nanmean(took) if not np.all(np.isnan(took)) else float("nan"))
        )
        print(f"| {m} | {np.mean(dice[m]):.4f} | {diff} | {fold:.3f} | {sdj:.3f} | {per:.0f} |")
    print("wall seconds per stage: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
    print(time.strftime("%Y-%m-%d %H:%M"))


if __name__ == "__main__":
    raise SystemExit(main())
