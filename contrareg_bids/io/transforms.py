"""ITK transforms on disk: displacement fields, affines, composites, resampling.

Conventions (``docs/conventions.md``, "On disk"): every transform written here maps points of
the FIXED (reference) space to the MOVING (subject) space, in millimetres, in ITK's LPS world.
Inside the package a displacement is ``(3, X, Y, Z)`` in voxels of a RAS-ordered grid with a
NIfTI (RAS) affine ``A``; on disk it becomes an ITK displacement field:

* ``d_ras = A[:3, :3] @ u`` then ``d_lps = diag(-1, -1, 1) @ d_ras`` (:func:`voxel_disp_to_world`);
* a 5-D NIfTI ``(X, Y, Z, 1, 3)`` with intent ``vector`` (what ANTs writes), or
* a ``DisplacementFieldTransform`` inside an ITK composite ``.h5``.

Images are always read with nibabel (:mod:`contrareg_bids.io.images`) and handed to SimpleITK
with a geometry computed from the nibabel affine (:func:`image_from_array`), so the
voxel-to-world mapping is the one the rest of the package uses even for headers that ITK and
nibabel interpret differently (e.g. sform vs
qform disagreements). Every file is written atomically: to a temporary name in the target
folder (with the same extension, because ITK picks the format from it), then ``os.replace``.

The ordering rule of ITK's ``CompositeTransform`` is the one thing that is easy to get wrong:
transforms are applied to a point in the REVERSE order of addition (the last one added acts
first), exactly like the ``-t`` list of ``antsApplyTransforms``. :func:`make_composite` hides
it behind ``affine_first`` and the tests check it on points.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import SimpleITK as sitk

from .atomic import atomic_output
from .images import load_nifti, read_labels, read_volume, write_nifti

__all__ = [
    "LPS",
    "Interpolation",
    "affine_from_ants",
    "affine_from_image",
    "apply_transform",
    "array_from_image",
    "atomic_output",
    "chain_transforms",
    "compose_to_field",
    "displacement_image",
    "displacement_transform",
    "image_from_array",
    "make_composite",
    "read_ants_affine",
    "read_displacement_nifti",
    "read_transform",
    "reference_image",
    "resample_image",
    "sitk_geometry",
    "sitk_image_from_file",
    "sitk_labels_from_file",
    "transform_points",
    "voxel_disp_to_world",
    "world_disp_to_voxel",
    "write_affine",
    "write_composite",
    "write_displacement_nifti",
]

#: RAS <-> LPS flip (its own inverse).
LPS = np.diag([-1.0, -1.0, 1.0])

Interpolation = Literal["linear", "nearest", "label"]

_INTERPOLATORS = {
    "linear": sitk.sitkLinear,
    "nearest": sitk.sitkNearestNeighbor,
    # one-hot linear: each label's indicator interpolated linearly, arg-max taken
    "label": sitk.sitkLabelLinear,
}

PathLike = str | os.PathLike


# --------------------------------------------------------------------------- atomic writes


# --------------------------------------------------------------------------- geometry


def _check_affine(affine: np.ndarray, what: str = "affine") -> np.ndarray:
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.isfinite(a).all():
        raise ValueError(f"{what} must be a finite 4x4 matrix, got shape {a.shape}")
    if abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise ValueError(f"{what} is singular: {a[:3, :3].tolist()}")
    return a


def sitk_geometry(
    affine: np.ndarray,
) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """ITK ``(origin, spacing, direction)`` (LPS) of a grid with the NIfTI (RAS) ``affine``.

    ``lps(i) = LPS @ (M @ i + t) = origin + D @ diag(spacing) @ i`` gives ``origin = LPS @ t``,
    ``spacing`` = column norms of ``M``, ``D = LPS @ M / spacing``.
    """
    a = _check_affine(affine)
    m = a[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    direction = LPS @ m / spacing
    origin = LPS @ a[:3, 3]
    return tuple(origin.tolist()), tuple(spacing.tolist()), tuple(direction.ravel().tolist())


def affine_from_image(img: sitk.Image) -> np.ndarray:
    """NIfTI (RAS) 4x4 affine of a 3-D SimpleITK image (inverse of :func:`sitk_geometry`)."""
    d = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    s = np.asarray(img.GetSpacing(), dtype=np.float64)
    o = np.asarray(img.GetOrigin(), dtype=np.float64)
    a = np.eye(4)
    a[:3, :3] = LPS @ d * s
    a[:3, 3] = LPS @ o
    return a


def _set_geometry(img: sitk.Image, affine: np.ndarray) -> sitk.Image:
    origin, spacing, direction = sitk_geometry(affine)
    img.SetOrigin(origin)
    img.SetSpacing(spacing)
    img.SetDirection(direction)
    return img


def image_from_array(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """SimpleITK image of an ``(X, Y, Z)`` array (or ``(3, X, Y, Z)`` vectors) on ``affine``.

    SimpleITK arrays are ``(Z, Y, X[, C])``; the transposition happens here only.
    """
    arr = np.asarray(array)
    if arr.ndim == 3:
        img = sitk.GetImageFromArray(np.ascontiguousarray(arr.T))
    elif arr.ndim == 4 and arr.shape[0] == 3:
        img = sitk.GetImageFromArray(
            np.ascontiguousarray(np.transpose(arr, (3, 2, 1, 0))), isVector=True
        )
    else:
        raise ValueError(f"array must be (X, Y, Z) or (3, X, Y, Z), got shape {arr.shape}")
    return _set_geometry(img, affine)


def array_from_image(img: sitk.Image) -> np.ndarray:
    """``(X, Y, Z)`` (or ``(3, X, Y, Z)`` for vector images) array of a SimpleITK image."""
    arr = sitk.GetArrayFromImage(img)
    if img.GetNumberOfComponentsPerPixel() > 1:
        return np.transpose(arr, (3, 2, 1, 0))
    return arr.T


def reference_image(affine: np.ndarray, shape: Sequence[int]) -> sitk.Image:
    """An empty (uint8) image that only carries a grid: the ``referenceImage`` of a resampling."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be 3 positive integers, got {shape}")
    img = sitk.Image(list(shape), sitk.sitkUInt8)
    return _set_geometry(img, affine)


