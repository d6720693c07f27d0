"""One log line per event for every command line (``contrareg-bids``, ``-train``, ``-eval``,
the demo), with fMRIPrep's verbosity scheme.

Nipype installs its own stream handler on the ``nipype`` logger, and its records also reach
the root handler: every message was printed twice, in two formats. Here the root handler is
the only one. Verbosity as in fMRIPrep: the default shows our progress and Nipype's
important messages (level 25), ``-v`` adds every node (INFO), ``-vv`` debug; ``-q`` only
warnings and errors.
"""

from __future__ import annotations

import logging
import sys

#: Loggers of libraries that report routine things at INFO (bidsschematools: "No schema
#: path specified..." on every run).
CHATTY = (
    "bids",
    "bidsschematools",
    "matplotlib",
    "nipype.interface",
    "nipype.utils",
    "nipype.filemanip",
    "filelock",
    "urllib3",
    "templateflow",
)
#: between INFO (20) and WARNING (30), as fMRIPrep's "IMPORTANT"
IMPORTANT = 25


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (test runners and notebooks
    swap it; a handler bound to an old, closed stream would fail on every record)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass


def log_level(verbose: int = 0, quiet: int = 0) -> int:
    """The level of our own loggers for ``-v`` x verbose and ``-q`` x quiet."""
    if quiet:
        return logging.WARNING if quiet == 1 else logging.ERROR
    return logging.INFO if verbose < 2 else logging.DEBUG


def setup_logging(verbose: int = 0, quiet: int = 0, fmt: str | None = None) -> None:
    """Configure the root handler once and route Nipype through it."""
    logging.addLevelName(IMPORTANT, "IMPORTANT")
    level = log_level(verbose, quiet)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "contrareg", False)]:
        root.removeHandler(old)  # ours from an earlier call; others' handlers stay
    handler = _CurrentStderr()
    handler.contrareg = True
    fmt = fmt or "%(asctime)s [%(name)s] %(levelname)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt, datefmt="%Y-%m-%d %H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("contrareg_bids").setLevel(level)
    workflow_level = (
        max(level, logging.WARNING)
        if quiet
        else {0: IMPORTANT, 1: logging.INFO}.get(verbose, logging.DEBUG)
    )
    quiet_nipype(workflow_level)
    for name in CHATTY:
        logging.getLogger(name).setLevel(max(logging.WARNING, level))


def quiet_nipype(workflow_level: int = IMPORTANT) -> None:
    """Nipype's workflow log at ``workflow_level``, through the root handler only. Every
    workflow re-applies the global config's levels when it runs, so the level goes there."""
    from nipype import config as nipype_config
    from nipype import logging as nipype_logging

    nipype_config.set("logging", "workflow_level", logging.getLevelName(workflow_level))
    nipype_logging.update_logging(nipype_config)
    nipype_root = logging.getLogger("nipype")
    for h in list(nipype_root.handlers):
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            nipype_root.removeHandler(h)
    nipype_root.propagate = True


def worker_logging() -> tuple[int, int]:
    """This process's levels (ours, Nipype's workflow), for :func:`init_worker_logging` in a
    worker process started by the subject pool."""
    return (
        logging.getLogger("contrareg_bids").getEffectiveLevel(),
        logging.getLogger("nipype.workflow").getEffectiveLevel(),
    )


def init_worker_logging(level: int, workflow_level: int) -> None:
    """Logging of a worker process as its parent's (a spawned process starts bare)."""
    verbose = 2 if level <= logging.DEBUG else 0
    quiet = 0 if level <= logging.INFO else (1 if level <= logging.WARNING else 2)
    setup_logging(verbose=verbose, quiet=quiet)
    quiet_nipype(workflow_level)
