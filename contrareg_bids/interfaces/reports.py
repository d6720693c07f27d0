"""Reportlet nodes: thin shells over :mod:`contrareg_bids.reports.reportlets`."""

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


def _opt(value):
    return value if isdefined(value) else None


class _ReportOutputSpec(TraitedSpec):
    out_report = File(exists=True, desc="the reportlet (SVG or HTML fragment)")


class _FlickerInputSpec(BaseInterfaceInputSpec):
    reference = File(exists=True, mandatory=True, desc="reference image (its own grid)")
    moving = File(exists=True, mandatory=True, desc="subject image in reference space")
    mask = File(exists=True, desc="reference brain mask (cuts; outline without labels)")
    labels = File(exists=True, desc="reference labels, outlined on both frames")
    titles = traits.Tuple(traits.Str, traits.Str, value=("reference", "subject"), usedefault=True)
    out_name = traits.Str("flicker.svg", usedefault=True)


class FlickerReport(SimpleInterface):
    """Reference vs subject in reference space, alternating on hover (before/after)."""

    input_spec = _FlickerInputSpec
    output_spec = _ReportOutputSpec

    def _run_interface(self, runtime):
        from ..reports.reportlets import plot_flicker

        out = plot_flicker(
            self.inputs.reference,
            self.inputs.moving,
            os.path.join(os.getcwd(), self.inputs.out_name),
            mask=_opt(self.inputs.mask),
            labels=_opt(self.inputs.labels),
            titles=tuple(self.inputs.titles),
        )
        self._results["out_report"] = str(out)
        return runtime


class _ContoursInputSpec(BaseInterfaceInputSpec):
    image = File(exists=True, mandatory=True, desc="subject image")
    labels = File(exists=True, mandatory=True, desc="reference labels in subject space")
    mask = File(exists=True, desc="brain mask (cuts)")
    title = traits.Str()
    out_name = traits.Str("contours.svg", usedefault=True)


class LabelContoursReport(SimpleInterface):
    """Reference labels carried into the subject, outlined on the subject's image."""

    input_spec = _ContoursInputSpec
    output_spec = _ReportOutputSpec

    def _run_interface(self, runtime):
        from ..reports.reportlets import plot_label_contours

        out = plot_label_contours(
            self.inputs.image,
            self.inputs.labels,
            os.path.join(os.getcwd(), self.inputs.out_name),
            mask=_opt(self.inputs.mask),
            title=_opt(self.inputs.title),
        )
        self._results["out_report"] = str(out)
        return runtime


class _JacobianInputSpec(BaseInterfaceInputSpec):
    forward_field = File(exists=True, mandatory=True, desc="forward displacement (model grid)")
    background = File(exists=True, desc="reference image on the same grid")
    mask = File(exists=True, desc="brain mask on the same grid")


class JacobianReport(SimpleInterface):
    """Log-Jacobian map of the forward warp with folding voxels, and its histogram."""

    input_spec = _JacobianInputSpec
    output_spec = _ReportOutputSpec

    def _run_interface(self, runtime):
        from ..reports.reportlets import plot_jacobian

        out, _ = plot_jacobian(
            self.inputs.forward_field,
            os.path.join(os.getcwd(), "jacobian.svg"),
            background=_opt(self.inputs.background),
            mask=_opt(self.inputs.mask),
        )
        self._results["out_report"] = str(out)
        return runtime


class _LambdaInputSpec(BaseInterfaceInputSpec):
    sweep = File(exists=True, mandatory=True, desc="the LambdaSweep node's .npz")


class LambdaStripReport(SimpleInterface):
    """The subject warped at about five lambdas of the bundle, with Dice and folding: drawn
    from what the ``LambdaSweep`` node computed (this node runs no network)."""

    input_spec = _LambdaInputSpec
    output_spec = _ReportOutputSpec

    def _run_interface(self, runtime):
        from ..reports.reportlets import lambda_strip_from_sweep

        out = lambda_strip_from_sweep(self.inputs.sweep, os.path.join(os.getcwd(), "lambda.svg"))
        self._results["out_report"] = str(out)
        return runtime


class _SummaryInputSpec(BaseInterfaceInputSpec):
    info = traits.Dict(mandatory=True, desc="subject, inputs, age, reference, method...")
    metrics = traits.Dict(mandatory=True, desc="the row of the metrics table")
    model = File(exists=True, desc="model bundle (its header is summarised)")


class SummaryReport(SimpleInterface):
    """The summary panel (HTML fragment): inputs, age, reference, model, metrics."""

    input_spec = _SummaryInputSpec
    output_spec = _ReportOutputSpec

    def _run_interface(self, runtime):
        from ..reports.reportlets import model_info, summary_html

        info = dict(self.inputs.info)
        if isdefined(self.inputs.model):
            info["model"] = model_info(self.inputs.model)
        out = os.path.join(os.getcwd(), "summary.html")
        with open(out, "w") as fh:
            fh.write(summary_html(info, self.inputs.metrics))
        self._results["out_report"] = out
        return runtime
