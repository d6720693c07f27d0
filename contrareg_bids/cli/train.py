"""``contrareg-train``: train ContraReg from lists of preprocessed volumes (no BIDS needed).

    contrareg-train --moving-list t2w.txt --fixed-list t1w.txt --out runs/mcr
    torchrun --nproc_per_node 4 -m contrareg_bids.cli.train --moving-list ... --out ...

A list is a text file with one NIfTI path per line, or a TSV with a header naming ``image``
(required), ``mask``, ``labels``, ``subject`` and ``session`` columns. Running the same
command again resumes from the checkpoints in ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import __version__
from ..training.config import TRAIN_PRESETS, TrainConfig, option_changes
from ..training.options import TRAIN_OPTION_FIELDS, TRAINER, add_training_options
from .logs import setup_logging


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="contrareg-train",
        description="Train a ContraReg model (autoencoders + lambda-conditioned registration "
        "network) on lists of preprocessed volumes on one grid.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"contrareg-bids {__version__}")
    io = p.add_argument_group("inputs and outputs")
    io.add_argument(
        "--moving-list", type=Path, required=True, help="volumes of the moving modality"
    )
    io.add_argument("--fixed-list", type=Path, help="volumes of the fixed modality")
    io.add_argument(
        "--template", type=Path, help="one fixed image for every pair (instead of --fixed-list)"
    )
    io.add_argument("--template-mask", type=Path, help="brain mask of --template")
    io.add_argument(
        "--out", type=Path, required=True, help="output folder (checkpoints, logs, bundle)"
    )
    io.add_argument("--moving-modality", default="T2w")
    io.add_argument("--fixed-modality", default="T1w")
    io.add_argument("--config", type=Path, help="TOML or JSON training configuration")
    io.add_argument("--sloppy", action="store_true", help="small, fast CPU preset (demos, tests)")
    t = p.add_argument_group("training (override the configuration file)")
    add_training_options(t, TRAINER)  # declared once, with the BIDS-App's train level
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def build_config(args: argparse.Namespace) -> TrainConfig:
    """Configuration file (or preset), then the command-line overrides."""
    cfg = (
        TrainConfig.from_file(args.config)
        if args.config
        else TRAIN_PRESETS[args.train_preset or ("sloppy" if args.sloppy else "paper")]()
    )
    options = {k: v for k, v in vars(args).items() if k in TRAIN_OPTION_FIELDS}
    # --compile and --tensorboard only switch on; of --amp/--no-amp only --no-amp overrides
    # the configuration (as it always has)
    for flag in ("compile", "tensorboard"):
        options[flag] = options.get(flag) or None
    if options.get("amp") is not False:
        options["amp"] = None
    changes = option_changes(options)
    return cfg.updated(**changes) if changes else cfg


def main(argv: list[str] | None = None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    setup_logging()  # -q hides the progress bar only: the log says what resumed and where
    from ..training.data import VolumeRecord
    from ..training.pipeline import read_record_list, train

    if (args.fixed_list is None) == (args.template is None):
        parser.error("give exactly one of --fixed-list and --template")
    try:
        cfg = build_config(args)
        moving = read_record_list(args.moving_list)
        fixed = read_record_list(args.fixed_list) if args.fixed_list else None
        template = None
        if args.template:
            if not args.template.exists():
                raise ValueError(f"--template {args.template} does not exist")
            template = VolumeRecord(
                image=args.template, subject="template", mask=args.template_mask
            )
        out = train(
            moving,
            fixed,
            cfg,
            args.out,
            template=template,
            modalities=(args.moving_modality, args.fixed_modality),
            progress=not args.quiet,
        )
    except ValueError as err:
        print(f"contrareg-train: error: {err}", file=sys.stderr)
        return 2
    if out is not None:
        print(f"model bundle: {out.bundle}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
