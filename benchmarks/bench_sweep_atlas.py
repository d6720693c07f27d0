"""Lambda sweep (paper's Fig. 3 and Table 1) on held-out cohort pairs of the development atlas.

Uses the preprocessing, affine pre-alignment and training helpers of
``bench_train_atlas.py`` (same cache under ``--work-dir``), then
:func:`contrareg_bids.evaluation.run_sweep` on every ordered pair of the held-out cohorts
(moving T2w of cohort A -> fixed T1w of cohort B) at the paper's 17 lambdas, with ANTs SyN
rows when ``--ants`` is given. Dice is the mean over the tissues {1,2,3,5,6,7,8}.

Train the methods here (any ``bench_train_atlas.py`` option is accepted and passed on), or
evaluate bundles trained elsewhere (``--bundles``; they must have been trained on the same
preprocessed grid, i.e. the same ``--factor`` and affine reference)::

    TEMPLATEFLOW_HOME=../shared/templateflow python benchmarks/bench_sweep_atlas.py \\
        --methods mcr cr mi localmi mind ngf --steps 20000 --ants --device cuda
    python benchmarks/bench_sweep_atlas.py --bundles runs/mcr/model.safetensors \\
        runs/mi/model.safetensors --names mCR MI --ants

The atlas is for academic use only: outputs (tables, plots, bundles) go under the work
directory (default ``/tmp/contrareg-atlas-bench/sweep``), never into the repository.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import bench_train_atlas as bta
from benchlib import REPO, command_line, log, write_docs

HEADING = "## Lambda sweep on the development atlas"


def parse_args(argv=None) -> tuple[argparse.Namespace, argparse.Namespace]:
    p = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        epilog="Other options are those of bench_train_atlas.py (training, data, cache).",
    )
    p.add_argument("--bundles", type=Path, nargs="+", help="evaluate these (no training)")
    p.add_argument("--names", nargs="+", help="method names, one per bundle / method")
    p.add_argument("--ants", action="store_true", help="add ANTs SyN rows")
    p.add_argument("--device", default="auto", help="inference device: auto, cpu, cuda")
    p.add_argument("--out", type=Path, help="results folder (default WORK_DIR/sweep)")
    p.add_argument("--write-docs", type=Path, help="update this markdown file")
    args, rest = p.parse_known_args(argv)
    targs = bta.parse_args(rest)
    out = (args.out or Path(targs.work_dir) / "sweep").resolve()
    if out == REPO or REPO in out.parents:
        p.error(f"--out {out} is inside the repository: the atlas terms forbid that")
    args.out = out
    return args, targs


def main(argv=None) -> int:
    args, targs = parse_args(argv)
    root = Path(targs.templateflow_home)
    if not bta.atlas_file(root, bta.COHORTS[0], "T1w").exists():
        print(f"error: the development atlas is not under {root}", file=sys.stderr)
        return 2
    import torch

    from contrareg_bids.evaluation import LabelledPair, run_sweep

    if targs.threads > 0:
        torch.set_num_threads(targs.threads)
    t0 = time.perf_counter()
    command = command_line("bench_sweep_atlas.py", argv, env=("TEMPLATEFLOW_HOME",))
    print(f"# {command}")
    work = Path(targs.work_dir)
    pre_dir = work / f"preproc_f{targs.factor}"
    aff_dir = work / f"affine_f{targs.factor}_ref{targs.reference}{targs.affine_modality}"
    pre = {c: bta.preprocess_cohort(root, c, targs.factor, pre_dir) for c in bta.COHORTS}
    aligned = bta.affine_align(pre, targs.reference, targs.affine_modality, aff_dir)
    held = sorted(targs.held_out)
    train_ids = [c for c in bta.COHORTS if c not in held]
    if args.bundles:
        bundles = list(args.bundles)
    else:
        runs = work / "runs"
        bundles = [bta.train_method(targs, m, aligned, train_ids, runs)[0] for m in targs.methods]
    names = args.names
    if names is None and not args.bundles:
        names = [bta.METHOD_NAMES.get(m, m) for m in targs.methods]
    pairs = [
        LabelledPair(
            aligned[a]["T2w"],
            aligned[b]["T1w"],
            aligned[a]["labels"],
            aligned[b]["labels"],
            aligned[b]["mask"],
            name=f"cohort{a}_to_cohort{b}",
        )
        for a in held
        for b in held
        if a != b
    ]
    log(f"sweep: {len(bundles)} bundle(s) x 17 lambdas x {len(pairs)} pairs -> {args.out}")
    res = run_sweep(
        bundles, pairs, args.out, names=names, ants=args.ants, device=args.device,
        labels=bta.TISSUES, seed=targs.seed, progress=targs.progress,
    )  # fmt: skip
    md = res.files["best_md"].read_text()
    minutes = (time.perf_counter() - t0) / 60
    section = (
        f"{HEADING}\n\nCommand: `{command}`\n\n{len(pairs)} ordered held-out pairs (cohorts "
        f"{', '.join(map(str, held))}), grid factor {targs.factor}, Dice over tissues "
        f"{bta.TISSUES}; curves: `{args.out}/sweep.svg`. Wall time {minutes:.1f} min.\n\n{md}"
    )
    print("\n" + section)
    print(f"results: {args.out}")
    if args.write_docs:
        write_docs(args.write_docs, HEADING, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
