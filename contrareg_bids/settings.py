"""How a pair is registered: one frozen settings object, its defaults declared here once.

:class:`RegistrationSettings` is built once from the parsed command line (by option name,
:data:`OPTION_FIELDS`), validated once (``__post_init__``), recorded in the run's
configuration, and passed whole down the layers: the participant level, the workflow
factories, the ``ContraRegister`` node (as a plain dict, :meth:`RegistrationSettings.to_dict`),
:func:`contrareg_bids.processing.register.contrareg_register`, and the torch code, which
receives its :class:`RefineSettings` and :class:`FineSettings` parts as they are.

No torch here: the command line imports this module before anything heavy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .metrics import FOLDING_LIMIT_PERCENT

__all__ = [
    "DEFAULT_SETTINGS",
    "OPTION_FIELDS",
    "FineSettings",
    "RefineSettings",
    "RegistrationSettings",
]

#: registration methods: the network, or the classical baseline
METHODS = ("contrareg", "ants")
#: learning-rate schedules of the refinement
SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class RefineSettings:
    """Test-time refinement of the network's velocity with the bundle's own objective
    (:func:`contrareg_bids.nn.refine.refine_velocity`); ``steps=0`` switches it off."""

    steps: int
    #: PatchNCE location samples averaged per step (CR/mCR models)
    draws: int = 1
    #: Adam's learning rate (velocity voxels), annealed by ``schedule``
    lr: float = 0.05
    #: the update lives on a grid this many times coarser than the model grid
    coarse: int = 2
    #: "cosine" (annealed to ~0 over the steps, so the last iterate settles instead of
    #: jittering with PatchNCE's sampled gradient; docs/benchmarks.md) or "constant"
    schedule: str = "cosine"
    #: sampling seed (PatchNCE locations, sub-voxel phases): the run's ``--random-seed``
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"refine steps must be >= 0, got {self.steps}")
        if not self.lr > 0:
            raise ValueError(f"refine lr must be > 0, got {self.lr}")
        if self.coarse < 1:
            raise ValueError(f"refine coarse factor must be >= 1, got {self.coarse}")
        if self.draws < 1:
            raise ValueError(f"refine draws must be >= 1, got {self.draws}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"refine schedule must be constant or cosine, got {self.schedule!r}")


@dataclass(frozen=True)
class FineSettings:
    """The fine stage (:func:`contrareg_bids.nn.refine.refine_fine`): after the network (and
    the model-grid refinement) the velocity is optimised again at the images' own
    resolution with MIND-SSC descriptors compared in both directions and a diffusion
    penalty; ``steps=0`` switches it off.

    ``control`` fine voxels per control point of the velocity update; ``reg`` weighs the
    diffusion penalty (control-grid voxels); ``lr`` is Adam's rate in control-grid voxels,
    annealed on a cosine. The last ``full_resolution`` fraction of the steps compares the
    descriptors at the images' own resolution instead of on the control grid, where they
    are averaged over ``control``-voxel cells and small structures blur."""

    steps: int
    #: chosen on the real selection pairs (docs/benchmarks.md): penalty 4 scored 0.735 against
    #: 0.719 at 25 (std log|J| 0.17 against 0.06; ConvexAdam's is 0.26)
    lr: float = 2.0
    reg: float = 4.0
    control: int = 2
    mind_distance: int = 2
    #: chosen on the real selection pairs (docs/benchmarks.md, "The fine stage at full
    #: resolution")
    full_resolution: float = 0.25

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"fine steps must be >= 0, got {self.steps}")
        if not 0.0 <= self.full_resolution <= 1.0:
            raise ValueError(
                f"fine full_resolution must be a fraction in [0, 1], got {self.full_resolution}"
            )
        if not self.lr > 0:
            raise ValueError(f"fine lr must be > 0, got {self.lr}")
        if self.reg < 0:
            raise ValueError(f"fine reg must be >= 0, got {self.reg}")
        if self.control < 1:
            raise ValueError(f"fine control spacing must be >= 1, got {self.control}")


@dataclass(frozen=True)
class RegistrationSettings:
    """Everything that decides how each pair is registered.

    The defaults are the recipe chosen on the real development pairs (docs/benchmarks.md,
    first section): the network at lambda 0.8, no model-grid refinement, then 80 fine-stage
    steps at the reference's resolution."""

    #: "contrareg" (the network) or "ants" (ANTs SyN, no model)
    method: str = "contrareg"
    #: the model bundle (ContraReg); None: the newest in ``OUTPUT_DIR/models`` at run time
    model: Path | None = None
    #: regularisation weight in [0, 1], or "auto": per subject, the smallest lambda whose
    #: warps fold at most ``max_folding`` % of voxels
    lam: float | str = 0.8
    #: folding budget of ``lam="auto"`` (% voxels of each warp)
    max_folding: float = FOLDING_LIMIT_PERCENT
    refine: RefineSettings = field(default_factory=lambda: RefineSettings(steps=0))
    fine: FineSettings = field(default_factory=lambda: FineSettings(steps=80))
    #: where the network runs: auto, cpu, cuda, cuda:N
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"registration method must be one of {METHODS}, got {self.method!r}")
        if isinstance(self.lam, str):
            if self.lam != "auto":
                raise ValueError(f"lambda must be a number in [0, 1] or 'auto', got {self.lam!r}")
        elif not 0.0 <= float(self.lam) <= 1.0:
            raise ValueError(f"lambda must be in [0, 1], got {self.lam}")
        if not 0.0 <= self.max_folding <= 100.0:
            raise ValueError(f"the folding budget must be in [0, 100] %, got {self.max_folding}")
        if self.model is not None and not isinstance(self.model, Path):
            object.__setattr__(self, "model", Path(self.model))
        if not isinstance(self.refine, RefineSettings):
            object.__setattr__(self, "refine", RefineSettings(**self.refine))
        if not isinstance(self.fine, FineSettings):
            object.__setattr__(self, "fine", FineSettings(**self.fine))

    @property
    def auto_lambda(self) -> bool:
        return self.lam == "auto"

    def options(self) -> dict[str, Any]:
        """The settings as command-line option values (:data:`OPTION_FIELDS`' names)."""
        return {name: _get(self, path) for name, path in OPTION_FIELDS.items()}

    @classmethod
    def from_options(
        cls,
        options: Mapping[str, Any],
        *,
        seed: int | None = None,
        base: RegistrationSettings | None = None,
    ) -> RegistrationSettings:
        """Settings from option values by name (:data:`OPTION_FIELDS`; a missing or None
        value keeps ``base``'s, by default the defaults); ``seed`` is the run's seed (the
        refinement samples with it; None keeps ``base``'s)."""
        base = base or DEFAULT_SETTINGS
        top: dict[str, Any] = {}
        parts: dict[str, dict[str, Any]] = {"refine": {}, "fine": {}}
        if seed is not None:
            parts["refine"]["seed"] = seed
        for name, path in OPTION_FIELDS.items():
            value = options.get(name)
            if value is None:
                continue
            head, _, tail = path.partition(".")
            if tail:
                parts[head][tail] = value
            else:
                top[head] = value
        return replace(
            base,
            **top,
            refine=replace(base.refine, **parts["refine"]),
            fine=replace(base.fine, **parts["fine"]),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (the run's configuration, the ``ContraRegister`` input)."""
        data = asdict(self)
        data["model"] = None if self.model is None else str(self.model)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RegistrationSettings:
        """The inverse of :meth:`to_dict` (keys of other versions are ignored)."""
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        for part, kind in (("refine", RefineSettings), ("fine", FineSettings)):
            if isinstance(kwargs.get(part), Mapping):
                known = {f.name for f in fields(kind)}
                kwargs[part] = kind(**{k: v for k, v in kwargs[part].items() if k in known})
        return cls(**kwargs)


#: Command-line option (``dest``) -> settings field (``part.field`` for the nested ones).
OPTION_FIELDS = {
    "registration": "method",
    "model": "model",
    "lam": "lam",
    "max_folding": "max_folding",
    "refine_steps": "refine.steps",
    "refine_draws": "refine.draws",
    "fine_steps": "fine.steps",
    "device": "device",
}

#: The defaults, for the parser's help and for code that registers without a command line.
DEFAULT_SETTINGS = RegistrationSettings()


def _get(settings: RegistrationSettings, path: str) -> Any:
    value: Any = settings
    for part in path.split("."):
        value = getattr(value, part)
    return value
