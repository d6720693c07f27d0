"""Preprocessing nodes: validation/standardisation, N4, brain extraction, brain mask,
normalisation, affine."""

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


def _out(name: str) -> str:
    return os.path.join(os.getcwd(), name)


class _StandardizeInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="input NIfTI")
    kind = traits.Enum("image", "mask", "labels", usedefault=True)


class _StandardizeOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="3-D, RAS, typed copy")
    orientation = traits.Str(desc="voxel axes of the input, e.g. LAS")


class StandardizeImage(SimpleInterface):
    """Validate (3-D, finite, sane affine) and reorient to RAS; a clear error names the file."""

    input_spec = _StandardizeInputSpec
    output_spec = _StandardizeOutputSpec

    def _run_interface(self, runtime):
        from ..io.images import standardize_image

        res = standardize_image(
            self.inputs.in_file, _out(f"std_{self.inputs.kind}.nii.gz"), kind=self.inputs.kind
        )
        self._results["out_file"] = str(res.out_file)
        self._results["orientation"] = res.orientation
        return runtime


class _N4InputSpec(ThreadedInputSpec):
    in_file = File(exists=True, mandatory=True)
    mask_file = File(exists=True)
    sloppy = traits.Bool(False, usedefault=True, desc="fewer iterations")
    seed = traits.Int(0, usedefault=True)


class _OutFileSpec(TraitedSpec):
    out_file = File(exists=True)


class N4BiasCorrect(SimpleInterface):
    """N4 bias-field correction (antspyx)."""

    input_spec = _N4InputSpec
    output_spec = _OutFileSpec

    def _run_interface(self, runtime):
        from ..processing.n4 import n4_bias_correct

        use_threads(self.inputs)
        kwargs = {"iterations": (20, 20)} if self.inputs.sloppy else {}
        mask = self.inputs.mask_file if isdefined(self.inputs.mask_file) else None
        out = n4_bias_correct(
            self.inputs.in_file, _out("n4.nii.gz"), mask, seed=self.inputs.seed, **kwargs
        )
        self._results["out_file"] = str(out)
        return runtime


class _BrainMaskInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="subject image (RAS)")
    given_mask = File(exists=True, desc="precomputed brain mask (derivatives)")
    reference_mask = File(exists=True, desc="reference brain mask")
    affine = File(exists=True, desc="reference -> subject affine (ITK)")


class _BrainMaskOutputSpec(TraitedSpec):
    out_file = File(exists=True)
    source = traits.Enum("given", "skull-stripped", "reference")


class BrainMask(SimpleInterface):
    """Brain mask: the given one, else detected on a skull-stripped image, else the
    reference mask carried into the subject through the affine pre-alignment."""

    input_spec = _BrainMaskInputSpec
    output_spec = _BrainMaskOutputSpec

    def _run_interface(self, runtime):
        from ..io.images import load_nifti, standardize_image
        from ..processing.masks import mask_from_skullstripped, propagate_mask, write_mask

        out = _out("brain_mask.nii.gz")
        if isdefined(self.inputs.given_mask):
            standardize_image(self.inputs.given_mask, out, kind="mask")
            source = "given"
        else:
            detected = mask_from_skullstripped(self.inputs.in_file)
            if detected is not None:
                img = load_nifti(self.inputs.in_file)
                write_mask(detected, img.affine, out)
                source = "skull-stripped"
            else:
                if not (isdefined(self.inputs.reference_mask) and isdefined(self.inputs.affine)):
                    raise ValueError(
                        f"{self.inputs.in_file}: not skull-stripped and no brain mask given; "
                        "provide one with --derivatives or use a reference with a brain mask"
                    )
                propagate_mask(
                    self.inputs.reference_mask,
                    self.inputs.affine,
                    self.inputs.in_file,
                    out,
                    dilate_mm=2.0,
                )
                source = "reference"
        self._results["out_file"] = out
        self._results["source"] = source
        return runtime


class _NormalizeInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True)
    mask_file = File(exists=True)
    lower = traits.Float(0.5, usedefault=True)
    upper = traits.Float(99.5, usedefault=True)


class NormalizeIntensity(SimpleInterface):
    """Robust [0, 1] normalisation inside the brain mask (percentiles ``lower``, ``upper``)."""

    input_spec = _NormalizeInputSpec
    output_spec = _OutFileSpec

    def _run_interface(self, runtime):
        from ..processing.normalize import normalize_intensity

        mask = self.inputs.mask_file if isdefined(self.inputs.mask_file) else None
        res = normalize_intensity(
            self.inputs.in_file, _out("norm.nii.gz"), mask, self.inputs.lower, self.inputs.upper
        )
        self._results["out_file"] = str(res.out_file)
        return runtime


class _SeededInputSpec(ThreadedInputSpec):
    """The ANTs steps' common inputs: the seed (``--random-seed``) and ``--sloppy``."""

    seed = traits.Int(0, usedefault=True)
    sloppy = traits.Bool(False, usedefault=True, desc="test-sized schedules")


