"""Registration nodes: ContraReg inference, the ANTs SyN baseline, transform export."""

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

from ._threads import ThreadedInputSpec, use_threads


class _RegOutputSpec(TraitedSpec):
    forward_field = File(exists=True, desc="fixed -> moving displacement (ITK, LPS mm)")
    inverse_field = File(exists=True, desc="moving -> fixed displacement (ITK, LPS mm)")
    moved = File(exists=True, desc="moving image on the fixed grid")
    lam = traits.Float(desc="lambda used")
    method = traits.Str()
    lambda_search = File(desc="JSON trace of the per-subject lambda search (lambda auto)")
    lambda_search_info = traits.Dict(desc="the same trace as a dict (lambda auto)")


class _ContraRegInputSpec(ThreadedInputSpec):
    moving = File(exists=True, mandatory=True, desc="moving image on the model grid")
    fixed = File(exists=True, mandatory=True, desc="fixed image on the model grid")
    model = File(exists=True, mandatory=True, desc="model bundle (.safetensors)")
    settings = traits.Dict(
        mandatory=True,
        desc="RegistrationSettings.to_dict(): lambda (or 'auto' and its folding budget), "
        "refinement, fine stage, device (contrareg_bids.settings)",
    )
    fine_moving = File(
        exists=True, desc="moving image on a finer grid of the model grid's extent (refinement)"
    )
    fine_fixed = File(exists=True, desc="fixed image on that finer grid (refinement)")
    use_gpu = traits.Bool(
        False, usedefault=True, desc="ask Nipype's MultiProc for a GPU slot (n_gpu_procs)"
    )


class ContraRegister(SimpleInterface):
    """Register with a trained ContraReg bundle; both directions from +v and -v.

    ``settings`` is a :class:`~contrareg_bids.settings.RegistrationSettings` as a dict (a
    Nipype input must be hashable as plain values). ``use_gpu`` lets MultiProc schedule the
    node on a GPU slot; with the device ``auto`` the node then runs on CUDA when available.
    Lambda ``auto`` picks the smallest lambda whose warps fold at most the settings'
    ``max_folding`` % (:mod:`contrareg_bids.processing.lambda_search`); the chosen one is
    the ``lam`` output and the search trace ``lambda_search``.
    """

    input_spec = _ContraRegInputSpec
    output_spec = _RegOutputSpec

    def _run_interface(self, runtime):
        from dataclasses import replace

        from ..nn.device import device_name
        from ..processing.register import contrareg_register
        from ..settings import RegistrationSettings

        use_threads(self.inputs, torch=True)
        settings = RegistrationSettings.from_dict(self.inputs.settings)
        device = device_name(settings.device, prefer_gpu=self.inputs.use_gpu)
        fine = None
        if isdefined(self.inputs.fine_moving) and isdefined(self.inputs.fine_fixed):
            fine = (self.inputs.fine_moving, self.inputs.fine_fixed)
        res = contrareg_register(
            self.inputs.moving,
            self.inputs.fixed,
            self.inputs.model,
            replace(settings, device=device),
            os.getcwd(),
            fine_pair=fine,
        )
        self._results.update(
            forward_field=str(res.forward_field),
            inverse_field=str(res.inverse_field),
            moved=str(res.moved),
            method="contrareg",
        )
        if res.lam is not None:
            self._results["lam"] = res.lam
        if res.lambda_search is not None:
            import json

            self._results["lambda_search"] = str(res.lambda_search)
            self._results["lambda_search_info"] = json.loads(res.lambda_search.read_text())
        return runtime


class _AntsInputSpec(ThreadedInputSpec):
    moving = File(exists=True, mandatory=True)
    fixed = File(exists=True, mandatory=True)
    seed = traits.Int(0, usedefault=True)
    sloppy = traits.Bool(False, usedefault=True)


class AntsRegister(SimpleInterface):
    """The classical baseline: ANTs SyN (Mattes MI) through antspyx, same outputs."""

    input_spec = _AntsInputSpec
    output_spec = _RegOutputSpec

    def _run_interface(self, runtime):
        from ..processing.register import ants_syn_register

        use_threads(self.inputs)
        kwargs = {"iterations": (20, 10, 0)} if self.inputs.sloppy else {}
        res = ants_syn_register(
            self.inputs.moving, self.inputs.fixed, os.getcwd(), seed=self.inputs.seed, **kwargs
        )
        self._results.update(
            forward_field=str(res.forward_field),
            inverse_field=str(res.inverse_field),
            moved=str(res.moved),
            method="ants-syn",
        )
        return runtime


class _ExportInputSpec(BaseInterfaceInputSpec):
    affine = File(exists=True, desc="reference -> subject affine (ITK)")
    forward_field = File(exists=True, mandatory=True)
    inverse_field = File(exists=True, mandatory=True)


class _ExportOutputSpec(TraitedSpec):
    reference_to_subject = File(exists=True, desc="resamples the subject onto the reference")
    subject_to_reference = File(exists=True, desc="resamples the reference onto the subject")


class ExportTransforms(SimpleInterface):
    """Affine + displacement as ITK composite ``.h5`` files, both directions."""

    input_spec = _ExportInputSpec
    output_spec = _ExportOutputSpec

    def _run_interface(self, runtime):
        from ..processing.model_space import export_transforms

        aff = self.inputs.affine if isdefined(self.inputs.affine) else None
        r2s, s2r = export_transforms(
            aff, self.inputs.forward_field, self.inputs.inverse_field, os.getcwd()
        )
        self._results["reference_to_subject"] = str(r2s)
        self._results["subject_to_reference"] = str(s2r)
        return runtime


class _LambdaSweepInputSpec(ThreadedInputSpec):
    moving = File(exists=True, mandatory=True, desc="subject on the model grid (affine only)")
    fixed = File(exists=True, mandatory=True, desc="reference on the model grid")
    model = File(exists=True, mandatory=True, desc="model bundle")
    lam = traits.Float(desc="lambda of the run (marked in the strip)")
    device = traits.Str("cpu", usedefault=True)
    mask = File(exists=True)
    reference_labels = File(exists=True, desc="reference labels (reference grid)")
    subject_labels = File(exists=True, desc="subject labels (subject space)")
    affine = File(exists=True, desc="reference -> subject affine (ITK)")


class _LambdaSweepOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the sweep (.npz): moved images, log|J|, scores")


class LambdaSweep(SimpleInterface):
    """The subject registered by the network at about five lambdas of the bundle's range
    (:func:`contrareg_bids.processing.lambda_strip.sweep_lambdas`), for the report's lambda
    strip (``LambdaStripReport`` draws it)."""

    input_spec = _LambdaSweepInputSpec
    output_spec = _LambdaSweepOutputSpec

    def _run_interface(self, runtime):
        from ..processing.lambda_strip import sweep_lambdas

        use_threads(self.inputs, torch=True)
        optional = {
            name: getattr(self.inputs, name)
            for name in ("lam", "mask", "reference_labels", "subject_labels", "affine")
            if isdefined(getattr(self.inputs, name))
        }
        out, _ = sweep_lambdas(
            self.inputs.moving,
            self.inputs.fixed,
            self.inputs.model,
            os.path.join(os.getcwd(), "lambda_sweep.npz"),
            device=self.inputs.device,
            **optional,
        )
        self._results["out_file"] = str(out)
        return runtime
