"""Per-registration metrics written as TSV + JSON: a Nipype shell over
:mod:`contrareg_bids.processing.participant_metrics`."""

from __future__ import annotations

import os

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)


class _MetricsInputSpec(BaseInterfaceInputSpec):
    forward_field = File(exists=True, mandatory=True)
    mask = File(exists=True, desc="brain mask on the field's grid")
    subject_labels = File(exists=True, desc="labels given for the subject (subject space)")
    reference_labels = File(exists=True, desc="reference labels warped into subject space")
    reference_dseg = File(exists=True, desc="reference labels in reference space")
    subject_labels_tsv = File(exists=True, desc="label table (dseg.tsv) of subject_labels")
    reference_labels_tsv = File(exists=True, desc="label table (dseg.tsv) of reference_dseg")
    affine = File(exists=True, desc="affine pre-alignment, reference -> subject points (ITK)")
    lam = traits.Float()
    method = traits.Str("contrareg", usedefault=True)
    extra = traits.Dict(desc="more columns (model, run time...)")
    lambda_search = traits.Dict(desc="trace of the per-subject lambda search (--lambda auto)")


class _MetricsOutputSpec(TraitedSpec):
    out_tsv = File(exists=True)
    out_json = File(exists=True)
    metrics = traits.Dict()


class RegistrationMetrics(SimpleInterface):
    """Folding %, std log|J| and (when subject labels are given) Dice, one TSV row."""

    input_spec = _MetricsInputSpec
    output_spec = _MetricsOutputSpec

    def _run_interface(self, runtime):
        from ..processing.participant_metrics import metrics_row, write_metrics

        def given(name: str):
            value = getattr(self.inputs, name)
            return value if isdefined(value) else None

        search = given("lambda_search")
        row = metrics_row(
            self.inputs.forward_field,
            mask=given("mask"),
            method=self.inputs.method,
            lam=given("lam"),
            lambda_search=search,
            subject_labels=given("subject_labels"),
            reference_labels=given("reference_labels"),
            reference_dseg=given("reference_dseg"),
            subject_labels_tsv=given("subject_labels_tsv"),
            reference_labels_tsv=given("reference_labels_tsv"),
            affine=given("affine"),
            extra=given("extra"),
        )
        tsv, js = write_metrics(row, os.getcwd(), search)
        self._results.update(out_tsv=str(tsv), out_json=str(js), metrics=row)
        return runtime
