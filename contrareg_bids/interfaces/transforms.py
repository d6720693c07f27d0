"""Apply exported transforms to images and label maps."""

from __future__ import annotations

import os

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from ._threads import ThreadedInputSpec, use_threads


class _ApplyWarpInputSpec(ThreadedInputSpec):
    in_file = File(exists=True, mandatory=True, desc="image or label map to resample")
    reference = File(exists=True, mandatory=True, desc="grid of the output")
    transforms = InputMultiObject(
        File(exists=True),
        mandatory=True,
        desc="ITK transforms in antspyx transformlist order: the FIRST acts first on the "
        "output-grid point (e.g. [reference_to_subject.h5, coregistration.mat])",
    )
    interpolation = traits.Enum("linear", "nearest", "label", usedefault=True)
    out_name = traits.Str("warped.nii.gz", usedefault=True)


class _ApplyWarpOutputSpec(TraitedSpec):
    out_file = File(exists=True)


class ApplyWarp(SimpleInterface):
    """Resample through ITK transforms (SimpleITK): linear for images, nearest or one-hot
    linear (``label``) for label maps."""

    input_spec = _ApplyWarpInputSpec
    output_spec = _ApplyWarpOutputSpec

    def _run_interface(self, runtime):
        from ..io.transforms import apply_transform

        use_threads(self.inputs)
        out = apply_transform(
            self.inputs.in_file,
            self.inputs.reference,
            list(self.inputs.transforms),
            os.path.join(os.getcwd(), self.inputs.out_name),
            self.inputs.interpolation,
        )
        self._results["out_file"] = str(out)
        return runtime


class _ExportLinearInputSpec(BaseInterfaceInputSpec):
    transform = File(exists=True, mandatory=True, desc="linear transform (ANTs .mat, ITK)")


class _ExportLinearOutputSpec(TraitedSpec):
    forward = File(exists=True, desc="the transform as ITK .h5")
    inverse = File(exists=True, desc="its inverse as ITK .h5")


class ExportLinearTransform(SimpleInterface):
    """A linear transform and its inverse as ITK ``.h5`` files (``from-/to-`` outputs)."""

    input_spec = _ExportLinearInputSpec
    output_spec = _ExportLinearOutputSpec

    def _run_interface(self, runtime):
        from ..io.transforms import export_linear_pair

        fwd, inv = export_linear_pair(
            self.inputs.transform,
            os.path.join(os.getcwd(), "forward_xfm.h5"),
            os.path.join(os.getcwd(), "inverse_xfm.h5"),
        )
        self._results.update(forward=str(fwd), inverse=str(inv))
        return runtime
