"""BIDS-Derivatives sink: names in OUTPUT_DIR as fMRIPrep and nibabies write them
(niworkflows' DerivativesDataSink; kept out of ``interfaces/__init__``: niworkflows is slow
to import)."""

from __future__ import annotations

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
