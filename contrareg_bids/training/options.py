"""The training options, declared once: their flags, types, help, which
:class:`~contrareg_bids.training.config.TrainConfig` field each sets, and which command
lines have them. ``contrareg-train`` (``cli/train.py``) and the BIDS-App's train level
(``cli/parser.py``) generate their argparse groups from :data:`TRAIN_OPTION_SPECS` with
:func:`add_training_options`, and :data:`TRAIN_OPTION_FIELDS` (option -> field) is read
from it, so an option means the same in both.

No torch here: the command lines import this module before anything heavy.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from ..argtypes import model_name, non_negative_float, positive_float

__all__ = [
    "BASE_LOSSES",
    "LEVEL_TRAIN_OPTIONS",
    "TRAIN_OPTION_FIELDS",
    "TRAIN_OPTION_SPECS",
    "VARIANTS",
    "add_training_options",
]

#: the two command lines: ``contrareg-train`` and the BIDS-App's ``train`` level
TRAINER, LEVEL = "contrareg-train", "train-level"
BOTH = frozenset({TRAINER, LEVEL})


#: the registration losses, and the variants of cr/mcr (``mcr+randae``)
BASE_LOSSES = ("mcr", "cr", "mi", "localmi", "mind", "ngf")
VARIANTS = ("mi", "extnegs", "randae", "suppretrain")


@dataclass(frozen=True)
class TrainOption:
    """One training option: ``flags`` (the first names it), the argparse ``dest``, the
    :class:`TrainConfig` field it sets (``section.name`` for a nested one; None: an
    option of the command line itself, e.g. where the bundle goes), the command lines that
    have it, and the other ``add_argument`` keywords (type, help, metavar, ...)."""

    flags: tuple[str, ...]
    dest: str
    config_field: str | None
    levels: frozenset[str] = BOTH
    kwargs: dict[str, Any] = field(default_factory=dict)


def _opt(*flags: str, dest: str, to: str | None, levels=BOTH, **kwargs: Any) -> TrainOption:
    return TrainOption(tuple(flags), dest, to, frozenset(levels), kwargs)


#: Every training option, in the order ``--help`` lists them.
TRAIN_OPTION_SPECS: tuple[TrainOption, ...] = (
    _opt(
        "--train-preset",
        dest="train_preset",
        to=None,
        choices=("paper", "cpu"),
        metavar="NAME",
        help="the settings the options below start from: paper (the paper's: a GPU and "
        "1e5 steps) or cpu (for a CPU: a small network, 500 steps with deformation "
        "augmentation; the BIDS-App's train level then uses a 2.5 mm model grid: 19 min for "
        "13 neonates on 2 cores). Default: paper, or the test-sized preset with --sloppy",
    ),
    _opt(
        "--model-name",
        dest="model_name",
        to=None,
        levels={LEVEL},
        type=model_name,
        metavar="NAME",
        help="OUTPUT_DIR/models/NAME.safetensors (default: contrareg_<moving>-<fixed>_<loss>)",
    ),
    _opt(
        "--loss",
        dest="loss",
        to="loss",
        help=f"{', '.join(BASE_LOSSES)}; variants of cr/mcr: +{', +'.join(VARIANTS)}",
    ),
    _opt(
        "--train-steps",
        "--steps",
        dest="train_steps",
        to="steps",
        type=int,
        metavar="N",
        help="registration training steps",
    ),
    _opt(
        "--ae-steps",
        dest="ae_steps",
        to="autoencoder.steps",
        type=int,
        metavar="N",
        help="autoencoder pretraining steps",
    ),
    _opt(
        "--ae-crop",
        dest="ae_crop",
        to="autoencoder.crop",
        levels={TRAINER},
        type=int,
        metavar="N",
        help="autoencoder crop size",
    ),
    _opt(
        "--ch", dest="ch", to="regnet.ch", type=int, metavar="N", help="registration network width"
    ),
    _opt(
        "--depth",
        dest="depth",
        to="regnet.depth",
        levels={TRAINER},
        type=int,
        metavar="N",
        help="U-Net levels",
    ),
    _opt(
        "--ts", dest="ts", to="regnet.ts", type=int, metavar="N", help="scaling-and-squaring steps"
    ),
    _opt(
        "--lambda-range",
        dest="lambda_range",
        to="lambda_range",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        help="lambdas sampled in training (default: 0 1)",
    ),
    _opt(
        "--fixed-lambda",
        dest="fixed_lambda",
        to="regnet.fixed_lambda",
        levels={TRAINER},
        type=float,
        help="train one network at this lambda (no hypernetwork)",
    ),
    _opt(
        "--batch-size",
        dest="batch_size",
        to="batch_size",
        type=int,
        metavar="N",
        help="pairs per step (default: 1)",
    ),
    _opt(
        "--num-negatives",
        dest="num_negatives",
        to="num_negatives",
        levels={TRAINER},
        type=int,
        help="PatchNCE negatives per positive",
    ),
    _opt(
        "--tau",
        dest="tau",
        to="tau",
        levels={TRAINER},
        type=float,
        help="PatchNCE temperature (paper 0.007)",
    ),
    _opt(
        "--reg-scale",
        dest="reg_scale",
        to="reg_scale",
        levels={TRAINER},
        type=float,
        help="fix the regulariser's scale (default: calibrated at the start of training)",
    ),
    _opt(
        "--val-fraction",
        dest="val_fraction",
        to="val_fraction",
        type=float,
        metavar="F",
        help="subjects held out",
    ),
    _opt(
        "--val-every",
        dest="val_every",
        to="val_every",
        levels={TRAINER},
        type=int,
        help="steps between validations",
    ),
    _opt(
        "--checkpoint-every",
        dest="checkpoint_every",
        to="checkpoint_every",
        levels={TRAINER},
        type=int,
        help="steps between checkpoints",
    ),
    _opt("--lr", dest="lr", to="lr", type=float, metavar="LR", help="learning rate"),
    _opt(
        "--deform-augment",
        dest="deform_augment",
        to="deform_augment",
        type=non_negative_float,
        metavar="VOX",
        help="warp every training image by its own random smooth deformation of at most VOX "
        "voxels per step (default 0: off); for few or very similar subjects",
    ),
    _opt(
        "--model-spacing",
        dest="model_spacing",
        to=None,
        levels={LEVEL},
        type=positive_float,
        metavar="MM",
        help="voxel size of the model grid (default: the reference's own). Training and "
        "inference run on that grid over the reference's field of view; transforms and "
        "outputs stay at native resolution (e.g. 1.7 for 0.86 mm neonates: 8x fewer voxels)",
    ),
    _opt(
        "--stop-after",
        dest="stop_after",
        to=None,
        levels={LEVEL},
        type=int,
        metavar="N",
        help="stop after N more registration steps (checkpointed; run again to resume)",
    ),
    _opt(
        "--seed",
        "--random-seed",
        dest="seed",
        to="seed",
        levels={TRAINER},
        type=int,
        help="random seed",
    ),
    _opt(
        "--device",
        dest="device",
        to="device",
        levels={TRAINER},
        help="auto, cpu, cuda, cuda:1 (torchrun: one GPU per process)",
    ),
    _opt(
        "--amp",
        dest="amp",
        to="amp",
        levels={TRAINER},
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mixed precision on CUDA (default: on with CUDA)",
    ),
    _opt(
        "--compile",
        dest="compile",
        to="compile",
        levels={TRAINER},
        action="store_true",
        help="torch.compile the U-Net",
    ),
    _opt(
        "--tensorboard",
        dest="tensorboard",
        to="tensorboard",
        levels={TRAINER},
        action="store_true",
        help="write TensorBoard logs",
    ),
    _opt(
        "--workers",
        dest="workers",
        to="num_workers",
        levels={TRAINER},
        type=int,
        help="data loader workers",
    ),
)

#: Option (argparse ``dest``) -> :class:`TrainConfig` field, for every option that sets one.
TRAIN_OPTION_FIELDS: dict[str, str] = {
    o.dest: o.config_field for o in TRAIN_OPTION_SPECS if o.config_field is not None
}

#: The train level's options (their dests): what ``RunConfig.train`` records.
LEVEL_TRAIN_OPTIONS: tuple[str, ...] = tuple(
    o.dest for o in TRAIN_OPTION_SPECS if LEVEL in o.levels
)


def add_training_options(
    group: argparse._ActionsContainer, level: str, *, skip: tuple[str, ...] = ()
) -> None:
    """Add the options of command line ``level`` (:data:`TRAINER` or :data:`LEVEL`) to an
    argparse group, except the dests in ``skip`` (options the command line declares
    elsewhere, e.g. the BIDS-App's own ``--device``)."""
    for option in TRAIN_OPTION_SPECS:
        if level in option.levels and option.dest not in skip:
            group.add_argument(*option.flags, dest=option.dest, **option.kwargs)
