"""Where a run keeps each subject's error and crash files (light: no Nipype import, so that
a mistyped participant label is refused before the heavy imports)."""

from __future__ import annotations

from pathlib import Path


def run_log_dir(output_dir: Path, subject: str, run_uuid: str) -> Path:
    """``OUTPUT_DIR/sub-X/log/<run_uuid>/``: the crash and error files of one run (as
    fMRIPrep), so an old run's errors never show on a new run's report."""
    return Path(output_dir) / f"sub-{subject}" / "log" / run_uuid


def latest_run_log_dir(output_dir: Path, subject: str) -> Path | None:
    """The newest run folder under ``sub-X/log/`` (for ``--reports-only``), or None."""
    runs = [p for p in (Path(output_dir) / f"sub-{subject}" / "log").glob("*") if p.is_dir()]
    return max(runs, key=lambda p: p.stat().st_mtime) if runs else None
