"""Train-level node: one subject's volumes on the model grid, as the trainer reads them."""

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


class _TrainingVolumesInputSpec(BaseInterfaceInputSpec):
    moving = File(exists=True, mandatory=True, desc="normalised moving-modality image")
    other = File(exists=True, desc="normalised fixed-modality image on the moving grid")
    mask = File(exists=True, mandatory=True, desc="brain mask on the moving grid")
    labels = File(exists=True, desc="label map of the subject (any grid, world-aligned)")
    reference = File(exists=True, mandatory=True, desc="normalised reference image")
    reference_mask = File(exists=True, desc="reference brain mask (centres the grid)")
    affine = File(exists=True, desc="reference -> subject affine")
    shape = traits.Tuple(traits.Int, traits.Int, traits.Int, mandatory=True)
    spacing = traits.Tuple(traits.Float, traits.Float, traits.Float, mandatory=True)


class _TrainingVolumesOutputSpec(TraitedSpec):
    moving = File(exists=True)
    fixed = File(desc="fixed modality on the model grid (when the subject has one)")
    mask = File(exists=True)
    labels = File(desc="labels on the model grid (when given)")


class TrainingVolumes(SimpleInterface):
    """Moving and fixed modality, brain mask and labels of a subject on the model grid
    (:func:`contrareg_bids.processing.model_space.training_volumes`)."""

    input_spec = _TrainingVolumesInputSpec
    output_spec = _TrainingVolumesOutputSpec

    def _run_interface(self, runtime):
        from ..processing.model_space import training_volumes

        def opt(value):
            return value if isdefined(value) else None

        res = training_volumes(
            self.inputs.moving,
            self.inputs.reference,
            opt(self.inputs.affine),
            self.inputs.shape,
            self.inputs.spacing,
            os.getcwd(),
            mask_path=self.inputs.mask,
            other_path=opt(self.inputs.other),
            labels_path=opt(self.inputs.labels),
            reference_mask=opt(self.inputs.reference_mask),
        )
        for name in ("moving", "fixed", "mask", "labels"):
            if getattr(res, name) is not None:
                self._results[name] = str(getattr(res, name))
        return runtime
