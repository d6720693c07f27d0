"""Typed settings of one BIDS-App run, written as JSON and recorded in the outputs.

One :class:`RunConfig` is built from the command line by option name (or from an earlier
run's JSON with ``--config-file``), checked once (paths, combinations), and written to the
work dir and to ``OUTPUT_DIR/logs/`` so a run can be inspected and reproduced. How each pair
is registered is one frozen :class:`~contrareg_bids.settings.RegistrationSettings`
(``RunConfig.registration``) that the levels (``cli/``) pass whole to the workflow
factories; the other values go to them as keyword arguments.
"""

from __future__ import annotations

import json
import os
import random
import uuid
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import __version__
from .io.atomic import write_text_atomic
from .settings import OPTION_FIELDS, RegistrationSettings
from .training.options import LEVEL_TRAIN_OPTIONS


class ConfigError(ValueError):
    """A run that cannot start as configured; ``exit_code`` is the code the CLI returns
    (2, usage, unless the cause says otherwise)."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class RunConfig:
    bids_dir: Path
    output_dir: Path
    analysis_level: str
    work_dir: Path
    participant_label: list[str] | None = None
    session_label: list[str] | None = None
    bids_filters: dict | None = None
    derivatives: dict[str, Path] = field(default_factory=dict)
    #: which subject label map to score (``*_desc-<labels_desc>_dseg``); None: see
    #: :func:`~contrareg_bids.io.derivatives.find_subject_derivatives`
    labels_desc: str | None = None
    #: post-menstrual age (weeks) of every subject-session, instead of the BIDS tables
    pma: float | None = None
    #: postnatal age (months, term birth assumed) of every subject-session (nibabies' option)
    age_months: float | None = None
    skip_bids_validation: bool = False
    #: pybids index kept between runs (``--bids-database-dir``)
    bids_database_dir: Path | None = None
    #: how each pair is registered (method, model, lambda, refinement, fine stage, device)
    registration: RegistrationSettings = field(default_factory=RegistrationSettings)
    reference: str = "dhcpVol"
    moving_modality: str = "T2w"
    fixed_modality: str = "T1w"
    random_seed: int = 0
    nprocs: int | None = None
    omp_nthreads: int | None = None
    mem_gb: float | None = None
    use_plugin: Path | None = None
    n_gpus: int | None = None
    stop_on_first_crash: bool = False
    reports_only: bool = False
    write_graph: bool = False
    sloppy: bool = False
    #: brain extraction of the moving image: auto (scans with skull), force, skip
    skull_strip: str = "auto"
    #: train level: the training options given (``LEVEL_TRAIN_OPTIONS``; absent = the default)
    train: dict = field(default_factory=dict)
    version: str = __version__
    run_uuid: str = field(default_factory=lambda: _run_uuid())
    #: the command that started the run, as typed (the report's About shows it)
    command_line: str = ""

    @property
    def device(self) -> str:
        """``--device``: where the network runs, and where the train level trains."""
        return self.registration.device

    @property
    def model(self) -> Path | None:
        """``--model``: the bundle given, or None (the newest in ``OUTPUT_DIR/models``)."""
        return self.registration.model

    @classmethod
    def from_args(cls, args) -> RunConfig:
        """The configuration of parsed options, field by field under the option's name
        (:data:`_FIELD_DESTS` where the two differ); paths made absolute (a configuration
        may be reused from another folder with ``--config-file``); fields a level's parser
        lacks keep their defaults; the ones built from several options by their own rule
        (:data:`_BUILT_FIELDS`)."""
        given = {}
        for f in fields(cls):
            if f.name in _BUILT_FIELDS or f.name in ("version", "run_uuid", "command_line"):
                continue
            dest = _FIELD_DESTS.get(f.name, f.name)
            if dest is None or not hasattr(args, dest):
                continue
            value = getattr(args, dest)
            if value is not None and str(f.type).startswith("Path"):
                value = Path(value).absolute()
            given[f.name] = value
        built = {name: rule(args) for name, rule in _BUILT_FIELDS.items()}
        cfg = cls(**given, **built)
        cfg.check()
        return cfg

    def check(self) -> None:
        """Refuse runs that would damage the input or cannot work."""
        if not self.bids_dir.is_dir():
            raise ConfigError(
                f"the BIDS directory {self.bids_dir} does not exist (or is not a folder)",
                exit_code=16,  # BIDS-Apps: the input is not a BIDS dataset
            )
        bids = self.bids_dir.resolve()
        out = self.output_dir.resolve()
        if out == bids:
            raise ConfigError(
                f"the output directory is the BIDS directory ({bids}); choose another one, "
                "e.g. <bids_dir>/derivatives/contrareg-bids"
            )
        work = self.work_dir.resolve()
        if work == bids or bids in work.parents:
            raise ConfigError(
                f"the work directory {work} is inside the BIDS directory {bids}; "
                "put it elsewhere (-w /scratch/work)"
            )
        if self.model is not None and not self.model.is_file():
            raise ConfigError(f"--model {self.model} does not exist")
        for name, path in self.derivatives.items():
            if not path.is_dir():
                raise ConfigError(f"--derivatives {name}={path}: not a directory")
        if self.use_plugin is not None and not self.use_plugin.is_file():
            raise ConfigError(f"--use-plugin {self.use_plugin} does not exist")
        # a --config-file bypasses the command line's checks of these (the registration
        # settings check themselves when they are made)
        for name, least in (("nprocs", 1), ("omp_nthreads", 1)):
            value = getattr(self, name)
            if value is not None and value < least:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= {least}, got {value}")

    @property
    def threads_per_node(self) -> int:
        """Threads of each multi-threaded node: ``--omp-nthreads``, or fMRIPrep's default
        from ``--nprocs`` when it is not set (a configuration built in code)."""
        return self.omp_nthreads or default_threads(self.nprocs)

    def check_writable_dirs(self) -> None:
        """Refuse, before anything runs, an output or work directory that cannot be made or
        written (exit code 73, naming it), instead of a traceback half-way through. Nothing
        is created here: the nearest existing folder up the path must be a writable folder."""
        for what, folder in (("output", self.output_dir), ("work", self.work_dir)):
            existing = folder
            while not existing.exists() and existing.parent != existing:
                existing = existing.parent
            problem = None
            if not existing.is_dir():
                problem = f"{existing} is not a folder"
            elif not os.access(existing, os.W_OK | os.X_OK):
                problem = f"{existing} is not writable"
            if problem:
                raise ConfigError(
                    f"cannot write to the {what} directory {folder}: {problem}; choose a "
                    "folder you can write to",
                    exit_code=73,
                )

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        """The configuration a run wrote (:meth:`write`), read back: paths become
        :class:`~pathlib.Path` again; keys of other versions are ignored."""
        names = {f.name: f for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        for key, value in list(kwargs.items()):
            kind = str(names[key].type)
            if value is None:
                continue
            if key == "derivatives":
                kwargs[key] = {n: Path(p) for n, p in value.items()}
            elif key == "registration" and isinstance(value, str):
                # a configuration written before the settings object: its flat options
                flat = {k: data.get(k) for k in OPTION_FIELDS if k != "registration"}
                kwargs[key] = RegistrationSettings.from_options(
                    {**flat, "registration": value}, seed=data.get("random_seed", 0)
                )
            elif key == "registration":
                kwargs[key] = RegistrationSettings.from_dict(value)
            elif kind.startswith("Path"):
                kwargs[key] = Path(value)
        return cls(**kwargs)

    def to_dict(self) -> dict:
        d = asdict(self)
        return json.loads(json.dumps(d, default=str))

    def write(self, path: Path) -> Path:
        """Write as JSON atomically; returns the path."""
        return write_text_atomic(path, json.dumps(self.to_dict(), indent=2, sort_keys=True))

    def seed_everything(self) -> None:
        """One seed for Python, NumPy, torch and ANTs (ITK threads made deterministic)."""
        seed_everything(self.random_seed)


#: RunConfig fields whose command-line option has another ``dest``
_FIELD_DESTS = {"mem_gb": "mem", "bids_filters": "bids_filter_file", "train": None}
#: RunConfig fields made from the options by a rule of their own
_BUILT_FIELDS = {
    "work_dir": lambda args: (
        Path(args.work_dir).absolute() if args.work_dir else Path.cwd() / "work"
    ),
    "derivatives": lambda args: derivative_folders(args.derivatives),
    "omp_nthreads": lambda args: (
        args.omp_nthreads if args.omp_nthreads is not None else default_threads(args.nprocs)
    ),
    "registration": lambda args: registration_settings(args),
    "train": lambda args: train_options(args),
}
#: fields that always come from this command line, never from a configuration file
_OWN_FIELDS = ("bids_dir", "output_dir", "analysis_level", "version", "run_uuid", "command_line")


def apply_config_file(cfg: RunConfig, path: Path, explicit: set[str]) -> RunConfig:
    """``cfg`` with every option the command line did not give (``explicit``: their dests)
    taken from the configuration a run wrote (``--config-file``)."""
    try:
        saved = RunConfig.from_dict(json.loads(Path(path).read_text()))
    except (OSError, ValueError, TypeError, AttributeError) as err:
        raise ConfigError(
            f"--config-file {path}: cannot be read as a run configuration ({err})"
        ) from None
    for f in fields(RunConfig):
        if f.name in _OWN_FIELDS:
            continue
        if f.name == "train":
            merged = {**saved.train, **{k: v for k, v in cfg.train.items() if k in explicit}}
            cfg.train = merged
            continue
        if f.name == "registration":  # option by option, as the other fields
            given = {k: v for k, v in cfg.registration.options().items() if k in explicit}
            cfg.registration = RegistrationSettings.from_options(
                given, seed=saved.random_seed, base=saved.registration
            )
            continue
        if _FIELD_DESTS.get(f.name, f.name) not in explicit:
            setattr(cfg, f.name, getattr(saved, f.name))
    if "random_seed" in explicit:  # the refinement samples with the run's seed
        cfg.registration = RegistrationSettings.from_options(
            {}, seed=cfg.random_seed, base=cfg.registration
        )
    cfg.check()
    return cfg


def derivative_folders(given: list[tuple[str, Path]]) -> dict[str, Path]:
    """``--derivatives`` as name -> absolute folder, in the order given; two folders of the
    same name (``a/labels b/labels``) both kept (``labels``, ``labels2``)."""
    out: dict[str, Path] = {}
    for name, path in given:
        key, n = name, 1
        while key in out:
            n += 1
            key = f"{name}{n}"
        out[key] = Path(path).absolute()
    return out


def registration_settings(args) -> RegistrationSettings:
    """The registration settings of the parsed options, by name (:data:`OPTION_FIELDS`);
    options a level does not have keep their defaults."""
    options = {name: getattr(args, name, None) for name in OPTION_FIELDS}
    if options["model"]:
        options["model"] = Path(options["model"]).absolute()
    try:
        return RegistrationSettings.from_options(options, seed=args.random_seed)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def train_options(args) -> dict:
    """The train-level options given on the command line (the others keep the defaults)."""
    return {k: getattr(args, k) for k in LEVEL_TRAIN_OPTIONS if getattr(args, k, None) is not None}


def default_threads(nprocs: int | None) -> int:
    """``--omp-nthreads`` when not given: fMRIPrep's rule on ``--nprocs`` (or the CPUs)."""
    from .runtime import available_cpus, default_omp_nthreads

    return default_omp_nthreads(nprocs or available_cpus())


def _run_uuid() -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")  # noqa: UP017
    return f"{stamp}_{uuid.uuid4()}"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (libraries underneath use the legacy global RNG)
    os.environ["ANTS_RANDOM_SEED"] = str(seed)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover
        pass
