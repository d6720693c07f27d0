"""Evaluation metrics for deformable registration (docs/method.md, Evaluation).

Overlap (Dice per label, mean Dice, Dice30 and the 30th percentile), surface distance
(HD95 in mm) and regularity of the deformation (Jacobian determinant, % folding voxels,
std of log|J|). Only numpy and scipy are used; every public function also accepts torch
tensors (converted with ``.detach().cpu().numpy()``, torch itself is never imported).

Conventions (docs/conventions.md):

* A displacement field is ``(3, X, Y, Z)`` (``jacobian_determinant`` also takes a batch
  ``(N, 3, X, Y, Z)``), channel ``k`` along array axis ``k``. The map is
  ``phi(x) = x + u(x)`` (ITK: points of the fixed grid mapped into the moving image).
* ``u`` is in the units of ``spacing``: with the default ``spacing=(1, 1, 1)`` it is in
  voxels (what the network outputs); pass the voxel size in mm only when ``u`` is in mm.
  The determinant is the same either way (``J_mm = S J_vox S^-1``), so voxel fields with
  unit spacing are the normal use. Never combine a voxel field with a mm spacing.
* Label maps are integer arrays ``(X, Y, Z)``; 0 is background.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_LOG_JACOBIAN_CLIP",
    "FOLDING_LIMIT_PERCENT",
    "LabelMatch",
    "dice30",
    "dice_per_label",
    "dice_percentile30",
    "folding_percent",
    "hd95",
    "hd95_per_label",
    "jacobian_determinant",
    "label_correspondence",
    "mean_dice",
    "registration_metrics",
    "shared_labels",
    "std_log_jacobian",
    "summarize_warp",
]

#: The paper's limit on folding, % of voxels with det J <= 0 (Table 1: a model's best lambda
#: is the best Dice among those below it); ``--lambda auto``'s default budget (inclusive),
#: the group report's outlier rule and the evaluation tables (strict) all use this one.
FOLDING_LIMIT_PERCENT = 0.5

#: Determinants are clipped to this minimum before the log in ``std_log_jacobian``, so that
#: folded voxels (det <= 0) count as log(1e-9) ~ -20.7 instead of producing NaN/-inf.
DEFAULT_LOG_JACOBIAN_CLIP = 1e-9


# --------------------------------------------------------------------------- helpers
def _ndimage():
    """scipy.ndimage, imported when first needed: the configuration imports this module for
    :data:`FOLDING_LIMIT_PERCENT`, and a command line that exits early should not pay for it."""
    from scipy import ndimage

    return ndimage


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """Return ``x`` as a numpy array (torch tensors are detached and moved to the CPU)."""
    if x is None:
        raise ValueError(f"{name} must be an array, got None")
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise ValueError(f"{name} cannot be converted to an array: {exc}") from exc


def _check_finite(arr: np.ndarray, name: str) -> None:
    if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")


#: How far a label map stored as floats may be from whole numbers (resampled or rescaled
#: storage), the one rule of the package's label readers and scorers.
LABEL_TOLERANCE = 1e-3


def rounded_labels(arr: np.ndarray, name: str) -> np.ndarray:
    """A float label map rounded to whole numbers; ``ValueError`` naming ``name`` when a
    value is further than :data:`LABEL_TOLERANCE` from one (not a label map)."""
    rounded = np.rint(arr)
    if arr.size and float(np.abs(arr - rounded).max()) > LABEL_TOLERANCE:
        raise ValueError(f"{name}: non-integer values; not a label map")
    return rounded


def _as_labels(x: Any, name: str) -> np.ndarray:
    """Validate a 3-D label map; float maps are accepted when all values are integral."""
    arr = _to_numpy(x, name)
    if arr.ndim != 3:
        raise ValueError(f"{name} must be a 3-D label map (X, Y, Z), got shape {arr.shape}")
    if arr.dtype.kind == "b":
        return arr.astype(np.int64)
    if arr.dtype.kind in "iu":
        return arr
    if arr.dtype.kind == "f":
        _check_finite(arr, name)
        return rounded_labels(arr, name).astype(np.int64)
    raise ValueError(f"{name} must be an integer label map, got dtype {arr.dtype}")


def _check_same_shape(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} {a.shape} and {name_b} {b.shape} must have the same shape")


def _as_disp(x: Any, name: str, allow_batch: bool = False) -> np.ndarray:
    """Validate a finite displacement field ``(3, X, Y, Z)`` (or ``(N, 3, X, Y, Z)``)."""
    arr = _to_numpy(x, name)
    ranks = (4, 5) if allow_batch else (4,)
    expected = "(3, X, Y, Z) or (N, 3, X, Y, Z)" if allow_batch else "(3, X, Y, Z)"
    if arr.ndim not in ranks or arr.shape[-4] != 3:
        raise ValueError(f"{name} must have shape {expected}, got {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be a real-valued array, got dtype {arr.dtype}")
    _check_finite(arr, name)
    if min(arr.shape[-3:]) < 2:
        raise ValueError(f"{name} needs >= 2 voxels along each spatial axis, got {arr.shape}")
    return arr.astype(np.float64, copy=False)


def _as_spacing(spacing: Any, name: str = "spacing") -> tuple[float, float, float]:
    try:
        values = tuple(float(s) for s in _to_numpy(spacing, name).reshape(-1))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be 3 positive numbers, got {spacing!r}") from exc
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"{name} must be 3 positive finite numbers, got {spacing!r}")
    return values  # type: ignore[return-value]


def _as_mask(mask: Any, shape: tuple[int, ...], name: str = "mask") -> np.ndarray | None:
    """Boolean mask of the given spatial shape (non-zero = inside), or ``None``."""
    if mask is None:
        return None
    arr = _to_numpy(mask, name)
    if arr.ndim != 3:
        raise ValueError(f"{name} must be a 3-D array (X, Y, Z), got shape {arr.shape}")
    if tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{name} {arr.shape} must match the spatial shape of disp {shape}")
    _check_finite(arr, name)
    return arr != 0


def _as_labels_arg(labels: Iterable[int] | None, name: str = "labels") -> list[int] | None:
    if labels is None:
        return None
    arr = _to_numpy(list(labels) if not hasattr(labels, "shape") else labels, name).reshape(-1)
    if arr.dtype.kind == "f":
        _check_finite(arr, name)
        if not np.array_equal(arr, np.round(arr)):
            raise ValueError(f"{name} must be integers, got {arr.tolist()}")
    elif arr.size and arr.dtype.kind not in "biu":
        raise ValueError(f"{name} must be integers, got dtype {arr.dtype}")
    return [int(v) for v in arr]


def _default_labels(a: np.ndarray, b: np.ndarray) -> list[int]:
    present = np.union1d(np.unique(a), np.unique(b))
    return [int(v) for v in present if v != 0]


def _label_masks(
    a: np.ndarray, b: np.ndarray, wanted: list[int]
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(label, a == label, b == label)`` cropped to the union bounding box of the
    label in ``a`` and ``b`` plus a 1-voxel margin (clipped to the grid).

    Voxel counts are unchanged by the crop, and the margin keeps surfaces identical (grid
    borders still count as outside); this makes per-label work proportional to the size of
    each structure instead of the whole volume. Boxes come from ``_ndimage().find_objects``
    (one pass) when labels are non-negative; absent labels yield empty masks.
    """
    fast = a.size > 0 and min(a.min(), b.min()) >= 0 and max(a.max(), b.max()) < 2**20
    objs_a = _ndimage().find_objects(a) if fast else []
    objs_b = _ndimage().find_objects(b) if fast else []
    full = tuple(slice(0, s) for s in a.shape)
    for lab in wanted:
        if not fast or lab <= 0:
            box: tuple[slice, ...] | None = full
        else:
            boxes = [
                objs[lab - 1] for objs in (objs_a, objs_b) if lab <= len(objs) and objs[lab - 1]
            ]
            box = None
            if boxes:
                box = tuple(
                    slice(
                        max(min(bx[d].start for bx in boxes) - 1, 0),
                        min(max(bx[d].stop for bx in boxes) + 1, a.shape[d]),
                    )
                    for d in range(3)
                )
        if box is None:  # absent from both maps
            empty = np.zeros((0, 0, 0), dtype=bool)
            yield lab, empty, empty
        else:
            yield lab, a[box] == lab, b[box] == lab


