"""The BIDS validator before a run, as fMRIPrep runs it, and the files pybids left out.

A file with a name that is not BIDS (``sub02_T2.nii.gz``) is dropped from pybids' index
without a word: its subject then has no image, or is "not found" by
``--participant-label``. The reference validator (PyPI ``bids-validator-deno``) names every
such file; the run stops on errors in the selected subjects unless
``--skip-bids-validation``. Whatever the validator says, :func:`non_bids_images` lists the
images whose names are not BIDS, so the log says which files were not used.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

LOGGER = logging.getLogger("contrareg_bids.validation")

#: seconds the validator may take (it reads headers of every file of the dataset)
VALIDATOR_TIMEOUT_S = 900


@dataclass(frozen=True)
class ValidatorIssue:
    code: str
    location: str
    message: str = ""

    def __str__(self) -> str:
        text = f"{self.code} {self.location}".strip()
        return f"{text}: {self.message}" if self.message else text


def _validator_command() -> list[str] | None:
    """How to start the validator of this environment (the Python package's bundled
    validator under its own Deno), or None when it is not installed."""
    if importlib.util.find_spec("bids_validator_deno") is not None:
        return [sys.executable, "-c", "from bids_validator_deno import cli; cli()"]
    return None


def _subject_of(location: str) -> str | None:
    first = location.lstrip("/").split("/", 1)[0]
    return first[4:] if first.startswith("sub-") else None


def run_bids_validator(
    bids_dir: str | os.PathLike[str], subjects: Iterable[str] | None = None
) -> list[ValidatorIssue] | None:
    """The validator's errors that concern the run: those of the selected ``subjects``
    (labels without ``sub-``; None: all) and of the dataset as a whole. Returns None (after a
    warning) when no validator is installed or it could not run."""
    command = _validator_command()
    if command is None:
        LOGGER.warning(
            "the BIDS validator is not installed (pip install bids-validator-deno); "
            "the dataset was not validated"
        )
        return None
    try:
        proc = subprocess.run(
            [*command, "--format", "json", str(bids_dir)],
            capture_output=True,
            text=True,
            timeout=VALIDATOR_TIMEOUT_S,
            check=False,
        )
        report = json.loads(proc.stdout)
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError) as err:
        LOGGER.warning("the BIDS validator could not run (%s); the dataset was not validated", err)
        return None
    wanted = None if subjects is None else {str(s).removeprefix("sub-") for s in subjects}
    found = []
    for issue in (report.get("issues") or {}).get("issues") or []:
        if issue.get("severity") != "error":
            continue
        location = str(issue.get("location") or "")
        subject = _subject_of(location)
        if wanted is not None and subject is not None and subject not in wanted:
            continue
        code = str(issue.get("code") or "")
        message = str(issue.get("issueMessage") or issue.get("subCode") or "")
        found.append(
            ValidatorIssue(
                code, location, message.strip().splitlines()[0] if message.strip() else ""
            )
        )
    return found


def non_bids_images(bids_dir: str | os.PathLike[str], subjects: Iterable[str]) -> list[Path]:
    """Images (``.nii``/``.nii.gz``) in the selected subjects' folders whose names are not
    BIDS (by pybids' own file-name rules): the run does not see them."""
    from bids_validator import BIDSValidator

    root = Path(bids_dir)
    rules = BIDSValidator()
    found = []
    for subject in subjects:
        for path in sorted((root / f"sub-{subject}").rglob("*.nii*")):
            if path.name.endswith((".nii", ".nii.gz")) and not rules.is_bids(
                "/" + path.relative_to(root).as_posix()
            ):
                found.append(path)
    return found
