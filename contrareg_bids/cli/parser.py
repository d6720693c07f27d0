"""Command line of the BIDS-App: ``contrareg-bids BIDS_DIR OUTPUT_DIR LEVEL [options]``."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from .. import __version__
from ..argtypes import non_negative_float, non_negative_int, positive_float, positive_int
from ..settings import DEFAULT_SETTINGS, METHODS
from ..training.options import LEVEL, add_training_options

LEVELS = ("participant", "group", "train")


def _label(value: str) -> str:
    """``sub-01`` or ``01`` -> ``01`` (BIDS labels are alphanumeric)."""
    label = value.removeprefix("sub-").removeprefix("ses-")
    if not re.fullmatch(r"[A-Za-z0-9]+", label):
        raise argparse.ArgumentTypeError(f"{value!r} is not a BIDS label (letters and digits)")
    return label


def _desc(value: str) -> str:
    """``desc-aseg`` or ``aseg`` -> ``aseg``."""
    label = value.removeprefix("desc-")
    if not re.fullmatch(r"[A-Za-z0-9]+", label):
        raise argparse.ArgumentTypeError(f"{value!r} is not a BIDS desc label (letters, digits)")
    return label


def _derivative(value: str) -> tuple[str, Path]:
    """``NAME=PATH``, or a ``PATH`` alone (as fMRIPrep takes it), named by its folder."""
    name, sep, path = value.partition("=")
    if not sep:
        path = value.rstrip("/") or value
        name = Path(path).name or "derivatives"
    if not name or not path:
        raise argparse.ArgumentTypeError(f"--derivatives takes PATH or NAME=PATH, got {value!r}")
    return name, Path(path)


def _filter_file(value: str) -> dict:
    path = Path(value)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise argparse.ArgumentTypeError(f"cannot read BIDS filter file {path}: {err}") from err
    if not isinstance(data, dict):
        raise argparse.ArgumentTypeError(f"{path} must hold a JSON object keyed by modality")
    return data


def _lambda(value: str) -> float | str:
    if value.strip().lower() == "auto":
        return "auto"
    try:
        lam = float(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"--lambda takes a number in [0, 1] or 'auto', got {value!r}"
        ) from err
    if not 0.0 <= lam <= 1.0:
        raise argparse.ArgumentTypeError(f"--lambda must be in [0, 1], got {lam}")
    return lam


def _percent(value: str) -> float:
    try:
        pct = float(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"--max-folding takes a percentage, got {value!r}"
        ) from err
    if not 0.0 <= pct <= 100.0:
        raise argparse.ArgumentTypeError(f"--max-folding must be in [0, 100] (%), got {pct}")
    return pct


#: GB per unit (binary, as SLURM's --mem: 14400M is 14400/1024 GB)
_MEMORY_UNITS_GB = {"K": 1.0 / 1024**2, "M": 1.0 / 1024, "G": 1.0, "T": 1024.0}


def _memory(value: str, bare_unit: str) -> float:
    """A memory size in GB from ``16000``, ``16000MB``, ``16G``, ``16GB``, ``1T``; a bare
    number is in ``bare_unit`` (MB for ``--mem``, as fMRIPrep reads it)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KkMmGgTt]?)[Bb]?\s*", value)
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(
            f"expected a memory size such as 16000 (MB), 16000MB or 16GB, got {value!r}"
        )
    return float(m.group(1)) * _MEMORY_UNITS_GB[m.group(2).upper() or bare_unit]


def _memory_mb(value: str) -> float:
    return _memory(value, "M")


def _memory_gb(value: str) -> float:
    return _memory(value, "G")


