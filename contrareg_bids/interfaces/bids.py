"""BIDS-Derivatives sink: names in OUTPUT_DIR as fMRIPrep and nibabies write them
(niworkflows' DerivativesDataSink; kept out of ``interfaces/__init__``: niworkflows is slow
to import)."""

from __future__ import annotations

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)
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


class _SkullStrippedInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="the anatomical image the sidecar describes")
    meta = traits.Dict(desc="the sidecar's other fields")


class _SkullStrippedOutputSpec(TraitedSpec):
    meta_dict = traits.Dict(desc="``meta`` with SkullStripped")


class SkullStrippedSidecar(SimpleInterface):
    """The sidecar of a ``desc-preproc`` anatomical image with the ``SkullStripped`` field
    BIDS requires: whether the image is one brain in a sea of exact zeros
    (:func:`~contrareg_bids.processing.masks.mask_from_skullstripped`). The app does not strip
    the scans it writes, so this says what the input was."""

    input_spec = _SkullStrippedInputSpec
    output_spec = _SkullStrippedOutputSpec

    def _run_interface(self, runtime):
        from ..processing.masks import mask_from_skullstripped

        meta = dict(self.inputs.meta) if isdefined(self.inputs.meta) else {}
        meta["SkullStripped"] = mask_from_skullstripped(self.inputs.in_file) is not None
        self._results["meta_dict"] = meta
        return runtime
