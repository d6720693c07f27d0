"""Settings of one training run: typed, serialisable (JSON/TOML), stored in model bundles."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from contrareg_bids.nn.model import RegNetConfig

# the similarity names ``TrainConfig.loss`` accepts (base name, then optional variants) and
# the option -> field table are declared with the command-line options
from contrareg_bids.training.options import BASE_LOSSES, TRAIN_OPTION_FIELDS, VARIANTS

CONTRASTIVE = ("mcr", "cr")


def parse_loss(name: str) -> tuple[str, frozenset[str]]:
    """``"mcr+mi+extnegs"`` -> ``("mcr", {"mi", "extnegs"})``, validated.

    Variants (Table 1, set C of the paper) only apply to the contrastive losses.
    """
    parts = [p.strip().lower() for p in name.split("+") if p.strip()]
    if not parts or parts[0] not in BASE_LOSSES:
        raise ValueError(f"loss must start with one of {', '.join(BASE_LOSSES)}; got {name!r}")
    base, variants = parts[0], frozenset(parts[1:])
    unknown = variants - set(VARIANTS)
    if unknown:
        raise ValueError(
            f"unknown loss variant(s) {sorted(unknown)} in {name!r}; valid: {', '.join(VARIANTS)}"
        )
    if variants and base not in CONTRASTIVE:
        raise ValueError(f"variants {sorted(variants)} only apply to cr/mcr, not {base!r}")
    return base, variants


@dataclass(frozen=True)
class AutoencoderTrainConfig:
    """Autoencoder pretraining (one per modality): L1 + local NCC on random crops."""

    steps: int = 2000
    lr: float = 1e-4
    batch_size: int = 1
    crop: int = 128
    ncc_window: int = 7
    ncc_weight: float = 1.0
    flips: bool = True
    augment: bool = True


@dataclass(frozen=True)
class TrainConfig:
    """Registration training: paper defaults (Dey et al., MICCAI 2022) where it gives them.

    ``alpha=None`` means the method's value: 0.1 for CR/mCR, 1 for the baselines.
    ``hypernet_lr=None`` trains the hypernetwork at ``lr``; a smaller value keeps the FiLM
    scales and shifts steady when ``lr`` is raised for short runs (each FiLM output sums
    the Adam updates of a whole row of projection weights, so it moves much faster than
    any single weight does).
    ``lambda_range`` is where lambda ~ U is drawn with the hypernetwork; without it
    (``regnet.hypernet=False``) ``regnet.fixed_lambda`` is used at every step.
    ``reg_scale`` multiplies ``L_reg``; None calibrates it at the start of training so that
    the two terms' gradients balance at lambda = 0.5 (``training/calibration.py``).
    ``head_warmup`` (CR/mCR only): the first steps train only the projection heads on the
    pairs as they are; ``reg_scale`` is calibrated after them (random heads do not prefer
    alignment). Counted within ``steps``, and at most a fifth of them
    (:attr:`effective_head_warmup`).
    ``deform_augment`` > 0 warps each training image (with its mask and labels) by its own
    random smooth diffeomorphism of that largest velocity (voxels; smoothing ``deform_sigma``
    voxels) at every step: pairs then differ by more than the subjects do (few or
    similar subjects, atlases), and the network learns a larger capture range.
    """

    loss: str = "mcr"
    steps: int = 100_000
    lr: float = 5e-5
    hypernet_lr: float | None = None
    batch_size: int = 1
    alpha: float | None = None
    lambda_range: tuple[float, float] = (0.0, 1.0)
    reg_scale: float | None = None
    head_warmup: int = 1000
    deform_augment: float = 0.0
    deform_sigma: float = 4.0
    num_negatives: int = 1024
    tau: float = 0.007
    mi_bins: int = 48
    localmi_patch: int = 9
    mind_radius: int = 2
    mind_patch: int = 3
    head_width: int = 256
    head_depth: int = 3
    suppretrain_weight: float = 0.1
    val_fraction: float = 0.1
    val_every: int = 1000
    val_pairs: int = 8
    val_lambda: float = 0.1
    checkpoint_every: int = 500
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    compile: bool = False
    num_workers: int | None = None
    tensorboard: bool = False
    regnet: RegNetConfig = field(default_factory=RegNetConfig)
    autoencoder: AutoencoderTrainConfig = field(default_factory=AutoencoderTrainConfig)

    def __post_init__(self) -> None:
        parse_loss(self.loss)
        lo, hi = self.lambda_range
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(
                f"lambda_range must satisfy 0 <= lo <= hi <= 1, got {self.lambda_range}"
            )
        for name in ("steps", "batch_size", "val_every", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or (self.hypernet_lr is not None and self.hypernet_lr <= 0):
            raise ValueError(f"learning rates must be > 0, got {self.lr}, {self.hypernet_lr}")
        if self.reg_scale is not None and not self.reg_scale > 0:
            raise ValueError(f"reg_scale must be > 0 (or None to calibrate), got {self.reg_scale}")
        if self.head_warmup < 0:
            raise ValueError(f"head_warmup must be >= 0, got {self.head_warmup}")
        if self.deform_augment < 0 or self.deform_sigma <= 0:
            raise ValueError(
                f"deform_augment must be >= 0 and deform_sigma > 0, got "
                f"{self.deform_augment}, {self.deform_sigma}"
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")

    @property
    def base_loss(self) -> str:
        return parse_loss(self.loss)[0]

    @property
    def variants(self) -> frozenset[str]:
        return parse_loss(self.loss)[1]

    @property
    def effective_hypernet_lr(self) -> float:
        return self.lr if self.hypernet_lr is None else self.hypernet_lr

    @property
    def effective_head_warmup(self) -> int:
        """Head warm-up steps of CR/mCR: ``head_warmup``, at most a fifth of ``steps``."""
        return min(self.head_warmup, self.steps // 5)

    @property
    def effective_alpha(self) -> float:
        if self.alpha is not None:
            return self.alpha
        return 0.1 if self.base_loss in CONTRASTIVE else 1.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lambda_range"] = list(self.lambda_range)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        data = dict(data)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown training setting(s): {sorted(unknown)}")
        if "regnet" in data and isinstance(data["regnet"], dict):
            data["regnet"] = RegNetConfig.from_dict(data["regnet"])
        if "autoencoder" in data and isinstance(data["autoencoder"], dict):
            ae_known = {f.name for f in fields(AutoencoderTrainConfig)}
            bad = set(data["autoencoder"]) - ae_known
            if bad:
                raise ValueError(f"unknown autoencoder setting(s): {sorted(bad)}")
            data["autoencoder"] = AutoencoderTrainConfig(**data["autoencoder"])
        if "lambda_range" in data:
            data["lambda_range"] = tuple(float(x) for x in data["lambda_range"])
        return cls(**data)

    def updated(self, **changes) -> TrainConfig:
        """A copy with ``changes``; nested ``regnet``/``autoencoder`` accept dicts of fields."""
        for key in ("regnet", "autoencoder"):
            if isinstance(changes.get(key), dict):
                changes[key] = replace(getattr(self, key), **changes[key])
        return replace(self, **changes)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        """Read a ``.toml`` or ``.json`` file (tables ``[regnet]`` and ``[autoencoder]``)."""
        path = Path(path)
        try:
            text = path.read_text()
            data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read training configuration {path}: {err}") from err
        return cls.from_dict(data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def sloppy_config(**changes) -> TrainConfig:
    """A CPU-sized preset for demos and tests: small network, few steps, few negatives.

    The learning rate is 20x the paper's 5e-5, which is meant for 1e5 steps: in a few hundred
    steps the network must move much further per step (1e-3 is what the demo data needed).
    The hypernetwork learns at 5e-4: its FiLM projections now start small but non-zero and
    see lambda directly, so it has something to learn from the first step, and at the old
    5e-5 a projection weight moves by at most ~0.015 in 300 steps (too little for lambda to
    change the warps); with zero-initialised projections 1e-3 had made the FiLM outputs
    swing, hence half the network's rate (the atlas benchmark trains both at 5e-4). Autoencoders
    train on 32^3 crops: a step on the whole 3 mm demo volume costs about ten times more.
    """
    base = TrainConfig(
        steps=300,
        lr=1e-3,
        hypernet_lr=5e-4,
        num_negatives=256,
        head_warmup=50,
        val_every=100,
        checkpoint_every=100,
        amp=False,
        regnet=RegNetConfig(ch=16, depth=3, ts=5),
        autoencoder=AutoencoderTrainConfig(steps=150, crop=32),
    )
    return base.updated(**changes) if changes else base


#: Voxel size (mm) of the model grid in the ``cpu`` preset when ``--model-spacing`` is not
#: given and the reference is finer: about 8x fewer voxels than 1.2 mm, 40x fewer than
#: neonatal 0.86 mm (the development atlas benchmark trains at 2.58 mm).
CPU_MODEL_SPACING = 2.5


def cpu_config(**changes) -> TrainConfig:
    """The ``cpu`` preset (``--train-preset cpu``): what the development-atlas benchmark
    measured on a 2-core CPU (docs/benchmarks.md), for a lab without a GPU: the
    :func:`sloppy_config` network (ch 16, depth 3) trained for 500 steps at lr 5e-4 (the
    hypernetwork too), autoencoders pretrained for 300 steps on 48^3 crops, and every
    training image warped by its own random smooth deformation (at most 2 voxels of the
    model grid) so that a dozen subjects give many different pairs. Run on a grid of
    :data:`CPU_MODEL_SPACING` mm; register with test-time refinement (``--refine-steps``)."""
    base = sloppy_config(
        steps=500,
        lr=5e-4,
        deform_augment=2.0,
        val_every=125,
        checkpoint_every=100,
        autoencoder={"steps": 300, "crop": 48},
    )
    return base.updated(**changes) if changes else base


#: ``--train-preset`` -> the configuration the given options then override.
TRAIN_PRESETS = {"paper": TrainConfig, "cpu": cpu_config, "sloppy": sloppy_config}


#: fields an option sets besides its own: one fixed lambda means no hypernetwork
_IMPLIED: dict[str, dict[str, Any]] = {"fixed_lambda": {"regnet.hypernet": False}}


def option_changes(options: Mapping[str, Any]) -> dict[str, Any]:
    """:meth:`TrainConfig.updated` arguments for the options given (``None``: not given, the
    configuration's value stays); options outside :data:`TRAIN_OPTION_FIELDS` are ignored
    (the train level's ``model_name``, ``stop_after``, ...)."""
    changes: dict[str, Any] = {}
    for option, value in options.items():
        path = TRAIN_OPTION_FIELDS.get(option)
        if path is None or value is None:
            continue
        if path == "lambda_range":  # nargs=2 gives a list; a saved run config, JSON numbers
            value = tuple(float(v) for v in value)
        for target, v in {path: value, **_IMPLIED.get(option, {})}.items():
            section, _, name = target.rpartition(".")
            (changes.setdefault(section, {}) if section else changes)[name] = v
    return changes