class HelpFormatter(argparse.HelpFormatter):
    """Each option's default shown once: appended when its help does not state it already,
    never for options without a default (None, False, empty)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text.lower()
            or default in (None, False, argparse.SUPPRESS)
            or default == []
            or action.option_strings == []
        ):
            return text
        return f"{text} (default: %(default)s)".strip()


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="contrareg-bids",
        description="ContraReg multi-modality (T1w <-> T2w) registration of neonatal brain "
        "MRI, as a BIDS-App.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("bids_dir", type=Path, help="the root of the input BIDS dataset")
    p.add_argument("output_dir", type=Path, help="where derivatives and reports are written")
    p.add_argument("analysis_level", help=f"one of: {', '.join(LEVELS)}")
    p.add_argument("--version", action="version", version=f"contrareg-bids {__version__}")

    g = p.add_argument_group("selecting data")
    g.add_argument(
        "--participant-label",
        "--participant_label",
        nargs="+",
        type=_label,
        metavar="LABEL",
        help="participants to process (with or without 'sub-')",
    )
    g.add_argument(
        "--session-label",
        "--session-id",
        nargs="+",
        type=_label,
        metavar="LABEL",
        help="sessions to process (with or without 'ses-'); --session-id as in nibabies",
    )
    g.add_argument(
        "--bids-filter-file",
        type=_filter_file,
        metavar="FILE",
        help="JSON of per-modality BIDS entity filters (T1w, T2w)",
    )
    g.add_argument(
        "--derivatives",
        nargs="+",
        type=_derivative,
        metavar="[NAME=]PATH",
        default=[],
        help="precomputed derivatives (brain masks, label maps); a PATH without a NAME is "
        "named by its folder",
    )
    g.add_argument(
        "--labels-desc",
        type=_desc,
        metavar="DESC",
        help="score the subject label map *_desc-DESC_dseg from --derivatives (default: the "
        "one whose desc is the reference's, else the only one). Dice is computed only where "
        "the two label tables (dseg.tsv) share names, or both maps have the same desc",
    )
    g.add_argument(
        "--skip-bids-validation",
        action="store_true",
        help="do not run the BIDS validator (bids-validator-deno) before the run",
    )
    g.add_argument(
        "--bids-database-dir",
        type=Path,
        metavar="DIR",
        help="pybids index to reuse across runs and jobs (made there when absent)",
    )

    g = p.add_argument_group("preprocessing")
    g.add_argument(
        "--skull-strip",
        choices=("auto", "force", "skip"),
        default="auto",
        help="brain extraction of the moving image (as nibabies' --skull-strip-t1w): auto "
        "extracts the brain of scans that are not already a brain in a background of zeros, "
        "force always, skip never; a brain mask given with --derivatives takes precedence. "
        "The reference template's brain mask is carried onto the head by ANTs (affine, then "
        "a short SyN): about 45 s per subject at 1 mm on 2 cores (simulated heads)",
    )
    g = p.add_argument_group("registration")
    g.add_argument(
        "--registration",
        choices=METHODS,
        default=DEFAULT_SETTINGS.method,
        help="the trained ContraReg model, or ANTs SyN (Mattes MI, iterations 100x70x50)",
    )
    g.add_argument(
        "--model",
        type=Path,
        metavar="PATH",
        help="model bundle (.safetensors); default: newest in OUTPUT_DIR/models",
    )
    g.add_argument(
        "--reference",
        default="dhcpVol",
        metavar="SPEC",
        help="TEMPLATE[:cohort-N] (cohort from age when omitted), sub-XX, or a path",
    )
    ages = g.add_mutually_exclusive_group()
    ages.add_argument(
        "--pma",
        type=positive_float,
        metavar="WEEKS",
        help="post-menstrual age at scan of every subject-session, instead of the BIDS tables "
        "(picks the template cohort)",
    )
    ages.add_argument(
        "--age-months",
        type=non_negative_float,
        metavar="MONTHS",
        help="postnatal age of every subject-session, as nibabies' option (a term birth, 40 "
        "weeks PMA, is assumed)",
    )
    g.add_argument(
        "--moving-modality",
        choices=("T1w", "T2w"),
        default="T2w",
        help="the subject's image that is registered",
    )
    g.add_argument(
        "--fixed-modality",
        choices=("T1w", "T2w"),
        default="T1w",
        help="the reference's image it is registered to",
    )
    g.add_argument(
        "--lambda",
        dest="lam",
        type=_lambda,
        default=DEFAULT_SETTINGS.lam,
        metavar="L",
        help="regularisation weight of the lambda-conditioned model, or 'auto': per subject, "
        "the smallest lambda whose warps fold at most --max-folding %% of voxels (default: "
        "%(default)s)",
    )
    g.add_argument(
        "--max-folding",
        type=_percent,
        default=None,
        metavar="PCT",
        help="folding budget of --lambda auto, %% voxels of each warp (default: "
        f"{DEFAULT_SETTINGS.max_folding:g})",
    )
    g.add_argument(
        "--refine-steps",
        type=non_negative_int,
        default=DEFAULT_SETTINGS.refine.steps,
        metavar="N",
        help="after the network, optimise each subject's warp for N steps with the model's "
        "own similarity and regulariser at the chosen lambda (test-time refinement, "
        "learning rate annealed; on a model grid coarser than the reference each step "
        "samples the native images at a random sub-voxel offset; 0 = off; "
        "default: %(default)s)",
    )
    g.add_argument(
        "--refine-draws",
        type=positive_int,
        default=DEFAULT_SETTINGS.refine.draws,
        metavar="N",
        help="PatchNCE location samples averaged in each refinement step of a CR/mCR model "
        "(a less noisy gradient for about 15%% more time per extra draw; 4 draws gained about "
        "+0.005 Dice over 1 on atlas-derived pseudo-subjects; default: %(default)s)",
    )
    g.add_argument(
        "--fine-steps",
        type=non_negative_int,
        default=DEFAULT_SETTINGS.fine.steps,
        metavar="N",
        help="after the network and the refinement, optimise each subject's warp for N more "
        "steps at the reference's resolution with a local modality-independent similarity "
        "(MIND-SSC descriptors, both directions; the last quarter of the steps compares them "
        "at that resolution, the others on a control grid of 2 voxels) and a diffusion "
        "penalty: the recipe measured best on real neonates, with --lambda 0.8 (0 = off; "
        "default: %(default)s)",
    )
    g.add_argument(
        "--random-seed",
        "--seed",
        type=int,
        default=0,
        metavar="N",
        help="seed of the preprocessing, the training and ANTs",
    )

    g = p.add_argument_group("resources")
    g.add_argument(
        "-w",
        "--work-dir",
        type=Path,
        metavar="DIR",
        help="intermediate results, reused when a run is repeated (default: ./work)",
    )
    g.add_argument(
        "--nprocs",
        "--nthreads",
        "--n-cpus",
        "--n_cpus",
        type=int,
        metavar="N",
        help="CPUs for the whole run (default: all); subject-sessions run concurrently, "
        "N // --omp-nthreads at a time",
    )
    g.add_argument(
        "--omp-nthreads",
        type=int,
        metavar="N",
        help="threads of one multi-threaded step (default: fMRIPrep's rule, --nprocs - 1, "
        "at most 8)",
    )
    g.add_argument(
        "--mem",
        "--mem-mb",
        "--mem_mb",
        dest="mem",
        type=_memory_mb,
        metavar="MB",
        help="memory limit for the run, in MB as fMRIPrep reads it (16000), or with a unit (16GB)",
    )
    g.add_argument(
        "--mem-gb", dest="mem", type=_memory_gb, metavar="GB", help="the same limit, in GB"
    )
    g.add_argument(
        "--use-plugin",
        type=Path,
        metavar="FILE",
        help="Nipype plugin YAML (replaces --nprocs/--mem/--n-gpus scheduling)",
    )
    g.add_argument(
        "--n-gpus",
        type=int,
        default=None,
        metavar="N",
        help="GPU slots (participant: the network runs on CUDA only when this is given)",
    )
    g.add_argument(
        "--device",
        default=DEFAULT_SETTINGS.device,
        metavar="DEVICE",
        help="auto, cpu, cuda, cuda:1. With auto the participant level runs the network "
        "on the CPU unless --n-gpus is given, and the train level trains on CUDA when a "
        "GPU is present (default: auto)",
    )

    g = p.add_argument_group(
        "training (train level; defaults: the paper's, --train-preset cpu, or the test-sized "
        "preset with --sloppy)"
    )
    add_training_options(g, LEVEL)  # declared once, with contrareg-train

    g = p.add_argument_group("behaviour")
    g.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more messages: -v every Nipype node, -vv debug",
    )
    g.add_argument(
        "-q",
        "--quiet",
        action="count",
        default=0,
        help="fewer messages: -q warnings and errors only, -qq errors only",
    )
    g.add_argument(
        "--stop-on-first-crash",
        action="store_true",
        help="stop the run at the first subject that fails (default: the others go on)",
    )
    g.add_argument(
        "--reports-only",
        action="store_true",
        help="rebuild the HTML reports from the outputs on disk; run nothing",
    )
    g.add_argument(
        "--boilerplate-only",
        "--boilerplate_only",
        action="store_true",
        help="write the methods text (logs/CITATION.md) and stop",
    )
    g.add_argument(
        "--write-graph",
        action="store_true",
        help="write each subject's workflow graph (work dir, graph.svg/.dot) and go on",
    )
    g.add_argument(
        "--config-file",
        type=Path,
        metavar="FILE",
        help="a configuration written by a run (OUTPUT_DIR/logs/config-<run>.json): its "
        "options are used wherever the command line gives none",
    )
    g.add_argument(
        "--notrack",
        action="store_true",
        help="accepted for fMRIPrep compatibility: this app never sends usage data",
    )
    g.add_argument("--sloppy", action="store_true", help="fast, low-accuracy settings (tests)")
    return p


def _argv(argv: list[str] | None) -> list[str]:
    import sys

    return list(sys.argv[1:] if argv is None else argv)


def positionals_first(argv: list[str]) -> list[str]:
    """``argv`` with BIDS_DIR OUTPUT_DIR LEVEL moved to the front when options come first.

    Options that take several values (``--participant-label 01 02``) would otherwise take
    the positionals as values ("'/data/bids' is not a BIDS label"). The level is the first
    bare word of :data:`LEVELS` after an option; the two words before it are the folders.
    """
    if not argv or not argv[0].startswith("-"):
        return list(argv)
    for i, word in enumerate(argv):
        if word == "--":
            break
        if word in LEVELS and i >= 2 and not any(w.startswith("-") for w in argv[i - 2 : i]):
            return [argv[i - 2], argv[i - 1], word, *argv[: i - 2], *argv[i + 1 :]]
    return list(argv)


def explicit_options(argv: list[str] | None = None) -> set[str]:
    """The ``dest`` of every option the command line gives (for ``--config-file``: the
    file fills in the others)."""
    parser = get_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
        action.required = False
    given, _ = parser.parse_known_args(positionals_first(_argv(argv)))
    return set(vars(given))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the combinations argparse cannot see."""
    parser = get_parser()
    args = parser.parse_args(positionals_first(_argv(argv)))
    if args.moving_modality == args.fixed_modality:
        parser.error("--moving-modality and --fixed-modality must differ")
    if args.max_folding is not None and args.lam != "auto":
        parser.error("--max-folding applies to --lambda auto only")
    return args