# --------------------------------------------------------------------------- overlap
def dice_per_label(a: Any, b: Any, labels: Iterable[int] | None = None) -> dict[int, float]:
    """Dice ``2|A∩B| / (|A|+|B|)`` for each label, to see which structures are misaligned.

    ``labels`` defaults to the union of the non-zero labels present in ``a`` or ``b``. A
    label absent from both maps gives NaN (nothing to score); present in one only gives 0.
    """
    a = _as_labels(a, "a")
    b = _as_labels(b, "b")
    _check_same_shape("a", a, "b", b)
    wanted = _as_labels_arg(labels)
    if wanted is None:
        wanted = _default_labels(a, b)
    out: dict[int, float] = {}
    for lab, in_a, in_b in _label_masks(a, b, wanted):
        total = int(in_a.sum()) + int(in_b.sum())
        if total == 0:
            out[lab] = float("nan")
        else:
            out[lab] = 2.0 * int(np.logical_and(in_a, in_b).sum()) / total
    return out


def _nanmean(values: Iterable[float]) -> float:
    arr = np.asarray(list(values), dtype=np.float64)
    finite = arr[~np.isnan(arr)]
    return float(finite.mean()) if finite.size else float("nan")


def mean_dice(a: Any, b: Any, labels: Iterable[int] | None = None) -> float:
    """Mean Dice over labels, skipping labels absent from both maps (NaN if none is scored).

    This is the per-pair score that ``dice30`` and the Dice curves aggregate over pairs.
    """
    return _nanmean(dice_per_label(a, b, labels).values())