class _SkullStripInputSpec(_SeededInputSpec):
    in_file = File(exists=True, mandatory=True, desc="bias-corrected subject image, with skull")
    reference = File(exists=True, mandatory=True, desc="reference image (a brain)")
    reference_mask = File(exists=True, mandatory=True, desc="the reference's brain mask")


class _SkullStripOutputSpec(TraitedSpec):
    out_mask = File(exists=True, desc="brain mask, subject grid")
    out_brain = File(exists=True, desc="the image inside the mask")


class SkullStrip(SimpleInterface):
    """Brain extraction with the reference's brain mask (processing.skullstrip), in a
    worker on one ITK thread so that the seeded result is the same on every run."""

    input_spec = _SkullStripInputSpec
    output_spec = _SkullStripOutputSpec

    def _run_interface(self, runtime):
        from ..processing._ants import run_reproducibly
        from ..processing.skullstrip import extract_brain

        use_threads(self.inputs)
        res = run_reproducibly(
            extract_brain,
            self.inputs.in_file,
            self.inputs.reference,
            self.inputs.reference_mask,
            os.getcwd(),
            seed=self.inputs.seed,
            sloppy=self.inputs.sloppy,
        )
        self._results["out_mask"] = str(res.mask)
        self._results["out_brain"] = str(res.brain)
        return runtime


class _AffineInputSpec(_SeededInputSpec):
    fixed = File(exists=True, mandatory=True, desc="reference (or the image to align to)")
    moving = File(exists=True, mandatory=True, desc="subject image")
    transform_type = traits.Enum("Affine", "Rigid", "Similarity", usedefault=True)


class _AffineOutputSpec(TraitedSpec):
    transform = File(exists=True, desc="ITK affine, fixed -> moving points")
    moved = File(exists=True, desc="moving resampled on the fixed grid")


class AffineRegister(SimpleInterface):
    """Affine (or rigid) alignment with ANTs through antspyx, Mattes mutual information."""

    input_spec = _AffineInputSpec
    output_spec = _AffineOutputSpec

    def _run_interface(self, runtime):
        from ..processing.affine import affine_register

        use_threads(self.inputs)
        kwargs = {}
        if self.inputs.sloppy:
            kwargs = {
                "iterations": (200, 100, 20),
                "shrink_factors": (4, 2, 1),
                "smoothing_sigmas": (2, 1, 0),
            }
        res = affine_register(
            self.inputs.fixed,
            self.inputs.moving,
            _out("affine_"),
            transform_type=self.inputs.transform_type,
            seed=self.inputs.seed,
            **kwargs,
        )
        self._results["transform"] = str(res.transform_path)
        self._results["moved"] = str(res.moved_path)
        return runtime


class _PrepareInputSpec(BaseInterfaceInputSpec):
    moving = File(exists=True, mandatory=True, desc="normalised subject image")
    reference = File(exists=True, mandatory=True, desc="normalised reference image")
    reference_mask = File(exists=True)
    affine = File(exists=True, desc="reference -> subject affine")
    shape = traits.Tuple(traits.Int, traits.Int, traits.Int, mandatory=True)
    spacing = traits.Tuple(traits.Float, traits.Float, traits.Float, mandatory=True)
    phase_sampling = traits.Bool(
        False,
        usedefault=True,
        desc="also write the pair at the reference's own resolution when the model grid is "
        "coarser (for the phase-sampled refinement)",
    )


class _PrepareOutputSpec(TraitedSpec):
    moving = File(exists=True)
    fixed = File(exists=True)
    fixed_mask = File()
    fine_moving = File(desc="the subject at the reference's resolution (phase_sampling)")
    fine_fixed = File(desc="the reference at its resolution (phase_sampling)")


class PrepareModelPair(SimpleInterface):
    """Both images on the model grid (the subject through its affine, in one resampling)."""

    input_spec = _PrepareInputSpec
    output_spec = _PrepareOutputSpec

    def _run_interface(self, runtime):
        from ..processing.model_space import phase_sampling_factor, prepare_model_pair

        aff = self.inputs.affine if isdefined(self.inputs.affine) else None
        mask = self.inputs.reference_mask if isdefined(self.inputs.reference_mask) else None
        factor = None
        if self.inputs.phase_sampling:
            factor = phase_sampling_factor(self.inputs.reference, self.inputs.spacing)
        pair = prepare_model_pair(
            self.inputs.moving,
            self.inputs.reference,
            aff,
            self.inputs.shape,
            self.inputs.spacing,
            os.getcwd(),
            reference_mask=mask,
            fine_factor=factor,
        )
        self._results["moving"] = str(pair.moving)
        self._results["fixed"] = str(pair.fixed)
        if pair.fixed_mask is not None:
            self._results["fixed_mask"] = str(pair.fixed_mask)
        if pair.fine_moving is not None:
            self._results["fine_moving"] = str(pair.fine_moving)
            self._results["fine_fixed"] = str(pair.fine_fixed)
        return runtime
