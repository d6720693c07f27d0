"""``--reports-only``: every selected subject's page rebuilt from the outputs already in
OUTPUT_DIR (:mod:`contrareg_bids.reports.subject` builds them), no registration run."""

from __future__ import annotations

import logging
from pathlib import Path

from ..reports.subject import build_subject_report
from . import exit_codes

LOGGER = logging.getLogger("contrareg_bids.reports")


def sessions_on_disk(output_dir: Path, subject: str) -> list[str | None]:
    """Sessions of ``subject`` that left outputs, figures or errors (None: no sessions)."""
    sub = output_dir / f"sub-{subject}"
    sessions = {p.name[4:] for p in sub.glob("ses-*") if p.is_dir()}
    for fig in (sub / "figures").glob(f"sub-{subject}_ses-*_desc-*"):
        sessions.add(fig.name.split("_ses-")[1].split("_")[0])
    for err in (sub / "log").glob(f"*/error-sub-{subject}_ses-*.txt"):
        sessions.add(err.stem.split("_ses-")[1])
    return sorted(sessions) or [None]


def run_reports_only(cfg) -> int:
    """``--reports-only``: rebuild every selected subject's page from existing outputs."""
    out = cfg.output_dir
    wanted = [s.removeprefix("sub-") for s in cfg.participant_label or []]
    found = sorted(p.name[4:] for p in out.glob("sub-*") if p.is_dir())
    subjects = [s for s in found if not wanted or s in wanted]
    if not subjects:
        LOGGER.error("--reports-only: no subject outputs in %s to build reports from", out)
        return exit_codes.NO_FILES
    sessions_wanted = [s.removeprefix("ses-") for s in cfg.session_label or []]
    for subject in subjects:
        for session in sessions_on_disk(out, subject):
            if sessions_wanted and session not in sessions_wanted:
                continue
            path = build_subject_report(out, subject, session, cfg.moving_modality)
            LOGGER.info("report written: %s", path)
    return exit_codes.OK