def _pair_scores(pair_scores: Any, name: str = "pair_scores") -> np.ndarray:
    if not hasattr(pair_scores, "shape"):  # list, tuple, generator, dict.values()
        pair_scores = list(pair_scores)
    arr = _to_numpy(pair_scores, name)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of pair scores, got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if np.isinf(arr).any():
        raise ValueError(f"{name} contains infinite values")
    return arr[~np.isnan(arr)]  # NaN pairs (no label scored) are ignored


def dice30(pair_scores: Sequence[float] | Any) -> float:
    """Mean of the lowest 30 % of per-pair Dice scores: robustness to the worst pairs.

    Takes the ``ceil(0.3 * n)`` smallest scores (at least 1) among the ``n`` non-NaN ones;
    NaN if there are none. ``ceil`` is computed in integer arithmetic (``0.3 * n`` in floats
    is not exact).
    """
    arr = _pair_scores(pair_scores)
    if arr.size == 0:
        return float("nan")
    k = max(1, -(-3 * arr.size // 10))
    return float(np.sort(arr)[:k].mean())


def dice_percentile30(pair_scores: Sequence[float] | Any) -> float:
    """30th percentile of per-pair Dice (``np.percentile``, linear interpolation), NaN ignored.

    Named explicitly because "Dice30" is sometimes reported this way; ``dice30`` is the mean
    of the lowest 30 %.
    """
    arr = _pair_scores(pair_scores)
    if arr.size == 0:
        return float("nan")
    return float(np.percentile(arr, 30))


# --------------------------------------------------------------------------- Jacobian
def _det_single(disp: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    # grads[k][j] = d u_k / d x_j (np.gradient: central inside, one-sided at the borders)
    grads = [np.gradient(disp[k], *spacing) for k in range(3)]
    j00, j01, j02 = grads[0][0] + 1.0, grads[0][1], grads[0][2]
    j10, j11, j12 = grads[1][0], grads[1][1] + 1.0, grads[1][2]
    j20, j21, j22 = grads[2][0], grads[2][1], grads[2][2] + 1.0
    return (
        j00 * (j11 * j22 - j12 * j21)
        - j01 * (j10 * j22 - j12 * j20)
        + j02 * (j10 * j21 - j11 * j20)
    )


def jacobian_determinant(disp: Any, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """``det(I + grad u)`` per voxel, the local volume change of ``phi(x) = x + u(x)``.

    Derivatives use ``np.gradient``: second-order central differences inside the grid and
    first-order one-sided differences on the border voxels (both exact for affine fields).
    The raw field is used (no smoothing). ``u`` must be in the units of ``spacing`` (voxels
    with the default unit spacing, mm when ``spacing`` is the voxel size in mm).

    Returns ``(X, Y, Z)`` for ``(3, X, Y, Z)`` input, ``(N, X, Y, Z)`` for a batch.
    """
    arr = _as_disp(disp, "disp", allow_batch=True)
    sp = _as_spacing(spacing)
    if arr.ndim == 4:
        return _det_single(arr, sp)
    return np.stack([_det_single(d, sp) for d in arr])


def _masked_det(disp: Any, mask: Any, spacing: Sequence[float]) -> np.ndarray:
    arr = _as_disp(disp, "disp")
    m = _as_mask(mask, arr.shape[1:])
    det = _det_single(arr, _as_spacing(spacing))
    return det if m is None else det[m]


def _folding_percent(det: np.ndarray) -> float:
    return float("nan") if det.size == 0 else 100.0 * float(np.count_nonzero(det <= 0)) / det.size


def _std_log(det: np.ndarray, clip: float) -> float:
    if det.size == 0:
        return float("nan")
    return float(np.std(np.log(np.maximum(det, clip))))


def folding_percent(
    disp: Any, mask: Any = None, spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> float:
    """Percentage of voxels with ``det J <= 0`` (folded: the map is not invertible there).

    Counted inside ``mask`` (non-zero voxels, shape ``(X, Y, Z)``) if given, else over the
    whole grid; NaN for an empty mask. ``disp`` is a single field ``(3, X, Y, Z)``.
    """
    return _folding_percent(_masked_det(disp, mask, spacing))


def _check_clip(clip: float) -> float:
    clip = float(clip)
    if not (math.isfinite(clip) and clip > 0):
        raise ValueError(f"clip must be a positive finite number, got {clip!r}")
    return clip


def std_log_jacobian(
    disp: Any,
    mask: Any = None,
    clip: float = DEFAULT_LOG_JACOBIAN_CLIP,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> float:
    """Population std (``ddof=0``) of ``log(max(det J, clip))``: smoothness of the warp.

    ``clip`` (default 1e-9) keeps folded voxels finite: each contributes ``log(1e-9)``
    (~ -20.7), so folding inflates the value strongly rather than producing NaN. Computed
    inside ``mask`` if given (the foreground, docs/method.md), else over the whole grid; NaN
    for an empty mask.
    """
    clip = _check_clip(clip)
    return _std_log(_masked_det(disp, mask, spacing), clip)


def summarize_warp(
    disp: Any,
    mask: Any = None,
    clip: float = DEFAULT_LOG_JACOBIAN_CLIP,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> dict[str, float]:
    """Regularity summary of one field for reports (the Jacobian is computed once).

    Keys: ``folding_percent``, ``std_log_jacobian``, ``jacobian_min``, ``jacobian_max``
    (all inside ``mask`` if given; NaN for an empty mask).
    """
    return _warp_summary(_masked_det(disp, mask, spacing), _check_clip(clip))


def _warp_summary(det: np.ndarray, clip: float) -> dict[str, float]:
    """The regularity keys of the determinants ``det`` (those inside the mask)."""
    empty = det.size == 0
    return {
        "folding_percent": _folding_percent(det),
        "std_log_jacobian": _std_log(det, clip),
        "jacobian_min": float("nan") if empty else float(det.min()),
        "jacobian_max": float("nan") if empty else float(det.max()),
    }


# --------------------------------------------------------------------------- HD95
def _surface(mask: np.ndarray) -> np.ndarray:
    """Label voxels with at least one non-label 6-neighbour (outside the grid counts as
    non-label, so voxels on the array border are surface)."""
    ndimage = _ndimage()  # scipy only when a surface is asked for: the CLI starts faster
    six_neighbours = ndimage.generate_binary_structure(3, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=six_neighbours, border_value=0)


def _hd95_masks(in_a: np.ndarray, in_b: np.ndarray, spacing: tuple[float, ...]) -> float:
    if not in_a.any() or not in_b.any():
        return float("nan")
    surf_a = _surface(in_a)
    surf_b = _surface(in_b)
    # Crop to the bounding box of both surfaces: Euclidean distances between their voxels
    # do not depend on the voxels outside it, and this keeps per-label cost small.
    idx = np.nonzero(surf_a | surf_b)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
    surf_a, surf_b = surf_a[box], surf_b[box]
    d_ab = _ndimage().distance_transform_edt(~surf_b, sampling=spacing)[surf_a]
    d_ba = _ndimage().distance_transform_edt(~surf_a, sampling=spacing)[surf_b]
    return float(max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)))


def hd95(a: Any, b: Any, label: int, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """95th-percentile symmetric Hausdorff distance (mm) between the surfaces of ``label``.

    Boundary agreement that Dice under-weights. Surfaces are label voxels with a non-label
    6-neighbour; distances use ``scipy._ndimage().distance_transform_edt(sampling=spacing)``
    between voxel centres. Symmetric = ``max`` of the two directed 95th percentiles (as in
    MONAI's ``compute_hausdorff_distance(percentile=95)``). NaN if the label is absent from
    either map.
    """
    a = _as_labels(a, "a")
    b = _as_labels(b, "b")
    _check_same_shape("a", a, "b", b)
    sp = _as_spacing(spacing)
    lab = _as_labels_arg([label], "label")[0]  # type: ignore[index]
    _, in_a, in_b = next(_label_masks(a, b, [lab]))
    return _hd95_masks(in_a, in_b, sp)


def hd95_per_label(
    a: Any,
    b: Any,
    labels: Iterable[int] | None = None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> dict[int, float]:
    """``hd95`` for each label (default: non-zero labels present in ``a`` or ``b``)."""
    a = _as_labels(a, "a")
    b = _as_labels(b, "b")
    _check_same_shape("a", a, "b", b)
    sp = _as_spacing(spacing)
    wanted = _as_labels_arg(labels)
    if wanted is None:
        wanted = _default_labels(a, b)
    return {lab: _hd95_masks(in_a, in_b, sp) for lab, in_a, in_b in _label_masks(a, b, wanted)}


# --------------------------------------------------------------------------- label schemes
def _norm_name(name: str) -> str:
    return " ".join(name.casefold().split())


@dataclass(frozen=True)
class LabelMatch:
    """How a subject's label map compares with the reference's (:func:`label_correspondence`).

    ``comparable`` False: no Dice (``how`` says why). ``mapping`` None: the values mean the
    same structures as they are; else subject value -> reference value.
    """

    comparable: bool
    how: str
    mapping: dict[int, int] | None = None

    def apply(self, labels: Any) -> np.ndarray:
        """The subject's labels in the reference's values (unmatched labels become 0)."""
        arr = _as_labels(labels, "labels")
        if self.mapping is None:
            return arr
        out = np.zeros_like(arr)
        for src, dst in self.mapping.items():
            out[arr == src] = dst
        return out


def label_correspondence(
    subject_table: dict[int, str] | None,
    reference_table: dict[int, str] | None,
    subject_desc: str | None,
    reference_desc: str | None,
) -> LabelMatch:
    """Which subject label value means which reference label value, and how that is known.

    Two label maps are only comparable when their values mean the same structures: label 1
    is "CSF" in one scheme and "hippocampus" in another, and a Dice of the two is a wrong
    number with nothing to show it. With both look-up tables (``dseg.tsv``) the labels are
    matched by name (case and spacing ignored); without them, values are compared as they
    are only when both maps carry the same ``desc`` (the same scheme by name).
    """
    if subject_table is not None and reference_table is not None:
        ref_by_name: dict[str, int] = {}
        for value, name in reference_table.items():
            if value != 0:
                ref_by_name.setdefault(_norm_name(name), value)
        mapping = {
            value: ref_by_name[_norm_name(name)]
            for value, name in subject_table.items()
            if value != 0 and _norm_name(name) in ref_by_name
        }
        if not mapping:
            return LabelMatch(False, "no label name is shared by the two label tables")
        if all(k == v for k, v in mapping.items()):
            return LabelMatch(True, f"label tables agree on {len(mapping)} labels", mapping)
        return LabelMatch(True, f"{len(mapping)} labels matched by name", mapping)
    if subject_desc == reference_desc:
        where = f"desc-{subject_desc}" if subject_desc else "no desc"
        return LabelMatch(True, f"values compared as they are (both {where}, no dseg.tsv)")
    sides = (("the subject's", subject_table), ("the reference's", reference_table))
    missing = " and ".join(side for side, table in sides if table is None)
    return LabelMatch(
        False,
        (
            f"{missing} label map has no dseg.tsv and their desc differ (desc-{subject_desc} vs "
            f"desc-{reference_desc}): cannot tell whether the values mean the same structures"
        ),
    )


# --------------------------------------------------------------------------- all together
def shared_labels(a: Any, b: Any) -> list[int]:
    """Non-zero labels present in both maps: what a Dice between two label schemes that only
    partly overlap (a subject's labels and a reference's) can be computed over."""
    common = set(np.unique(_to_numpy(a, "a"))) & set(np.unique(_to_numpy(b, "b")))
    return sorted(int(v) for v in common - {0})


def registration_metrics(
    fixed_labels: Any,
    moved_labels: Any,
    disp: Any,
    mask: Any = None,
    labels: Iterable[int] | None = None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    disp_in_mm: bool = False,
    include_hd95: bool = False,
    clip: float = DEFAULT_LOG_JACOBIAN_CLIP,
) -> dict[str, Any]:
    """All per-pair metrics of docs/method.md in one JSON-serialisable dict: the one scorer of a
    registration, which the evaluation sweep, the participant metrics and the reports call.

    ``fixed_labels``/``moved_labels`` (both or neither) give the overlap keys ``mean_dice`` and
    ``dice_per_label`` (keys are label strings, as JSON requires; ``labels`` defaults to the
    non-zero labels of either map). ``disp`` (``None``: overlap only) gives the warp keys,
    from one Jacobian: ``folding_percent``, ``std_log_jacobian``, ``jacobian_min`` and
    ``jacobian_max`` inside ``mask`` (e.g. the fixed foreground; the whole grid without one)
    and ``folding_percent_grid`` over the whole grid whatever the mask, since both
    conventions are reported (the sweep tables give both; the participant table documents
    folding over the model grid and std log|J| inside the brain). ``spacing`` (voxel size in
    mm) is used for HD95 (``include_hd95``: ``mean_hd95``, ``hd95_per_label``), and for the
    Jacobian only when ``disp_in_mm`` is true (by default ``disp`` is in voxels). Values are
    Python floats; NaN is allowed.
    """
    if (fixed_labels is None) != (moved_labels is None):
        raise ValueError("give both fixed_labels and moved_labels, or neither")
    if fixed_labels is None and disp is None:
        raise ValueError("nothing to score: give label maps, a displacement field or both")
    out: dict[str, Any] = {}
    sp = _as_spacing(spacing)
    fixed = moved = None
    if fixed_labels is not None:
        fixed = _as_labels(fixed_labels, "fixed_labels")
        moved = _as_labels(moved_labels, "moved_labels")
        _check_same_shape("fixed_labels", fixed, "moved_labels", moved)
    if disp is not None:
        arr = _as_disp(disp, "disp")
        if fixed is not None and tuple(arr.shape[1:]) != fixed.shape:
            raise ValueError(
                f"disp {arr.shape} must have the spatial shape of fixed_labels {fixed.shape}"
            )
    if fixed is not None:
        dice = dice_per_label(fixed, moved, labels)  # maps already validated under their names
        out["mean_dice"] = _nanmean(dice.values())
        out["dice_per_label"] = {str(k): float(v) for k, v in dice.items()}
    if disp is not None:
        det = _det_single(arr, sp if disp_in_mm else (1.0, 1.0, 1.0))
        m = _as_mask(mask, arr.shape[1:])
        out.update(_warp_summary(det if m is None else det[m], _check_clip(clip)))
        out["folding_percent_grid"] = _folding_percent(det)
    if include_hd95 and fixed is not None:
        hd = hd95_per_label(fixed, moved, [int(k) for k in out["dice_per_label"]], spacing=sp)
        out["mean_hd95"] = _nanmean(hd.values())
        out["hd95_per_label"] = {str(k): float(v) for k, v in hd.items()}
    return out
