"""Accuracy on the development atlas: trained bundles (with and without test-time
refinement) against affine-only, ANTs SyN and ConvexAdam, on two test sets.

- ``atlas``: the held-out cohorts' ordered pairs (moving T2w of cohort A -> fixed T1w of
  cohort B), affine-aligned, as in ``bench_train_atlas.py`` (whose cached preprocessing
  under ``--work-dir`` this script reads: run that one first).
- ``pseudo``: pseudo-subjects made from the same held-out cohorts
  (:func:`contrareg_bids.simulate.simulate_subject`: a random smooth diffeomorphism applied to
  T1w, T2w, mask and labels together, then per-modality gamma, smooth bias field and noise),
  one per cohort and ``--pseudo`` seed, paired the same way. The atlas cohorts are smooth
  averages with little left to gain over affine; these pairs have known, realistic
  deformations to recover.

Every method runs on the same pairs in one process, so times are comparable (quoted as
ratios to ANTs SyN). Dice: mean over tissues {1,2,3,5,6,7,8} per pair; folding and
std log|J| inside the fixed brain mask (the package's scorer,
:func:`contrareg_bids.evaluation.sweep.evaluate_pair`). Best row: best mean Dice among
lambdas with < 0.5 % folding. Differences are paired
(:func:`contrareg_bids.evaluation.stats.paired_difference`: mean ± SD with ddof 1 over pairs,
how many pairs improve, Wilcoxon p; before this script used the package's statistics its SD
had ddof 0, as in the tables of docs/benchmarks.md, which are about 4 % smaller on 12 pairs).

    python benchmarks/bench_accuracy_atlas.py --bundles /tmp/atlas/runs/<run>/model.safetensors
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_train_atlas import TISSUES
from benchlib import command_line, load_volumes, log, paired_difference, register, score_arrays

FOLD_LIMIT = 0.5


def pair_sets(args) -> dict[str, list[tuple[str, dict, dict]]]:
    """``{"atlas": [(name, moving, fixed), ...], "pseudo": [...]}`` (arrays by key)."""
    from contrareg_bids.simulate import simulate_subject

    aff_dir = (
        Path(args.work_dir) / f"affine_f{args.factor}_ref{args.reference}{args.affine_modality}"
    )
    data = {}
    for c in args.held_out:
        paths = {k: aff_dir / f"cohort-{c}_{k}.nii.gz" for k in ("T1w", "T2w", "mask", "labels")}
        if not all(p.exists() for p in paths.values()):
            sys.exit(
                f"error: {paths['T1w']} is missing: run benchmarks/bench_train_atlas.py first"
            )
        data[c] = load_volumes(paths)
    pairs = [(a, b) for a in args.held_out for b in args.held_out if a != b]
    sets = {"atlas": [(f"{a}->{b}", data[a], data[b]) for a, b in pairs]}
    pseudo = {}
    for c in args.held_out:
        base = {
            "t1w": data[c]["T1w"].astype(np.float32),
            "t2w": data[c]["T2w"].astype(np.float32),
            "mask": data[c]["mask"].astype(np.float32),
            "labels": data[c]["labels"].astype(np.int64),
        }
        for k in range(args.pseudo):
            rng = np.random.default_rng([args.seed, c, k])
            s = simulate_subject(base, rng, amplitude=args.pseudo_amplitude)
            pseudo[(c, k)] = {"T1w": s["t1w"], "T2w": s["t2w"], "mask": s["mask"],
                              "labels": s["labels"]}  # fmt: skip
    keys = sorted(pseudo)
    sets["pseudo"] = [
        (f"{a[0]}.{a[1]}->{b[0]}.{b[1]}", pseudo[a], pseudo[b])
        for a in keys
        for b in keys
        if a[0] != b[0] and a[1] == b[1]
    ]
    return sets


def run_set(args, pairs, bundles, affine_arr) -> dict:
    """``rows[(method, lambda)] -> list of per-pair dicts`` (Dice, folding, sdlogj, time)."""
    import torch

    from contrareg_bids.evaluation.peers import ConvexAdamSettings, convexadam_forward_field
    from contrareg_bids.evaluation.sweep import ants_forward_field
    from contrareg_bids.training.objective import objective_from_bundle

    rows: dict[tuple[str, float | None], list[dict]] = {}

    def add(key, mov, fix, disp, seconds):
        r = score_arrays(mov, fix, disp, TISSUES)
        r["time_s"] = seconds
        rows.setdefault(key, []).append(r)

    objectives = {name: objective_from_bundle(b) for name, b in bundles.items()}
    for i, (pname, mov, fix) in enumerate(pairs):
        zero = np.zeros((3, *fix["T1w"].shape), np.float32)
        add(("affine only", None), mov, fix, zero, 0.0)
        for name, b in bundles.items():
            for lam in args.lambdas:
                t0 = time.perf_counter()
                out = register(b.regnet, mov["T2w"], fix["T1w"], lam=lam)
                add((name, lam), mov, fix, out.forward_disp, time.perf_counter() - t0)
            refine = (
                args.refine_steps if (not args.refine_names or name in args.refine_names) else []
            )
            for steps in refine:
                for lam in args.refine_lambdas:
                    t0 = time.perf_counter()
                    out = register(
                        b.regnet, mov["T2w"], fix["T1w"], lam=lam,
                        refine={"steps": steps, "lr": args.refine_lr, "seed": i},
                        objective=objectives[name], moving_mask=mov["mask"],
                        fixed_mask=fix["mask"],
                    )  # fmt: skip
                    key = (f"{name} + refine {steps}", lam)
                    add(key, mov, fix, out.forward_disp, time.perf_counter() - t0)
        if args.ants:
            with tempfile.TemporaryDirectory() as tmp:
                torch.set_num_threads(torch.get_num_threads())
                disp, sec = ants_forward_field(
                    mov["T2w"], fix["T1w"], affine_arr, Path(tmp), seed=1
                )
            add(("ANTs SyN (100,70,50)", None), mov, fix, disp, sec)
        if args.convexadam:
            for label, settings in convexadam_variants(args, ConvexAdamSettings):
                disp, sec = convexadam_forward_field(mov["T2w"], fix["T1w"], settings)
                add((label, None), mov, fix, disp, sec)
        log(f"  pair {i + 1}/{len(pairs)} {pname} done")
    return rows


def convexadam_variants(args, cls):
    out = [("ConvexAdam (defaults)", cls())]
    if args.convexadam_grid_sp is not None:
        out.append(
            (
                f"ConvexAdam (grid_sp {args.convexadam_grid_sp})",
                cls(grid_sp=args.convexadam_grid_sp),
            )
        )
    return out


def summarise(rows: dict) -> list[dict]:
    base = [r["dice"] for r in rows[("affine only", None)]]
    out = []
    for (method, lam), rs in rows.items():
        dice = [r["dice"] for r in rs]
        gain = paired_difference(dice, base)
        out.append(
            {
                "method": method,
                "lambda": lam,
                "dice": float(np.mean(dice)),
                "dice_sd": float(np.std(dice)),  # across pairs, as the package's summary
                "gain": gain.mean,
                "gain_sd": gain.sd,
                "gain_p": gain.p,
                "above": gain.better,
                "n": gain.n,
                "fold": float(np.mean([r["folding_percent"] for r in rs])),
                "sdlogj": float(np.mean([r["std_log_jacobian"] for r in rs])),
                "time_s": float(statistics.median(r["time_s"] for r in rs)),
                "pair_dice": dice,
            }
        )
    return out


def best_rows(summary: list[dict]) -> list[dict]:
    best: dict[str, dict] = {}
    for r in summary:
        if r["fold"] >= FOLD_LIMIT:
            continue
        if r["method"] not in best or r["dice"] > best[r["method"]]["dice"]:
            best[r["method"]] = r
    return sorted(best.values(), key=lambda r: -r["dice"])


def _p(p: float) -> str:
    return "n/a" if np.isnan(p) else f"{p:.3g}"


def table(summary: list[dict], ants_time: float | None, title: str) -> str:
    lines = [f"### {title}", "",
             "| method | lambda | Dice | vs affine (paired SD, pairs up, p) | % folds "
             "| std log|J| | s / pair | time / ANTs |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in summary:
        lam = "-" if r["lambda"] is None else f"{r['lambda']:g}"
        ratio = f"{r['time_s'] / ants_time:.2f}" if ants_time and r["time_s"] else "-"
        lines.append(
            f"| {r['method']} | {lam} | {r['dice']:.4f} ± {r['dice_sd']:.4f} | "
            f"{r['gain']:+.4f} ± {r['gain_sd']:.4f} ({r['above']}/{r['n']}, "
            f"p {_p(r['gain_p'])}) | {r['fold']:.3f} | "
            f"{r['sdlogj']:.3f} | {r['time_s']:.2f} | {ratio} |"
        )
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work-dir", default="/tmp/contrareg-atlas-bench")
    p.add_argument("--factor", type=int, default=3)
    p.add_argument("--reference", type=int, default=36)
    p.add_argument("--affine-modality", default="T2w")
    p.add_argument("--held-out", type=int, nargs="+", default=[31, 35, 39, 43])
    p.add_argument("--bundles", type=Path, nargs="*", default=[])
    p.add_argument("--names", nargs="*", default=None, help="one per bundle (default: loss)")
    p.add_argument(
        "--lambdas", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0]
    )
    p.add_argument("--refine-steps", type=int, nargs="*", default=[])
    p.add_argument("--refine-lambdas", type=float, nargs="+", default=[0.1, 0.3])
    p.add_argument("--refine-lr", type=float, default=0.05)
    p.add_argument("--refine-names", nargs="*", default=None,
                   help="refine only these bundles (by --names; default: all)")  # fmt: skip
    p.add_argument("--pseudo", type=int, default=1, help="pseudo-subjects per held-out cohort")
    p.add_argument("--pseudo-amplitude", type=float, default=2.0, help="max velocity (voxels)")
    p.add_argument("--sets", nargs="+", default=["atlas", "pseudo"])
    p.add_argument("--no-ants", dest="ants", action="store_false")
    p.add_argument("--no-convexadam", dest="convexadam", action="store_false")
    p.add_argument("--convexadam-grid-sp", type=int, default=None,
                   help="also run ConvexAdam at this control spacing (voxels; at 3 it matched "
                        "its default 6 on this benchmark to 0.0004 Dice); its default 6 "
                        "is meant for ~1-2 mm grids")  # fmt: skip
    p.add_argument("--max-pairs", type=int, default=None, help="only the first N pairs of a set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="results JSON")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", str(args.threads))
    from contrareg_bids.io.bundle import load_model

    print(f"# {command_line('bench_accuracy_atlas.py', argv)}")
    names = args.names or [None] * len(args.bundles)
    bundles = {}
    for path, name in zip(args.bundles, names, strict=True):
        b = load_model(path)
        bundles[name or b.metadata.loss] = b
    sets = pair_sets(args)
    ref = Path(args.work_dir) / f"affine_f{args.factor}_ref{args.reference}{args.affine_modality}"
    import nibabel as nib

    affine = nib.load(ref / f"cohort-{args.held_out[0]}_T1w.nii.gz").affine
    results = {}
    for set_name in args.sets:
        pairs = sets[set_name][: args.max_pairs]
        log(f"{set_name}: {len(pairs)} pairs")
        rows = run_set(args, pairs, bundles, affine)
        summary = summarise(rows)
        ants = next((r["time_s"] for r in summary if r["method"].startswith("ANTs")), None)
        results[set_name] = summary
        print()
        print(table(summary, ants, f"{set_name}: every row"))
        print()
        print(table(best_rows(summary), ants, f"{set_name}: best lambda with < 0.5 % folds"))
        sys.stdout.flush()
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "args": vars(args)
                    | {"bundles": [str(b) for b in args.bundles], "out": str(args.out)},
                    "results": results,
                },
                indent=1,
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
