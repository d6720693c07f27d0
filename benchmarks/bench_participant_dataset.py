"""Wall time of the participant level on a whole dataset: this checkout against another one.

Simulates the demo's BIDS dataset (``contrareg_bids.demo.write_bids_dataset``: ICBM-based
subjects at 3 mm with labels and masks), trains a small model once with the app's own
train level (``--sloppy``, a few steps: the timing does not depend on the weights), then
runs ``contrareg-bids ... participant`` on every subject with each code base in turn
(A B A B ..., fresh output and work folders each time) and prints the wall times, their
median, the ratios pair by pair and whether both wrote the same metrics.

    python benchmarks/bench_participant_dataset.py --baseline-src /tmp/base --nprocs 2

``--baseline-src`` is a checkout of the version to compare with, run from the same
environment (``PYTHONPATH``); without it only this checkout is timed.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from benchlib import REPO, app, command_line, log


def metrics(out: Path) -> dict[str, dict]:
    """Every subject's metrics row (without run-specific columns)."""
    rows = {}
    for tsv in sorted(out.glob("sub-*/anat/*_desc-registration_metrics.tsv")):
        with tsv.open() as fh:
            row = next(csv.DictReader(fh, delimiter="\t"))
        rows[tsv.name] = {k: v for k, v in row.items() if k not in ("run_time_s",)}
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/contrareg-dataset-bench"))
    p.add_argument("--subjects", type=int, default=8)
    p.add_argument("--nprocs", type=int, default=2)
    p.add_argument("--runs", type=int, default=2, help="timed runs of each code base")
    p.add_argument("--baseline-src", type=Path, default=None)
    p.add_argument("--registration", default="contrareg", choices=("contrareg", "ants"))
    args = p.parse_args(argv)
    print(f"# {command_line('bench_participant_dataset.py', argv)}")
    print(f"# {os.cpu_count()} CPUs, nprocs {args.nprocs}, {args.subjects} subjects")
    from contrareg_bids.demo import DEMO_REFERENCE, write_bids_dataset

    root = args.work_dir
    bids = root / "bids"
    ids = write_bids_dataset(bids, args.subjects, seed=0)
    labels = bids / "derivatives" / "labels"
    common = ["--reference", DEMO_REFERENCE, "--derivatives", f"labels={labels}", "--sloppy",
              "--nprocs", str(args.nprocs), "--registration", args.registration]  # fmt: skip
    model_dir = root / "model"
    model = next(iter(sorted((model_dir / "models").glob("*.safetensors"))), None)
    if args.registration == "contrareg" and model is None:
        log("training a small model once (train level, --sloppy)")
        rc, sec = app([str(bids), str(model_dir), "train", "-w", str(root / "work-train"),
                             *common, "--train-steps", "20", "--ae-steps", "20"])  # fmt: skip
        model = next(iter(sorted((model_dir / "models").glob("*.safetensors"))))
        log(f"  model {model.name} in {sec:.0f} s")
    if model is not None and args.registration == "contrareg":
        common += ["--model", str(model)]
    codes = {"this checkout": REPO}
    if args.baseline_src is not None:
        codes = {"baseline": args.baseline_src.resolve(), "this checkout": REPO}
    for name, src in codes.items():
        where = subprocess.run(
            [sys.executable, "-c", "import contrareg_bids; print(contrareg_bids.__file__)"],
            env={**os.environ, "PYTHONPATH": str(src)}, cwd="/", capture_output=True,
            text=True, check=True,
        ).stdout.strip()  # fmt: skip
        print(f"# {name}: {where}")
        if not where.startswith(str(src)):
            sys.exit(f"error: {name} would not run the code of {src}")
    times: dict[str, list[float]] = {k: [] for k in codes}
    outputs: dict[str, dict] = {}
    dice: dict[str, list[dict]] = {k: [] for k in codes}
    for run in range(args.runs):
        for name, src in codes.items():
            out, work = root / f"out-{name.split()[0]}", root / f"work-{name.split()[0]}"
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)
            rc, sec = app([str(bids), str(out), "participant", "-w", str(work), *common], src)
            times[name].append(sec)
            outputs[name] = metrics(out)
            dice[name].append({k: float(v["mean_dice"]) for k, v in outputs[name].items()})
            log(f"run {run + 1} {name}: {sec:.1f} s (exit {rc}, {len(outputs[name])} subjects)")
    print()
    print(
        f"Data: {len(ids)} simulated subjects (3 mm), reference {DEMO_REFERENCE}, "
        f"--registration {args.registration}, --nprocs {args.nprocs}, cold work folders."
    )
    print("| code | wall s (each run) | median |")
    print("|---|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {', '.join(f'{t:.1f}' for t in ts)} | {statistics.median(ts):.1f} |")
    for name, runs in dice.items():  # run-to-run spread of one code base (ANTs' affine)
        if len(runs) > 1:
            d = [abs(runs[0][k] - runs[1][k]) for k in runs[0]]
            spread = f"median {statistics.median(d):.4f}, max {max(d):.4f}"
            print(f"{name}: |mean Dice run 1 - run 2| per subject: {spread}")
    if len(codes) == 2:
        a, b = times["baseline"], times["this checkout"]
        ratios = [x / y for x, y in zip(a, b, strict=True)]
        pairs = ", ".join(f"{r:.2f}" for r in ratios)
        print(f"\nbaseline / this checkout, pair by pair: {pairs} "
              f"(median {statistics.median(ratios):.2f})")  # fmt: skip
        base, new = outputs["baseline"], outputs["this checkout"]
        same = set(base) == set(new) and all(
            base[k][c] == new[k].get(c) for k in base for c in base[k]
        )
        extra = sorted({c for k in new for c in new[k]} - {c for k in base for c in base[k]})
        print(f"same metrics in every subject's table (the baseline's columns): {same}"
              + (f"; columns new here: {', '.join(extra)}" if extra else ""))  # fmt: skip
        if not same:
            for key in base:
                x, y = base[key], new.get(key, {})
                diff = {k: (x[k], y.get(k)) for k in x if x[k] != y.get(k)}
                if diff:
                    print(f"  {key}: {diff}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
