"""Read, validate and standardise NIfTI images: the package's one NIfTI reader.

Reading: :func:`load_nifti` (header only, data left on disk), :func:`load_image` (all data
read now and checked, for :func:`standardize_image`), :func:`read_volume` (a 3-D array and the
image it came from), :func:`read_labels` (integer label maps) and :func:`read_mask` (boolean
masks). Every module that needs voxels from a file calls one of these, so that a missing,
truncated or 4-D file gives the same error, naming the file, wherever it is read.

Standardising (data flow step 2):

Every image entering the pipeline goes through :func:`standardize_image`: it must be 3-D (a
singleton 4th dimension is squeezed), finite, with a usable affine; it is reoriented to RAS
(closest canonical) and written with a predictable dtype. Bad input raises :class:`ImageError`
with a message naming the file, the problem and what to do, so one broken subject fails
alone.

qform/sform policy (the reference is NiPreps' ``niworkflows.interfaces.header.ValidateImage``):

* sform and qform both set (codes > 0) and agreeing within :data:`XFORM_ATOL_MM` at the
  corners of the grid: nothing to say.
* Both set but disagreeing: the **sform wins** (it is what nibabel, FSL and ITK/ANTs read when
  its code is set, so it is what every other tool already sees), a warning reports the size
  of the disagreement. ``strict_xforms=True`` turns this into an :class:`ImageError`.
* sform set but invalid (singular, or its voxel sizes contradict ``pixdim``) and a valid qform:
  the qform is used, with a warning.
* Only one set: that one is used silently.
* Neither set: the NIfTI "base" affine (voxel sizes only, LAS) is used with a loud warning
  (``strict_xforms=True``: an error), as NiPreps does.

The output carries the chosen affine in both sform and qform (same code), so no tool downstream
can read a different orientation than the one used here.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from .atomic import atomic_output

__all__ = [
    "MAX_VOXEL_MM",
    "XFORM_ATOL_MM",
    "ImageError",
    "ImageNotFoundError",
    "StandardizeResult",
    "as_labels",
    "as_volume",
    "check_finite",
    "load_image",
    "load_nifti",
    "orientation_codes",
    "read_labels",
    "read_mask",
    "read_volume",
    "same_grid",
    "standardize_image",
    "validate_image",
    "write_atomic",
    "write_nifti",
]

#: Largest voxel edge (mm) accepted: anything coarser is a broken header, not an MRI.
MAX_VOXEL_MM = 10.0
#: Largest displacement (mm) of any grid corner between qform and sform to call them equal.
XFORM_ATOL_MM = 1e-3

Kind = Literal["image", "mask", "labels"]
_KINDS = ("image", "mask", "labels")
_READ_ERRORS = (
    OSError,  # includes gzip.BadGzipFile, truncated uncompressed files
    EOFError,  # truncated .nii.gz
    zlib.error,  # corrupt deflate stream
    ValueError,
    ImageFileError,
    HeaderDataError,
)
_UNIT_TO_MM = {"meter": 1000.0, "mm": 1.0, "micron": 1e-3, "unknown": 1.0}


class ImageError(ValueError):
    """An input image cannot be used as is; the message names the file and the fix."""


class ImageNotFoundError(ImageError, FileNotFoundError):
    """The file does not exist: an :class:`ImageError` that ``except FileNotFoundError``
    also catches, as callers of the readers expect of a missing file."""


@dataclass
class StandardizeResult:
    """What :func:`standardize_image` wrote and what it had to change.

    ``orientation``/``original_shape`` describe the input; ``shape``/``zooms`` the RAS output.
    """

    out_file: Path
    orientation: str
    shape: tuple[int, int, int]
    zooms: tuple[float, float, float]
    original_shape: tuple[int, ...] = ()
    reoriented: bool = False
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------
def _open(path: Path, *, mmap: bool | str = True) -> nib.spatialimages.SpatialImage:
    """``nibabel.load`` with the checks and messages every reader shares (data not read)."""
    if not path.exists():
        raise ImageNotFoundError(f"{path}: file not found. Check the path (and the bind mounts).")
    if not path.is_file():
        raise ImageError(f"{path}: not a file. Give the path of a .nii or .nii.gz image.")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: empty file (0 bytes). Copy or download it again.")
    try:
        return nib.load(str(path), mmap=mmap)
    except _READ_ERRORS as exc:
        raise ImageError(
            f"{path}: cannot be read as a NIfTI image ({type(exc).__name__}: {exc}). "
            "Check that the file is a complete .nii or .nii.gz file; re-export or copy it again."
        ) from exc


def _data(img: nib.spatialimages.SpatialImage, path: Path) -> np.ndarray:
    """The (scaled) voxels of ``img``, with an error naming ``path`` when they are unreadable."""
    try:
        return np.asanyarray(img.dataobj)
    except _READ_ERRORS as exc:
        raise ImageError(
            f"{path}: the header is readable but the voxel data is not "
            f"({type(exc).__name__}: {exc}); the file is probably truncated or corrupt. "
            "Copy or download it again (compare its size or checksum with the source)."
        ) from exc


def load_nifti(path: str | os.PathLike[str]) -> nib.spatialimages.SpatialImage:
    """Open an image for its header and affine; the voxels stay on disk until asked for."""
    return _open(Path(path))


def load_image(path: str | os.PathLike[str]) -> nib.Nifti1Image:
    """Load a NIfTI file and read all of its data now.

    Reading the voxels eagerly is the point: a truncated ``.nii.gz`` otherwise loads fine and
    fails much later inside a registration node with an unhelpful zlib/EOF message. The
    returned image holds the data in memory with the original header (qform/sform codes
    included); NIfTI-2 and ``.hdr/.img`` pairs are converted to an in-memory NIfTI-1 image.
    """
    path = Path(path)
    img = _open(path)
    if not isinstance(img, nib.Nifti1Pair):  # Nifti1Image, Nifti2Image and pairs all are
        raise ImageError(
            f"{path}: not a NIfTI image (nibabel read it as {type(img).__name__}). "
            "Convert it to NIfTI (.nii.gz), e.g. with dcm2niix or mri_convert."
        )
    data = _data(img, path)
    if path.name.lower().endswith(".gz"):
        _verify_gzip(path)
    header = nib.Nifti1Header.from_header(img.header)
    return nib.Nifti1Image(data, img.affine, header=header)


def _volume_shape(shape: tuple[int, ...], name: str) -> tuple[int, int, int]:
    spatial = tuple(int(n) for n in shape)
    while len(spatial) > 3 and spatial[-1] == 1:
        spatial = spatial[:-1]
    if len(spatial) != 3:
        extra = f" ({int(np.prod(shape[3:]))} volumes)" if len(shape) > 3 else ""
        raise ImageError(f"{name}: expected a 3-D volume, got shape {tuple(shape)}{extra}")
    if min(spatial) < 1:
        raise ImageError(f"{name}: empty volume of shape {tuple(shape)}")
    return spatial  # type: ignore[return-value]


def as_volume(arr: np.ndarray, name: str) -> np.ndarray:
    """``arr`` as 3-D: trailing singleton axes dropped, anything else refused (naming ``name``)."""
    return arr.reshape(_volume_shape(arr.shape, name))


def check_finite(arr: np.ndarray, name: str) -> None:
    """Refuse NaN/inf voxels up front: they would propagate silently through every step."""
    if arr.dtype.kind != "f":
        return
    finite = np.isfinite(arr)
    if not finite.all():
        n_nan = int(np.isnan(arr).sum())
        n_inf = int(finite.size - finite.sum() - n_nan)
        raise ImageError(
            f"{name}: {n_nan} NaN and {n_inf} infinite voxel(s) (non-finite values). Replace "
            "them (e.g. `fslmaths IN -nan OUT`, or numpy.nan_to_num) before running."
        )


def read_volume(
    path: str | os.PathLike[str],
    dtype: np.dtype | type | None = np.float32,
    *,
    finite: bool = True,
) -> tuple[np.ndarray, nib.spatialimages.SpatialImage]:
    """``(array (X, Y, Z), image)`` of a 3-D image file; the image gives affine and header.

    The voxels are read whole (no memory map) with the NIfTI scaling applied and cast to
    ``dtype`` (``None``: the stored, scaled type). Trailing singleton axes are dropped; other
    shapes, and with ``finite`` NaN/inf values, are refused with a message naming the file.
    """
    path = Path(path)
    img = _open(path, mmap=False)
    shape = _volume_shape(img.shape, str(path))
    arr = _data(img, path).reshape(shape)
    if dtype is not None:
        arr = np.asarray(arr, dtype=dtype)
    if finite:
        check_finite(arr, str(path))
    return arr, img


def as_labels(arr: np.ndarray, name: str, dtype: np.dtype | type | None = np.int64) -> np.ndarray:
    """A label map as integers: float storage must hold whole numbers (within
    :data:`~contrareg_bids.metrics.LABEL_TOLERANCE`).

    ``dtype=None`` keeps an integer storage type (floats become int32, bool uint8), which
    resampling needs to write labels back in their own type.
    """
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ImageError(f"{name}: non-numeric data of dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise ImageError(f"{name}: complex-valued data is not supported")
    if np.issubdtype(arr.dtype, np.floating):
        from ..metrics import rounded_labels

        check_finite(arr, name)
        try:
            rounded = rounded_labels(arr, name)
        except ValueError as err:
            raise ImageError(str(err)) from None
        arr = rounded.astype(np.int32) if dtype is None else rounded
    elif arr.dtype == bool and dtype is None:
        arr = arr.astype(np.uint8)
    return np.asarray(arr) if dtype is None else np.asarray(arr).astype(dtype)


def read_labels(
    path: str | os.PathLike[str], dtype: np.dtype | type | None = np.int64
) -> tuple[np.ndarray, nib.spatialimages.SpatialImage]:
    """``(labels (X, Y, Z), image)`` of a label map file (see :func:`as_labels`)."""
    arr, img = read_volume(path, dtype=None, finite=False)
    return as_labels(arr, str(path), dtype), img


def read_mask(
    path: str | os.PathLike[str],
    like: nib.spatialimages.SpatialImage | None = None,
    *,
    allow_empty: bool = False,
) -> np.ndarray:
    """Boolean mask (``> 0``) of a file; with ``like`` it must share that image's grid.

    An empty mask is refused unless ``allow_empty``: a step that needs a brain region would
    otherwise fail later with a message that does not name the file.
    """
    arr, img = read_volume(path)
    if like is not None:
        if arr.shape != like.shape[:3] or not np.allclose(img.affine, like.affine, atol=1e-4):
            raise ImageError(
                f"{path}: mask grid {arr.shape} does not match the image grid {like.shape[:3]} "
                "(shape and affine must agree)"
            )
    mask = arr > 0
    if not allow_empty and not mask.any():
        raise ImageError(f"{path}: the mask is empty")
    return mask


def _verify_gzip(path: Path) -> None:
    """Decompress to the end so that gzip checks its CRC and length.

    nibabel stops reading once it has the voxels, before the trailer: a damaged stream that
    still inflates would otherwise give silently wrong voxels.
    """
    try:
        with gzip.open(path, "rb") as fobj:
            while fobj.read(1 << 24):
                pass
    except _READ_ERRORS as exc:
        raise ImageError(
            f"{path}: the compressed data is corrupt ({type(exc).__name__}: {exc}). "
            "Copy or download it again (compare its size or checksum with the source)."
        ) from exc


# --------------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------------
def orientation_codes(affine: np.ndarray) -> str:
    """Axis codes of an affine, e.g. ``"LAS"``; ``"???"`` for a degenerate affine."""
    try:
        return "".join(str(c) for c in nib.aff2axcodes(affine))
    except Exception:  # a degenerate matrix has no orientation
        return "???"


def _corner_displacement_mm(a: np.ndarray, b: np.ndarray, shape: tuple[int, ...]) -> float:
    """Largest distance (mm) between where ``a`` and ``b`` put the 8 corners of the grid."""
    extent = [max(int(n) - 1, 0) for n in shape[:3]]
    corners = np.array(
        [[i, j, k, 1.0] for i in (0, extent[0]) for j in (0, extent[1]) for k in (0, extent[2])]
    ).T
    return float(np.max(np.linalg.norm((a @ corners - b @ corners)[:3], axis=0)))


def _rotation_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Angle (degrees) of the rotation between the direction cosines of two affines."""
    ra = a[:3, :3] / np.linalg.norm(a[:3, :3], axis=0)
    rb = b[:3, :3] / np.linalg.norm(b[:3, :3], axis=0)
    cos = (np.trace(ra.T @ rb) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def _usable(affine: np.ndarray | None) -> bool:
    return (
        affine is not None
        and bool(np.all(np.isfinite(affine)))
        and abs(float(np.linalg.det(affine[:3, :3]))) > 1e-12
    )


def _resolve_affine(
    img: nib.Nifti1Image, name: str, *, strict_xforms: bool = False
) -> tuple[np.ndarray, int, list[str]]:
    """Choose the affine to trust (see the module docstring); return it, its code, warnings."""
    hdr = img.header
    scode = int(hdr["sform_code"])
    qcode = int(hdr["qform_code"])
    shape = img.shape
    warnings: list[str] = []
    try:
        qform = hdr.get_qform()
    except Exception:  # an invalid quaternion
        qform = None
    sform = hdr.get_sform()
    valid_q = _usable(qform)
    valid_s = _usable(sform)
    pixdim = np.asarray(hdr.get_zooms()[:3], dtype=float)
    s_zooms_ok = valid_s and np.allclose(
        np.linalg.norm(sform[:3, :3], axis=0), pixdim, rtol=1e-3, atol=1e-5
    )

    if scode > 0 and s_zooms_ok and qcode > 0 and valid_q:
        dist = _corner_displacement_mm(qform, sform, shape)
        if dist <= XFORM_ATOL_MM:
            return sform, scode, warnings
        angle = _rotation_deg(qform, sform)
        problem = (
            f"{name}: the qform and sform of the header disagree (up to {dist:.3g} mm at the "
            f"corners of the grid, rotation {angle:.3g} degrees)."
        )
        if strict_xforms:
            raise ImageError(
                f"{problem} Fix the header: if the sform is right, copy it to the qform "
                "(`fslorient -copysform2qform FILE`); if the qform is right, "
                "`fslorient -copyqform2sform FILE`. Without strict checking the sform is used."
            )
        warnings.append(
            f"{problem} Using the sform (as nibabel, FSL, ANTs and NiPreps do); if the qform "
            "is the right one, fix the file with `fslorient -copyqform2sform`."
        )
        return sform, scode, warnings
    if scode > 0 and valid_s and s_zooms_ok:
        if qcode > 0:  # qcode set but the quaternion is unusable
            warnings.append(f"{name}: the qform is invalid; using the sform.")
        return sform, scode, warnings
    if qcode > 0 and valid_q:
        if scode > 0:
            warnings.append(
                f"{name}: the sform is set but invalid (singular, or its voxel sizes contradict "
                "pixdim); using the qform."
            )
        return qform, qcode, warnings
    if scode > 0 and valid_s:  # only an sform whose voxel sizes contradict pixdim
        warnings.append(
            f"{name}: the voxel sizes of the sform contradict pixdim {tuple(pixdim)}; using the "
            "sform."
        )
        return sform, scode, warnings
    if scode > 0 or qcode > 0:
        raise ImageError(
            f"{name}: the header has no usable orientation (qform_code={qcode}, "
            f"sform_code={scode}, both matrices singular or not finite). Fix the header of the "
            "file (re-convert it from DICOM, e.g. with dcm2niix)."
        )
    message = f"{name}: the header has no orientation information (qform_code = sform_code = 0)."
    if strict_xforms:
        raise ImageError(f"{message} Re-convert the image from DICOM (e.g. with dcm2niix).")
    warnings.append(
        f"{message} Assuming the default NIfTI orientation (LAS, voxel sizes from pixdim); "
        "the result may be flipped. Re-convert the image from DICOM to be sure."
    )
    return hdr.get_base_affine(), 0, warnings


def _check_shape(img: nib.Nifti1Image, name: str) -> tuple[int, int, int]:
    shape = tuple(int(n) for n in img.shape)
    if len(shape) < 3:
        raise ImageError(
            f"{name}: {len(shape)}-D image of shape {shape}; a 3-D volume is required."
        )
    if len(shape) > 3 and any(n != 1 for n in shape[3:]):
        if shape[3] > 1 and all(n == 1 for n in shape[4:]):
            raise ImageError(
                f"{name}: 4-D image with {shape[3]} volumes (shape {shape}); a single 3-D "
                "volume is required. Average or select one volume first (e.g. `fslroi` or "
                "`mrmath ... mean`)."
            )
        raise ImageError(
            f"{name}: image of shape {shape} has extra (vector/time) dimensions; a scalar 3-D "
            "volume is required."
        )
    spatial = shape[:3]
    if min(spatial) < 2:
        raise ImageError(
            f"{name}: spatial shape {spatial} is a single slice, not a 3-D volume. Give the "
            "full 3-D acquisition."
        )
    return spatial  # type: ignore[return-value]


def _check_values(data: np.ndarray, name: str) -> None:
    if data.dtype.kind not in "biuf":
        raise ImageError(
            f"{name}: voxel type {data.dtype} is not a real scalar type (complex or RGB "
            "data?); convert the image to a real-valued scalar volume."
        )
    check_finite(data, name)


def _check_affine(affine: np.ndarray, name: str, xyz_unit: str) -> None:
    if not np.all(np.isfinite(affine)):
        raise ImageError(f"{name}: the affine has non-finite entries; fix the header.")
    if abs(float(np.linalg.det(affine[:3, :3]))) <= 1e-12:
        raise ImageError(
            f"{name}: the affine is singular (zero voxel size or collinear axes); fix the "
            "header (re-convert the image from DICOM)."
        )
    zooms_mm = np.linalg.norm(affine[:3, :3], axis=0) * _UNIT_TO_MM.get(xyz_unit, 1.0)
    if not (np.all(zooms_mm > 0) and np.all(zooms_mm < MAX_VOXEL_MM)):
        raise ImageError(
            f"{name}: voxel sizes {tuple(np.round(zooms_mm, 4))} mm are outside "
            f"(0, {MAX_VOXEL_MM}) mm; the header (pixdim / xyz units) is probably wrong."
        )


def _validate(
    img: nib.Nifti1Image, name: str, *, kind: Kind = "image", strict_xforms: bool = False
) -> tuple[np.ndarray, np.ndarray, int, list[str]]:
    """All checks; return the squeezed data, the chosen affine, its code and warnings."""
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, not {kind!r}")
    spatial = _check_shape(img, name)
    data = np.asanyarray(img.dataobj).reshape(spatial)
    _check_values(data, name)
    affine, code, warnings = _resolve_affine(img, name, strict_xforms=strict_xforms)
    _check_affine(affine, name, img.header.get_xyzt_units()[0])
    return data, affine, code, warnings


def validate_image(
    img: nib.Nifti1Image, name: str, *, kind: Kind = "image", strict_xforms: bool = False
) -> None:
    """Raise :class:`ImageError` (naming ``name``) if ``img`` cannot be standardised."""
    _validate(img, name, kind=kind, strict_xforms=strict_xforms)


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------
def _nifti_suffix(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    if name.endswith(".nii"):
        return ".nii"
    raise ImageError(f"{path}: output name must end in .nii or .nii.gz.")


def write_atomic(img: nib.Nifti1Image, out_file: str | os.PathLike[str]) -> Path:
    """Write ``img`` whole or not at all (:func:`~contrareg_bids.io.atomic.atomic_output`):
    a crash (or a killed job) never leaves a half-written file under the final name, which a
    resumed run would otherwise trust."""
    from .atomic import atomic_output

    out_file = Path(out_file)
    _nifti_suffix(out_file)  # refuses a name that is not .nii / .nii.gz
    with atomic_output(out_file) as tmp:
        nib.save(img, str(tmp))
    return out_file


def _cast(data: np.ndarray, kind: Kind, name: str) -> tuple[np.ndarray, list[str]]:
    warnings: list[str] = []
    if kind == "image":
        out = data.astype(np.float32)
        if not np.all(np.isfinite(out)):
            raise ImageError(f"{name}: values overflow float32; rescale the image first.")
        if out.size and float(out.min()) == float(out.max()):
            warnings.append(f"{name}: the image is constant ({float(out.min())}).")
        return out, warnings
    if kind == "mask":
        out = (data > 0.5).astype(np.uint8)
        if not out.any():
            warnings.append(f"{name}: the mask is empty (no voxel > 0.5).")
        return out, warnings
    # labels
    if data.dtype.kind == "f" and not np.array_equal(data, np.round(data)):
        raise ImageError(
            f"{name}: a label map must hold integer labels, but it has non-integer values "
            "(is it a probability map or was it resampled with linear interpolation?). Use a "
            "discrete segmentation (nearest-neighbour resampled)."
        )
    lo, hi = (int(data.min()), int(data.max())) if data.size else (0, 0)
    for dtype in (np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return data.astype(dtype), warnings
    raise ImageError(f"{name}: labels {lo}..{hi} do not fit in int32; renumber them.")


def standardize_image(
    in_file: str | os.PathLike[str],
    out_file: str | os.PathLike[str],
    *,
    kind: Kind = "image",
    strict_xforms: bool = False,
) -> StandardizeResult:
    """Validate ``in_file`` and write it 3-D, RAS (closest canonical), typed, to ``out_file``.

    ``kind="image"`` -> float32; ``"mask"`` -> uint8 (``> 0.5``); ``"labels"`` -> int16 (int32
    when needed; non-integer values refused). World coordinates are preserved exactly: only
    the voxel order changes, so the output overlays the input in any viewer.

    Why ours and not niworkflows' ``ValidateImage``: that one repairs qform/sform and
    reports it, but lets a truncated gzip, NaN/inf values, a real 4-D image or non-integer
    labels through, each of which fails much later here with a message naming no file; this
    one refuses them up front (and reorients to RAS, which the model grid needs).
    """
    in_file = Path(in_file)
    name = str(in_file)
    img = load_image(in_file)
    data, affine, code, warnings = _validate(img, name, kind=kind, strict_xforms=strict_xforms)
    orientation = orientation_codes(affine)
    data, cast_warnings = _cast(data, kind, name)
    warnings += cast_warnings

    canonical = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
    out_data = np.asanyarray(canonical.dataobj)
    out_affine = canonical.affine
    out = nib.Nifti1Image(np.ascontiguousarray(out_data), out_affine)
    out.set_data_dtype(data.dtype)
    out_code = code if code > 0 else 1  # scanner: never write "unknown" again
    out.set_sform(out_affine, out_code)
    out.set_qform(out_affine, out_code)
    zooms = tuple(float(z) for z in np.linalg.norm(out_affine[:3, :3], axis=0))
    out.header.set_zooms(zooms)
    xyz_unit, t_unit = img.header.get_xyzt_units()
    out.header.set_xyzt_units(xyz=xyz_unit, t=t_unit)
    if kind == "labels":
        out.header.set_intent("label")
    written = write_atomic(out, out_file)
    return StandardizeResult(
        out_file=written,
        orientation=orientation,
        shape=tuple(int(n) for n in out_data.shape),  # type: ignore[arg-type]
        zooms=zooms,  # type: ignore[arg-type]
        original_shape=tuple(int(n) for n in img.shape),
        reoriented=orientation != "RAS",
        warnings=warnings,
    )


def same_grid(
    img_a: nib.spatialimages.SpatialImage,
    img_b: nib.spatialimages.SpatialImage,
    atol: float = 1e-4,
) -> bool:
    """True when both images sample the same voxels: same 3-D shape and affine (``atol`` mm)."""
    if tuple(img_a.shape[:3]) != tuple(img_b.shape[:3]):
        return False
    return bool(np.allclose(img_a.affine, img_b.affine, atol=atol, rtol=0.0))


# --------------------------------------------------------------------------- the writer
def _xform_code(header: nib.Nifti1Header | None, key: str) -> int:
    """An sform/qform code of ``header`` (0 when absent, e.g. for an Analyze header)."""
    if header is None:
        return 0
    try:
        return int(header[key])
    except (KeyError, TypeError, ValueError):
        return 0


def write_nifti(
    array: np.ndarray,
    affine: np.ndarray,
    path: str | os.PathLike[str],
    dtype: np.dtype | type | None = None,
    header: nib.Nifti1Header | None = None,
) -> Path:
    """Write a NIfTI atomically with ``affine`` as both sform and qform.

    ``header`` (e.g. of the input image) is copied for its other fields (description, and
    the sform/qform codes when set; otherwise code 1, scanner). The data type is ``dtype``
    or that of ``array``, except that float64 is stored as float32 and bool as uint8.
    """
    arr = np.asarray(array)
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    hdr = header.copy() if header is not None else nib.Nifti1Header()
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64), hdr)
    img.set_data_dtype(arr.dtype)
    img.header.set_slope_inter(1.0, 0.0)
    s_code, q_code = (_xform_code(header, k) for k in ("sform_code", "qform_code"))
    img.set_sform(affine, code=s_code or 1)
    img.set_qform(affine, code=q_code or s_code or 1)
    img.header.set_xyzt_units("mm", "sec")
    path = Path(path)
    with atomic_output(path) as tmp:
        nib.save(img, str(tmp))
    return path
