"""``contrareg-eval``: lambda sweep of trained bundles (and ANTs SyN) on labelled pairs.

    contrareg-eval --model runs/mcr/model.safetensors runs/mi/model.safetensors \\
        --pairs pairs.tsv --out eval/ --ants

``pairs.tsv`` has the columns ``moving``, ``fixed``, ``moving_labels``, ``fixed_labels`` and
optionally ``fixed_mask`` and ``pair``: NIfTI files on the model grid (preprocessed like the
training data), paths relative to the TSV. Writes ``sweep.tsv``, ``summary.tsv``,
``best_lambda.tsv``/``.md``, ``sweep.json`` and the plots into ``--out``
(docs/evaluation.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import __version__
from ..evaluation.sweep import FOLD_LIMIT, PAPER_LAMBDAS, SYN_ITERATIONS
from .logs import setup_logging


def _unit_float(value: str) -> float:
    try:
        v = float(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from err
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"lambda must be in [0, 1], got {v}")
    return v


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="contrareg-eval",
        description="Evaluate ContraReg bundles over a lambda sweep (Dice, Dice30, % folding, "
        "std log|J|), with plots and the best-lambda table; optionally ANTs SyN too.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"contrareg-bids {__version__}")
    p.add_argument(
        "--model",
        type=Path,
        nargs="*",
        default=[],
        metavar="BUNDLE",
        help="model bundles (.safetensors), one method each",
    )
    p.add_argument(
        "--names",
        nargs="+",
        metavar="NAME",
        help="method names, one per --model (default: each bundle's loss)",
    )
    p.add_argument("--pairs", type=Path, required=True, help="TSV of labelled pairs")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--lambdas",
        type=_unit_float,
        nargs="+",
        default=list(PAPER_LAMBDAS),
        metavar="L",
        help="lambda values (default: the paper's 17)",
    )
    p.add_argument("--ants", action="store_true", help="add ANTs SyN (Mattes MI) rows")
    p.add_argument(
        "--ants-iterations",
        type=int,
        nargs="+",
        default=list(SYN_ITERATIONS),
        metavar="N",
        help="SyN iterations per level",
    )
    p.add_argument(
        "--labels",
        type=int,
        nargs="+",
        metavar="L",
        help="labels Dice averages over (default: the fixed map's)",
    )
    p.add_argument(
        "--fold-limit",
        type=float,
        default=FOLD_LIMIT,
        metavar="PCT",
        help="folding limit (%%) of the best-lambda table",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1")
    p.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="mixed precision U-Net (--no-amp: off)",
    )
    p.add_argument(
        "--seed", "--random-seed", dest="seed", type=int, default=0, help="ANTs random seed"
    )
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = get_parser()
    args = parser.parse_args(argv)
    if not args.model and not args.ants:
        parser.error("give at least one --model, or --ants")
    if args.names is not None and len(args.names) != len(args.model):
        parser.error(f"--names needs one name per --model ({len(args.model)})")
    if not args.pairs.is_file():
        parser.error(f"--pairs {args.pairs} does not exist")
    for m in args.model:
        if not m.is_file():
            parser.error(f"--model {m} does not exist")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(fmt="%(message)s")  # -q hides the progress bar only
    from ..evaluation.sweep import read_pairs_tsv, run_sweep
    from ..io.bundle import BundleError

    try:
        pairs = read_pairs_tsv(args.pairs)
        result = run_sweep(
            args.model,
            pairs,
            args.out,
            lambdas=args.lambdas,
            names=args.names,
            ants=args.ants,
            ants_iterations=args.ants_iterations,
            device=args.device,
            labels=args.labels,
            fold_limit=args.fold_limit,
            seed=args.seed,
            amp=args.amp,
            progress=not args.quiet,
            plots=not args.no_plots,
        )
    except (BundleError, ValueError, FileNotFoundError) as err:
        print(f"contrareg-eval: error: {err}", file=sys.stderr)
        return 1
    print(result.files["best_md"].read_text())
    print(f"results in {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
