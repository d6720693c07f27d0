"""Participant-level wall time per subject: ContraReg with and without test-time
refinement, against ANTs SyN, on the same subjects in one run.

Runs ``contrareg-bids BIDS OUT participant`` once per method and round (methods in turn,
A B C A B C ...), each with fresh output and work folders (so every run pays the same
preprocessing: N4, affine, masks, reports), and prints the wall time per subject, the
median over rounds, the ratio to ANTs SyN pair by pair, and the mean Dice each method
wrote. Made for the demo's dataset and model (``contrareg-bids-demo OUT`` first):

    python benchmarks/bench_participant_methods.py --demo-dir demo-out --rounds 2

The options of the participant runs are the demo's (``--reference sub-01``, its label
derivatives, one process) but without ``--sloppy`` unless asked: ANTs SyN then runs its
full-resolution iterations, the strong baseline, not the quick one. Another dataset and
model (e.g. ``bench_cpu_recipe.py``'s, at native resolution) with ``--bids-dir``,
``--model``, ``--reference`` and ``--labels``; ``--refine-steps`` and ``--refine-draws``
choose the refined rows (one per number of draws):

    python benchmarks/bench_participant_methods.py --bids-dir /tmp/cpurecipe/bids \
        --model /tmp/cpurecipe/out-train/models/cpu-recipe-6000.safetensors \
        --reference sub-c37s0 --labels /tmp/cpurecipe/bids/derivatives/labels \
        --subjects c31s0 c43s0 --refine-steps 100 --refine-draws 1 4 --rounds 1
"""

from __future__ import annotations

import argparse
import csv
import shutil
import statistics
import sys
from pathlib import Path

from benchlib import app, command_line, log, registration_options


def methods(refine_steps: int, draws: list[int]) -> dict[str, list[str]]:
    """Method name -> participant options: the network alone, refined (once per number of
    PatchNCE draws), ANTs SyN."""
    out = {"contrareg (lambda 0.8, no refinement)": registration_options(lam=0.8, refine_steps=0)}
    for d in draws:
        name = f"contrareg (lambda 0.8, refine {refine_steps}" + (
            f", {d} draws)" if d > 1 else ")"
        )
        out[name] = registration_options(
            lam=0.8, refine_steps=refine_steps, refine_draws=d if d > 1 else None
        )
    out["ants-syn"] = ["--registration", "ants"]
    return out


def mean_dice(out: Path) -> float:
    """Mean of the subjects' ``mean_dice`` in their metrics tables."""
    values = []
    for tsv in sorted(out.glob("sub-*/anat/*_desc-registration_metrics.tsv")):
        with tsv.open() as fh:
            values.append(float(next(csv.DictReader(fh, delimiter="\t"))["mean_dice"]))
    return statistics.fmean(values) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--demo-dir", type=Path, help="a contrareg-bids-demo output")
    src.add_argument("--bids-dir", type=Path, help="another BIDS dataset (with --model)")
    p.add_argument("--model", type=Path, help="the bundle (default: the demo's)")
    p.add_argument("--reference", default="sub-01")
    p.add_argument("--labels", type=Path, help="label derivatives (default: the demo's)")
    p.add_argument("--subjects", nargs="+", default=["07", "08"], help="the demo's held-out")
    p.add_argument("--refine-steps", type=int, default=30)
    p.add_argument("--refine-draws", type=int, nargs="+", default=[1])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="--omp-nthreads")
    p.add_argument("--scratch", type=Path, default=Path("/tmp/bench_participant_methods"))
    p.add_argument("--sloppy", action="store_true", help="the demo's quick settings (weak SyN)")
    a = p.parse_args(argv)
    print(f"# {command_line('bench_participant_methods.py', argv)}")
    bids = a.bids_dir or a.demo_dir / "bids"
    model = a.model
    if model is None:
        models = sorted((bids / "derivatives" / "contrareg-bids" / "models").glob("*.safetensors"))
        if not models:
            sys.exit(f"error: no model bundle under {bids}/derivatives/contrareg-bids/models")
        model = models[-1]
    labels = a.labels or bids / "derivatives" / "labels"
    common = [
        *(["--sloppy"] if a.sloppy else []), "--reference", a.reference, "--derivatives",
        f"labels={labels}", "--nprocs", "1",
        "--omp-nthreads", str(a.threads), "--model", str(model),
        "--participant-label", *a.subjects, "--skip-bids-validation",
    ]  # fmt: skip
    runs = methods(a.refine_steps, a.refine_draws)
    times: dict[str, list[float]] = {m: [] for m in runs}
    dice: dict[str, float] = {}
    for r in range(a.rounds):
        for method, opts in runs.items():
            out, work = a.scratch / "out", a.scratch / "work"
            shutil.rmtree(a.scratch, ignore_errors=True)
            rc, seconds = app([str(bids), str(out), "participant", "-w", str(work), *common,
                               *opts])  # fmt: skip
            if rc != 0:
                sys.exit(f"error: {method}: exit {rc} (its stderr is above)")
            times[method].append(seconds / len(a.subjects))
            dice[method] = mean_dice(out)
            log(f"round {r + 1} {method}: {seconds:.1f} s ({seconds / len(a.subjects):.1f} "
                f"s / subject), mean Dice {dice[method]:.4f}")  # fmt: skip
    ants = times["ants-syn"]
    print("\n| method | s / subject (rounds) | median | ratio to ANTs SyN (pairs) | mean Dice |")
    print("|---|---|---|---|---|")
    for method, ts in times.items():
        ratios = ", ".join(f"{t / b:.2f}" for t, b in zip(ts, ants, strict=True))
        print(f"| {method} | {', '.join(f'{t:.1f}' for t in ts)} | {statistics.median(ts):.1f} "
              f"| {ratios} | {dice[method]:.4f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
