"""Derivatives sinks: BIDS-Derivatives names in OUTPUT_DIR (niworkflows' DerivativesDataSink)."""

from __future__ import annotations

from pathlib import Path

from niworkflows.interfaces.bids import DerivativesDataSink as _DDS

#: Patterns tried BEFORE niworkflows' own: the label table of a dseg keeps the entities of its
#: image (niworkflows' ``dseg.tsv`` pattern has no ``space``/``cohort`` and would drop them).
FIRST_PATTERNS = (
    "sub-{subject}[/ses-{session}]/{datatype<anat>|anat}/sub-{subject}[_ses-{session}]"
    "[_space-{space}][_cohort-{cohort}][_desc-{desc}]_{suffix<dseg>}{extension<.tsv|.json>}",
)
#: What niworkflows' patterns lack: the per-subject registration metrics table.
EXTRA_PATTERNS = (
    "sub-{subject}[/ses-{session}]/{datatype<anat>|anat}/sub-{subject}[_ses-{session}]"
    "[_space-{space}][_cohort-{cohort}][_desc-{desc}]_{suffix<metrics>}{extension<.tsv|.json>}",
)


class DerivativesDataSink(_DDS):
    """niworkflows' sink writing straight into ``OUTPUT_DIR`` (as fMRIPrep and nibabies do),
    with our extra file patterns."""

    out_path_base = ""
    _file_patterns = FIRST_PATTERNS + tuple(_DDS._file_patterns) + EXTRA_PATTERNS


def run_log_dir(output_dir: Path, subject: str, run_uuid: str) -> Path:
    """``OUTPUT_DIR/sub-X/log/<run_uuid>/``: the crash and error files of one run (as
    fMRIPrep), so an old run's errors never show on a new run's report."""
    return Path(output_dir) / f"sub-{subject}" / "log" / run_uuid


def latest_run_log_dir(output_dir: Path, subject: str) -> Path | None:
    """The newest run folder under ``sub-X/log/`` (for ``--reports-only``), or None."""
    runs = [p for p in (Path(output_dir) / f"sub-{subject}" / "log").glob("*") if p.is_dir()]
    return max(runs, key=lambda p: p.stat().st_mtime) if runs else None