def sitk_image_from_file(path: PathLike, dtype: np.dtype | type | None = np.float32) -> sitk.Image:
    """A 3-D NIfTI (read by :func:`~contrareg_bids.io.images.read_volume`) as a SimpleITK
    image carrying the nibabel affine. ``dtype=None`` keeps the stored type."""
    arr, nii = read_volume(path, dtype=dtype, finite=False)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    return image_from_array(arr, nii.affine)


def sitk_labels_from_file(path: PathLike) -> sitk.Image:
    """A label map as a SimpleITK image for nearest / one-hot linear resampling.

    Integer storage is kept; label maps stored as floats are accepted when their values are
    whole numbers (rounded, int32); anything else is refused, naming the file.
    """
    arr, nii = read_labels(path, dtype=None)
    return image_from_array(arr, nii.affine)


# --------------------------------------------------------------------------- displacement fields


def _check_disp(disp_vox: np.ndarray) -> np.ndarray:
    d = np.asarray(disp_vox, dtype=np.float64)
    if d.ndim != 4 or d.shape[0] != 3:
        raise ValueError(f"displacement must be (3, X, Y, Z) voxels, got shape {d.shape}")
    if not np.isfinite(d).all():
        raise ValueError("displacement contains NaN or infinite values")
    return d


def voxel_disp_to_world(disp_vox: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``(3, X, Y, Z)`` displacement in voxels of a RAS grid -> millimetres in LPS (ITK)."""
    d = _check_disp(disp_vox)
    m = LPS @ _check_affine(affine)[:3, :3]
    return np.einsum("ij,j...->i...", m, d)


def world_disp_to_voxel(disp_lps: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Inverse of :func:`voxel_disp_to_world`: LPS millimetres -> voxels of the RAS grid."""
    d = _check_disp(disp_lps)
    m = np.linalg.inv(_check_affine(affine)[:3, :3]) @ LPS
    return np.einsum("ij,j...->i...", m, d)


def displacement_image(disp_vox: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """ITK displacement field image (vector of float64, LPS mm) on the grid of ``affine``."""
    return image_from_array(voxel_disp_to_world(disp_vox, affine), affine)


def displacement_transform(
    disp_vox: np.ndarray, affine: np.ndarray
) -> sitk.DisplacementFieldTransform:
    """``p -> p + d(p)`` (LPS mm); ``d`` is interpolated linearly and is 0 outside the grid."""
    return sitk.DisplacementFieldTransform(displacement_image(disp_vox, affine))


def write_displacement_nifti(disp_vox: np.ndarray, affine: np.ndarray, path: PathLike) -> Path:
    """Write an ITK/ANTs displacement field: 5-D NIfTI ``(X, Y, Z, 1, 3)``, intent vector, LPS mm.

    SimpleITK's NIfTI writer produces exactly ANTs' layout for a 3-component vector image
    (checked in the tests with nibabel and by ``antsApplyTransforms``). Values are float32,
    as ANTs writes them (sub-micrometre precision for displacements of a few cm).
    """
    path = Path(path)
    if not path.name.endswith((".nii", ".nii.gz")):
        raise ValueError(f"{path}: a displacement field file must end in .nii or .nii.gz")
    a = _check_affine(affine)
    cols = a[:3, :3] / np.linalg.norm(a[:3, :3], axis=0)
    if np.abs(cols.T @ cols - np.eye(3)).max() > 1e-4:
        raise ValueError(
            f"{path}: the grid's affine is sheared (non-orthogonal axes); NIfTI displacement "
            "fields cannot store it (ITK would silently coerce it): write a composite .h5"
        )
    img = sitk.Cast(displacement_image(disp_vox, a), sitk.sitkVectorFloat32)  # like ANTs
    with atomic_output(path) as tmp:
        sitk.WriteImage(img, str(tmp), useCompression=path.name.endswith(".gz"))
    return path


def read_displacement_nifti(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read an ITK/ANTs displacement field; return ``(disp_vox (3, X, Y, Z), RAS affine)``.

    The grid must be RAS-ordered for the voxel units to follow the package conventions; other
    orientations are converted with their own affine (the voxel units are then those of that
    grid's axes).
    """
    nii = load_nifti(path)
    shape = nii.shape
    if len(shape) != 5 or shape[3] != 1 or shape[4] != 3:
        raise ValueError(
            f"{path}: not an ITK displacement field (want 5-D (X, Y, Z, 1, 3), got {shape})"
        )
    intent = nii.header.get_intent()[0]
    if intent not in ("vector", "displacement vector"):
        raise ValueError(f"{path}: NIfTI intent is {intent!r}, expected 'vector'")
    data = np.asarray(nii.get_fdata(dtype=np.float64))[:, :, :, 0, :]
    return world_disp_to_voxel(np.moveaxis(data, -1, 0), nii.affine), nii.affine.copy()


# --------------------------------------------------------------------------- affines and files


def read_ants_affine(path: PathLike) -> sitk.AffineTransform:
    """Read an ITK affine file (ANTs ``*GenericAffine.mat``, ``.txt``, ``.tfm``) as affine.

    Rigid, Euler, similarity and matrix-offset transforms are converted to an equivalent
    :class:`SimpleITK.AffineTransform` (same matrix, centre and translation).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such transform file")
    try:
        tx = sitk.ReadTransform(str(path))
    except RuntimeError as exc:
        raise ValueError(f"{path}: not a readable ITK transform file ({exc})") from exc
    tx = tx.Downcast()
    if isinstance(tx, sitk.CompositeTransform) and tx.GetNumberOfTransforms() == 1:
        tx = tx.GetNthTransform(0).Downcast()
    if not hasattr(tx, "GetMatrix") or tx.GetDimension() != 3:
        raise ValueError(f"{path}: holds a {tx.GetName()}, not a 3-D affine transform")
    aff = sitk.AffineTransform(3)
    aff.SetMatrix(tx.GetMatrix())
    aff.SetCenter(tx.GetCenter())
    aff.SetTranslation(tx.GetTranslation())
    return aff


affine_from_ants = read_ants_affine


def write_affine(transform: sitk.Transform, path: PathLike) -> Path:
    """Write an affine as an ITK transform file (``.mat`` like ANTs, or ``.txt``/``.tfm``)."""
    path = Path(path)
    with atomic_output(path) as tmp:
        sitk.WriteTransform(transform, str(tmp))
    return path


def export_linear_pair(transform: PathLike, forward_path: PathLike, inverse_path: PathLike):
    """A linear transform file (ANTs ``.mat``, ITK ``.txt``/``.h5``) written as ITK ``.h5``
    both ways: ``forward_path`` is the transform itself, ``inverse_path`` its inverse
    (e.g. the T1w <-> T2w coregistration of a subject, as nibabies writes it)."""
    tx = read_transform(transform)
    write_affine(tx, forward_path)
    write_affine(tx.GetInverse(), inverse_path)
    return Path(forward_path), Path(inverse_path)


def read_transform(path: PathLike) -> sitk.Transform:
    """Any transform file: ITK ``.h5``/``.mat``/``.txt``/``.tfm`` or a displacement NIfTI."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such transform file")
    if path.name.endswith((".nii", ".nii.gz")):
        disp, affine = read_displacement_nifti(path)
        return displacement_transform(disp, affine)
    try:
        return sitk.ReadTransform(str(path)).Downcast()
    except RuntimeError as exc:
        raise ValueError(f"{path}: not a readable ITK transform file ({exc})") from exc


def _as_transform(tx: sitk.Transform | PathLike) -> sitk.Transform:
    return tx if isinstance(tx, sitk.Transform) else read_transform(tx)


def chain_transforms(
    transforms: sitk.Transform | PathLike | Sequence[sitk.Transform | PathLike],
) -> sitk.Transform:
    """One transform from a transform, a file, or a list in ``antsApplyTransforms`` order.

    As a map of reference points, ``[A, B]`` is ``p -> B(A(p))``: the FIRST entry acts first
    on the point. This is the order of antspyx ``transformlist`` and of repeated ``-t``
    (ANTs' "the last transform is applied first" speaks of the image, not the point):
    antsRegistration's ``fwdtransforms`` ``[1Warp.nii.gz, 0GenericAffine.mat]`` map a fixed
    point through the warp, then the affine. ITK's composite applies the LAST added
    transform first, so the list is added in reverse. (antspyx also silently INVERTS a
    leading ``.mat`` that is followed by a field unless ``whichtoinvert`` is given; this
    function never inverts anything.)
    """
    if not isinstance(transforms, list | tuple):
        return _as_transform(transforms)
    if not transforms:
        raise ValueError("empty list of transforms")
    composite = sitk.CompositeTransform(3)
    for t in reversed(transforms):
        composite.AddTransform(_as_transform(t))
    return composite


# --------------------------------------------------------------------------- composites


def make_composite(
    affine: sitk.Transform | None,
    disp_vox: np.ndarray | None,
    disp_affine: np.ndarray | None,
    *,
    affine_first: bool,
) -> sitk.CompositeTransform:
    """Chain an affine and a displacement field into one ITK composite transform.

    ``affine_first=False`` (reference -> subject): ``T(p) = affine(p + d(p))`` -- the field
    lives on the model grid in reference space, the affine then carries the point into the
    subject. ``affine_first=True`` (subject -> reference, with the INVERSE affine passed):
    ``T(q) = a(q) + d(a(q))`` with ``a = affine``. ITK applies the transform added LAST first,
    so the one that acts first is added last.
    """
    parts: list[sitk.Transform] = []
    if disp_vox is not None:
        if disp_affine is None:
            raise ValueError("disp_affine (the RAS affine of the field's grid) is required")
        parts.append(displacement_transform(disp_vox, disp_affine))
    if affine is not None:
        parts.append(affine)
    if not parts:
        raise ValueError("a composite needs an affine, a displacement field or both")
    # order of action on points, then reverse for ITK's stack
    if affine_first:
        parts.reverse()  # [affine, field] acts affine first
    composite = sitk.CompositeTransform(3)
    for tx in reversed(parts):
        composite.AddTransform(tx)
    return composite


def write_composite(
    path_h5: PathLike,
    affine: sitk.Transform | None,
    disp_vox: np.ndarray | None,
    disp_affine: np.ndarray | None,
    *,
    affine_first: bool,
) -> Path:
    """Write :func:`make_composite` as an ITK HDF5 composite (``.h5``).

    Readable by SimpleITK (``ReadTransform``), ``antsApplyTransforms`` (antspyx
    ``apply_transforms(transformlist=[path])``) and nitransforms (``manip.load(path,
    fmt="itk")``); all three are checked in the tests.
    """
    path = Path(path_h5)
    if not path.name.endswith((".h5", ".hdf5")):
        raise ValueError(f"{path}: a composite transform file must end in .h5")
    composite = make_composite(affine, disp_vox, disp_affine, affine_first=affine_first)
    with atomic_output(path) as tmp:
        sitk.WriteTransform(composite, str(tmp))
    return path


def transform_points(transform: sitk.Transform | PathLike, points_lps: np.ndarray) -> np.ndarray:
    """Map ``(N, 3)`` LPS millimetre points through a transform (reference -> moving)."""
    tx = _as_transform(transform)
    pts = np.asarray(points_lps, dtype=np.float64).reshape(-1, 3)
    return np.array([tx.TransformPoint(tuple(p)) for p in pts])


def compose_to_field(
    transform: sitk.Transform | PathLike | Sequence[sitk.Transform | PathLike],
    reference_affine: np.ndarray,
    shape: Sequence[int],
) -> np.ndarray:
    """Sample a transform (or an ANTs-ordered list, see :func:`chain_transforms`) on a grid.

    Returns the equivalent displacement ``(3, X, Y, Z)`` in voxels of the grid
    (``T(x) = x + u(x)``), ready for :func:`contrareg_bids.nn.integrate.warp` or
    :func:`write_displacement_nifti`.
    """
    tx = chain_transforms(transform)
    ref = reference_image(reference_affine, shape)
    flt = sitk.TransformToDisplacementFieldFilter()
    flt.SetReferenceImage(ref)
    flt.SetOutputPixelType(sitk.sitkVectorFloat64)
    field = flt.Execute(tx)
    return world_disp_to_voxel(array_from_image(field), reference_affine)


# --------------------------------------------------------------------------- resampling


def _interpolator(interpolation: str) -> int:
    try:
        return _INTERPOLATORS[interpolation]
    except KeyError:
        raise ValueError(
            f"interpolation must be one of {sorted(_INTERPOLATORS)}, got {interpolation!r}"
        ) from None


def resample_image(
    moving: sitk.Image,
    reference: sitk.Image,
    transform: sitk.Transform | None = None,
    interpolation: Interpolation = "linear",
    default_value: float = 0.0,
) -> sitk.Image:
    """``out(p) = moving(T(p))`` for every voxel ``p`` of ``reference`` (ITK direction)."""
    tx = transform if transform is not None else sitk.Transform(3, sitk.sitkIdentity)
    return sitk.Resample(
        moving,
        reference,
        tx,
        _interpolator(interpolation),
        float(default_value),
        moving.GetPixelID(),
    )


def apply_transform(
    moving_path: PathLike,
    reference_path: PathLike,
    transform_path: PathLike | Sequence[PathLike] | sitk.Transform | None,
    out_path: PathLike,
    interpolation: Interpolation = "linear",
    default_value: float = 0.0,
) -> Path:
    """Resample ``moving_path`` onto the grid of ``reference_path`` through a transform file.

    The transform maps reference points to moving points (ITK). A list is applied like
    antspyx's ``transformlist`` (:func:`chain_transforms`: the FIRST file acts first on the
    reference point, e.g. ``[field.nii.gz, affine.mat]``). ``None``
    means identity (a pure regridding). ``"linear"`` writes float32; ``"nearest"`` and
    ``"label"`` (one-hot linear, like ANTs' ``genericLabel``) keep the stored integer type
    of a label map.
    """
    _interpolator(interpolation)
    is_label = interpolation in ("nearest", "label")
    moving = sitk_labels_from_file(moving_path) if is_label else sitk_image_from_file(moving_path)
    ref_nii = load_nifti(reference_path)
    ref = reference_image(ref_nii.affine, ref_nii.shape[:3])
    tx = None if transform_path is None else chain_transforms(transform_path)
    out = resample_image(moving, ref, tx, interpolation, default_value)
    arr = array_from_image(out)
    return write_nifti(arr, ref_nii.affine, out_path, dtype=None if is_label else np.float32)
