"""The CPU recipe end to end on neonatal pseudo-subjects: ``train --train-preset cpu``, then
``participant`` with the network alone, with test-time refinement, and with ANTs SyN.

A BIDS dataset is made from the development atlas (``tpl-Serag2012``, 0.86 mm, 28-44
weeks): pseudo-subjects of each cohort (:func:`contrareg_bids.demo.simulate_subject` at
native resolution: a random smooth diffeomorphism, largest velocity ``--amplitude`` mm,
smoothness ``--sigma`` mm, applied to T1w, T2w, brain mask and tissue labels together;
per-modality gamma, bias field and noise), each placed in the scanner by its own random
rigid transform (header only: the app's affine step has to find it). Subjects of the
training cohorts train the model; subjects of the held-out cohorts (31/35/39/43) are
registered (moving T2w -> fixed T1w of the reference, a training-cohort subject). Every
level runs through the app's command line as a lab would, in one process after another on
the same work directory (the held-out subjects' preprocessing is computed by the first
participant run and reused by the others: compare the registrations' Dice, and time them with
``bench_participant_methods.py``).

    python benchmarks/bench_cpu_recipe.py --work-dir /tmp/cpu-recipe

A method whose output folder already holds every held-out subject's metrics is not run
again (ANTs SyN's, when only the training options change with ``--model-name``). Output
folders carry ``--lambda``, ``--refine-steps`` and ``--refine-draws`` when they differ from the
defaults.
``--test-per-cohort 5 --register-index 3 4`` registers two more subjects per held-out cohort
instead of the test subjects: a selection set for choosing settings before the test.

Dice: the app's own ``mean_dice`` (mean over the reference's tissue labels) and
``mean_dice_affine`` (its affine step) of each held-out subject; differences paired over
subjects. Needs the atlas (``TEMPLATEFLOW_HOME``); academic use only, nothing of it is kept
in the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_participant_dataset import app, log, metrics
from bench_train_atlas import COHORTS, TEMPLATE, preprocess_cohort

HERE = Path(__file__).resolve().parents[1]
HELD_OUT = [31, 35, 39, 43]
METHODS = ("network", "refine", "ants")
DEFAULT_LAMBDA = 0.8
DEFAULT_REFINE_STEPS = 30
DEFAULT_REFINE_DRAWS = 1


def rigid(rng: np.random.Generator, degrees: float, mm: float) -> np.ndarray:
    """A random rigid transform (4x4): rotations up to ``degrees`` about each axis,
    translations up to ``mm``."""
    from scipy.spatial.transform import Rotation

    angles = rng.uniform(-degrees, degrees, 3)
    mat = np.eye(4)
    mat[:3, :3] = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    mat[:3, 3] = rng.uniform(-mm, mm, 3)
    return mat


def write_dataset(args, root: Path) -> tuple[list[str], list[str]]:
    """Pseudo-subjects as a BIDS dataset (labels and masks in ``derivatives/labels``);
    returns (training ids, held-out ids). Kept when written before with the same settings."""
    import nibabel as nib

    from contrareg_bids.demo import simulate_subject

    train_cohorts = [c for c in COHORTS if c not in args.held_out]
    plan = [(c, k) for c in train_cohorts for k in range(args.train_per_cohort)]
    plan += [(c, k) for c in args.held_out for k in range(args.test_per_cohort)]
    ids = {(c, k): f"c{c}s{k}" for c, k in plan}
    settings = {
        k: getattr(args, k)
        for k in (
            "amplitude",
            "sigma",
            "rotation",
            "shift",
            "train_per_cohort",
            "test_per_cohort",
            "seed",
        )
    }
    settings["held_out"] = list(args.held_out)
    stamp = root / "code" / "bench_cpu_recipe.json"
    train = [ids[p] for p in plan if p[0] not in args.held_out]
    test = [ids[p] for p in plan if p[0] in args.held_out]
    if stamp.is_file() and json.loads(stamp.read_text()) == settings:
        return train, test
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
        s = simulate_subject(
            base, rng, amplitude=args.amplitude / spacing, sigma=args.sigma / spacing
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
    return train, test


def paired(a: list[float], b: list[float]) -> str:
    d = [x - y for x, y in zip(a, b, strict=True)]
    sd = statistics.stdev(d) if len(d) > 1 else 0.0
    return f"{statistics.mean(d):+.4f} ± {sd:.4f} ({sum(x > 0 for x in d)}/{len(d)})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/cpu-recipe"))
    p.add_argument(
        "--tag",
        default="",
        help="appended to the refined run's folder: a new run after a change in the app (the "
        "cached registrations in the work folder are cleared first)",
    )
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
        "--methods", nargs="+", default=list(METHODS), choices=METHODS, help="what to run"
    )
    p.add_argument("--reference-cohort", type=int, default=37)
    p.add_argument("--amplitude", type=float, default=5.0, help="largest velocity, mm")
    p.add_argument("--sigma", type=float, default=10.0, help="warp smoothness, mm")
    p.add_argument("--rotation", type=float, default=6.0, help="degrees, each axis")
    p.add_argument("--shift", type=float, default=6.0, help="mm, each axis")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lambda", dest="lam", type=float, default=DEFAULT_LAMBDA)
    p.add_argument("--refine-steps", type=int, default=DEFAULT_REFINE_STEPS)
    p.add_argument("--refine-draws", type=int, default=DEFAULT_REFINE_DRAWS)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--train-options", default="", help="extra train-level options (quoted)")
    p.add_argument(
        "--model-name", default="cpu-recipe", help="the bundle's name (another for other options)"
    )
    args = p.parse_args(argv)
    log("command: python " + shlex.join([sys.argv[0], *(argv or sys.argv[1:])]))

    work = args.work_dir.resolve()
    bids = work / "bids"
    train, test = write_dataset(args, bids)
    if args.register_index is not None:
        test = [t for t in test if int(t.split("s")[-1]) in args.register_index]
    reference = f"c{args.reference_cohort}s0"
    if reference not in train:
        sys.exit(f"error: the reference sub-{reference} is not a training subject")
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
        rc, seconds["train"] = app(HERE, argv_train)
        if rc:
            return rc
        log(f"  train level {seconds['train'] / 60:.1f} min ({len(train)} subjects)")
    variant = "" if args.lam == DEFAULT_LAMBDA else f"-lam{args.lam:g}"
    steps = "" if args.refine_steps == DEFAULT_REFINE_STEPS else f"-steps{args.refine_steps}"
    if args.refine_draws != DEFAULT_REFINE_DRAWS:
        steps += f"-draws{args.refine_draws}"
    methods = {
        "network": ["--model", str(bundle), "--lambda", f"{args.lam:g}", "--refine-steps", "0"],
        "refine": [
            "--model",
            str(bundle),
            "--lambda",
            f"{args.lam:g}",
            "--refine-steps",
            str(args.refine_steps),
            "--refine-draws",
            str(args.refine_draws),
        ],
        "ants": ["--registration", "ants"],
    }
    folders = {
        "network": f"out-{args.model_name}-network{variant}",
        "refine": f"out-{args.model_name}-refine{variant}{steps}{args.tag}",
        "ants": "out-ants",
    }
    results: dict[str, dict[str, dict]] = {}
    for name in args.methods:
        extra = methods[name]
        out = work / folders[name]
        done = {k.split("_")[0]: v for k, v in metrics(out).items()}
        if all(f"sub-{t}" in done for t in test):  # same settings: the run is done
            log(f"{name}: reusing {out}")
            results[name] = {t: done[t] for t in done if t[4:] in test}
            continue
        argv_p = [
            str(bids),
            str(out),
            "participant",
            *common,
            "--participant-label",
            *test,
            *extra,
        ]
        if args.tag and name == "refine":
            # Nipype caches a node by its inputs, not by the code it runs: a tagged rerun
            # after a change in the app must not reuse the registrations of an earlier run
            for t in test:
                shutil.rmtree(
                    work / "work" / f"sub_{t}_wf" / "registration_wf" / "register",
                    ignore_errors=True,
                )
        log(f"{name}: contrareg-bids " + shlex.join(argv_p))
        rc, seconds[name] = app(HERE, argv_p)
        if rc:
            log(f"  {name} exited {rc}: scoring the subjects that finished")
        results[name] = {k.split("_")[0]: v for k, v in metrics(out).items()}
        log(f"  {name}: {len(results[name])} subjects, {seconds[name]:.0f} s")

    subjects = sorted(set.intersection(*(set(r) for r in results.values())))
    if not subjects:
        log("no subject finished with every method")
        return 1
    first = next(iter(results.values()))
    affine = [float(first[s]["mean_dice_affine"]) for s in subjects]
    dice = {m: [float(results[m][s]["mean_dice"]) for s in subjects] for m in results}
    print(f"\n{len(subjects)} held-out subjects -> sub-{reference} (moving T2w, fixed T1w)")
    print(
        "| method | mean Dice | vs affine (subjects up) | vs ANTs SyN | folding % | std log|J| |"
    )
    print("|---|---|---|---|---|---|")
    print(f"| affine only | {statistics.mean(affine):.4f} | - | - | 0 | 0 |")
    for m in results:
        fold = statistics.mean(float(results[m][s]["folding_percent"]) for s in subjects)
        sdj = statistics.mean(float(results[m][s]["std_log_jacobian"]) for s in subjects)
        vs_ants = "-" if m == "ants" or "ants" not in dice else paired(dice[m], dice["ants"])
        print(
            f"| {m} | {statistics.mean(dice[m]):.4f} | {paired(dice[m], affine)} | "
            f"{vs_ants} | {fold:.3f} | {sdj:.3f} |"
        )
    print("wall seconds per stage: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
    (work / f"results-{args.model_name}{variant}{steps}{args.tag}.json").write_text(
        json.dumps(
            {
                "subjects": subjects,
                "affine": affine,
                "dice": dice,
                "seconds": seconds,
                "args": vars(args) | {"work_dir": str(work)},
            },
            indent=2,
            default=str,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
