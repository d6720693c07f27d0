"""Evaluation metrics: every expected value below is computed by hand (see comments)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from contrareg_bids import metrics as M


def _grid(shape: tuple[int, int, int]) -> np.ndarray:
    """Voxel coordinates, shape (3, X, Y, Z), channel k = index along axis k."""
    return np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij"))


# --------------------------------------------------------------------------- Dice
@pytest.fixture
def label_pair() -> tuple[np.ndarray, np.ndarray]:
    a = np.zeros((4, 4, 4), dtype=np.int16)
    b = np.zeros((4, 4, 4), dtype=np.int16)
    a[0:2] = 1  # 32 voxels
    b[1:3] = 1  # 32 voxels, overlap a[1] = 16 voxels -> Dice 2*16/64 = 0.5
    a[3, :2] = 2  # 8 voxels
    b[3, :1] = 2  # 4 voxels, all inside a's -> Dice 2*4/12 = 2/3
    b[3, 3, 3] = 5  # present in b only -> Dice 0
    return a, b


def test_dice_per_label_hand_counts(label_pair):
    a, b = label_pair
    d = M.dice_per_label(a, b)
    assert list(d) == [1, 2, 5]  # default: union of non-zero labels present
    assert d[1] == pytest.approx(0.5, abs=1e-15)
    assert d[2] == pytest.approx(2 / 3, abs=1e-15)
    assert d[5] == 0.0
    d = M.dice_per_label(a, b, labels=[1, 7])
    assert d[1] == pytest.approx(0.5) and math.isnan(d[7])  # 7 absent in both
    assert M.dice_per_label(a, a)[2] == 1.0
    assert all(isinstance(k, int) and isinstance(v, float) for k, v in d.items())


def test_mean_dice_skips_nan(label_pair):
    a, b = label_pair
    assert M.mean_dice(a, b) == pytest.approx((0.5 + 2 / 3 + 0.0) / 3)
    assert M.mean_dice(a, b, labels=[1, 2, 7]) == pytest.approx((0.5 + 2 / 3) / 2)
    assert math.isnan(M.mean_dice(a, b, labels=[7, 8]))


def test_dice_accepts_integral_float_labels(label_pair):
    a, b = label_pair
    assert M.dice_per_label(a.astype(np.float32), b.astype(np.float64)) == M.dice_per_label(a, b)


# --------------------------------------------------------------------------- Dice30
def test_dice30_and_percentile30():
    scores = [0.9, 0.1, 0.5, 0.7, 0.3, 0.8, 0.2, 0.6, 0.4, 1.0]
    # ceil(0.3 * 10) = 3 lowest: 0.1, 0.2, 0.3 -> 0.2
    assert M.dice30(scores) == pytest.approx(0.2, abs=1e-15)
    # np.percentile linear: position 0.3 * 9 = 2.7 in sorted -> 0.3 + 0.7 * (0.4 - 0.3) = 0.37
    assert M.dice_percentile30(scores) == pytest.approx(0.37, abs=1e-12)
    assert M.dice_percentile30(scores) == pytest.approx(np.percentile(scores, 30))
    # NaN pairs are ignored
    assert M.dice30([*scores, float("nan")]) == pytest.approx(0.2, abs=1e-15)
    assert M.dice_percentile30(np.array([*scores, np.nan])) == pytest.approx(0.37)


def test_dice30_counts():
    assert M.dice30([0.42]) == 0.42  # at least one pair
    assert M.dice30([0.4, 0.1, 0.3, 0.2]) == pytest.approx(0.15)  # ceil(1.2) = 2 lowest
    assert M.dice30(np.arange(1, 21, dtype=float)) == pytest.approx(3.5)  # 6 lowest of 20
    assert M.dice30(np.arange(1, 31, dtype=float)) == pytest.approx(5.0)  # 9 lowest of 30
    assert math.isnan(M.dice30([])) and math.isnan(M.dice30([float("nan")]))
    assert math.isnan(M.dice_percentile30([]))


# --------------------------------------------------------------------------- Jacobian
def test_zero_field_is_identity():
    disp = np.zeros((3, 5, 6, 7))
    det = M.jacobian_determinant(disp)
    assert det.shape == (5, 6, 7) and np.all(det == 1.0)
    assert M.folding_percent(disp) == 0.0
    assert M.std_log_jacobian(disp) == 0.0


def test_affine_field_exact_everywhere():
    # u = A x: central AND one-sided (border) differences are exact for linear fields
    a = np.array([[0.3, -0.2, 0.1], [0.05, -0.4, 0.25], [-0.15, 0.2, 0.5]])
    x = _grid((5, 6, 7))
    disp = np.einsum("kj,jxyz->kxyz", a, x) + np.array([1.0, -2.0, 0.5])[:, None, None, None]
    det = M.jacobian_determinant(disp)
    np.testing.assert_allclose(det, np.linalg.det(np.eye(3) + a), rtol=0, atol=1e-12)


def test_known_fold_slab():
    # u_0 = -2 x_0 on the slab x_1 in [2, 5): J row 0 = (-1, *, *), rows 1-2 identity -> det -1
    shape = (6, 10, 4)
    disp = np.zeros((3, *shape))
    disp[0, :, 2:5, :] = -2.0 * _grid(shape)[0][:, 2:5, :]
    det = M.jacobian_determinant(disp)
    np.testing.assert_array_equal(det[:, 2:5], -1.0)
    np.testing.assert_array_equal(det[:, [0, 1, 5, 6, 7, 8, 9]], 1.0)
    assert M.folding_percent(disp) == pytest.approx(30.0)  # 3 of 10 rows
    mask = np.zeros(shape, dtype=bool)
    mask[:, :3] = True  # rows 0, 1, 2: only row 2 folded -> 1/3
    assert M.folding_percent(disp, mask=mask) == pytest.approx(100 / 3)
    assert M.folding_percent(disp, mask=mask.astype(np.uint8)) == pytest.approx(100 / 3)
    # std log with clip: 30 % at log(clip), 70 % at 0 -> |log clip| * sqrt(0.3 * 0.7)
    expected = abs(math.log(1e-9)) * math.sqrt(0.3 * 0.7)
    assert M.std_log_jacobian(disp) == pytest.approx(expected, rel=1e-12)
    assert M.DEFAULT_LOG_JACOBIAN_CLIP == 1e-9
    expected = abs(math.log(1e-3)) * math.sqrt(0.3 * 0.7)
    assert M.std_log_jacobian(disp, clip=1e-3) == pytest.approx(expected, rel=1e-12)
    s = M.summarize_warp(disp)
    assert s["folding_percent"] == pytest.approx(30.0)
    assert s["jacobian_min"] == -1.0 and s["jacobian_max"] == 1.0


def test_std_log_jacobian_half_det_two():
    # u_0 = x_0 on x_1 < 5 -> det 2 there, det 1 on x_1 >= 5: logs {log 2, 0} half/half
    shape = (4, 10, 4)
    disp = np.zeros((3, *shape))
    disp[0, :, :5] = _grid(shape)[0][:, :5]
    det = M.jacobian_determinant(disp)
    np.testing.assert_array_equal(det[:, :5], 2.0)
    np.testing.assert_array_equal(det[:, 5:], 1.0)
    assert M.std_log_jacobian(disp) == pytest.approx(math.log(2) / 2, rel=1e-12)
    mask = np.zeros(shape, dtype=bool)
    mask[:, 3:7] = True  # 2 rows det 2, 2 rows det 1
    assert M.std_log_jacobian(disp, mask=mask) == pytest.approx(math.log(2) / 2, rel=1e-12)
    mask[:] = False
    mask[:, :5] = True  # all det 2
    assert M.std_log_jacobian(disp, mask=mask) == pytest.approx(0.0, abs=1e-15)
    assert M.folding_percent(disp) == 0.0
    mask[:] = False  # empty mask -> NaN
    assert math.isnan(M.folding_percent(disp, mask=mask))
    assert math.isnan(M.std_log_jacobian(disp, mask=mask))


def test_spacing_means_disp_in_mm():
    # u_0 = 1 mm per voxel along axis 0 with 2 mm voxels: du/dx = 1/2 -> det 1.5
    shape = (5, 4, 4)
    disp = np.zeros((3, *shape))
    disp[0] = _grid(shape)[0]
    np.testing.assert_allclose(M.jacobian_determinant(disp, spacing=(2, 1, 1)), 1.5)
    np.testing.assert_allclose(M.jacobian_determinant(disp), 2.0)  # same numbers as voxels
    # any field: the same deformation in voxels (unit spacing) or mm (voxel size) -> same det
    rng = np.random.default_rng(0)
    u_vox = 0.3 * rng.standard_normal((3, *shape))
    sp = np.array([2.0, 0.5, 1.5])
    u_mm = u_vox * sp[:, None, None, None]
    np.testing.assert_allclose(
        M.jacobian_determinant(u_mm, spacing=sp), M.jacobian_determinant(u_vox), atol=1e-12
    )
    assert M.folding_percent(u_mm, spacing=sp) == M.folding_percent(u_vox)
    assert M.std_log_jacobian(u_mm, spacing=sp) == pytest.approx(M.std_log_jacobian(u_vox))


def test_jacobian_batched():
    shape = (4, 5, 6)
    d1 = np.zeros((3, *shape))
    d2 = np.zeros((3, *shape))
    d2[1] = 0.5 * _grid(shape)[1]  # det 1.5
    det = M.jacobian_determinant(np.stack([d1, d2]))
    assert det.shape == (2, *shape)
    np.testing.assert_allclose(det[0], 1.0)
    np.testing.assert_allclose(det[1], 1.5)


# --------------------------------------------------------------------------- HD95
def _cube(shape, lo, hi, label=1):
    out = np.zeros(shape, dtype=np.int32)
    out[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = label
    return out


def test_hd95_shifted_cubes_anisotropic():
    # 4^3 cubes shifted by 2 voxels. Along axis 0 (2 mm): distances from one surface to the
    # other are 16 x 4 mm (far face), 12 x 2 mm, 24 x 0, 4 x 1 mm -> the 95th pct is 4 mm.
    shape = (12, 10, 10)
    a = _cube(shape, (2, 2, 2), (6, 6, 6))
    b = _cube(shape, (4, 2, 2), (8, 6, 6))
    assert M.hd95(a, b, 1, spacing=(2, 1, 1)) == pytest.approx(4.0)
    assert M.hd95(a, b, 1) == pytest.approx(2.0)  # isotropic 1 mm
    # same shift along axis 1 (1 mm voxels) -> 2 mm
    b1 = _cube(shape, (2, 4, 2), (6, 8, 6))
    assert M.hd95(a, b1, 1, spacing=(2, 1, 1)) == pytest.approx(2.0)
    assert M.hd95(a, a, 1, spacing=(2, 1, 1)) == 0.0


def test_hd95_single_voxels_and_definition():
    shape = (8, 8, 8)
    a = np.zeros(shape, dtype=np.int32)
    b = np.zeros(shape, dtype=np.int32)
    a[2, 2, 2] = 1
    b[5, 2, 2] = 1
    assert M.hd95(a, b, 1, spacing=(2, 1, 1)) == pytest.approx(6.0)  # 3 voxels x 2 mm
    b[:] = 0
    b[3, 4, 2] = 1
    assert M.hd95(a, b, 1, spacing=(2, 1, 1)) == pytest.approx(math.sqrt(2**2 + 2**2))
    # symmetric = max of the directed 95th percentiles: a = {p}, b = {p, p + 4 e0}
    # a->b: [0] -> 0; b->a: [0, 4] -> 0.95 * 4 = 3.8 (pooled [0, 0, 4] would give 3.6)
    b[:] = 0
    b[2, 2, 2] = 1
    b[6, 2, 2] = 1
    assert M.hd95(a, b, 1) == pytest.approx(3.8)
    assert M.hd95(b, a, 1) == pytest.approx(3.8)


def test_hd95_absent_and_per_label():
    shape = (10, 10, 10)
    a = _cube(shape, (2, 2, 2), (6, 6, 6))
    b = _cube(shape, (4, 2, 2), (8, 6, 6))
    a[8:, 8:, 8:] = 3  # label 3 only in a
    assert math.isnan(M.hd95(a, b, 3))
    assert math.isnan(M.hd95(a, b, 9))
    hd = M.hd95_per_label(a, b, spacing=(2, 1, 1))
    assert list(hd) == [1, 3]
    assert hd[1] == pytest.approx(4.0) and math.isnan(hd[3])
    assert list(M.hd95_per_label(a, b, labels=[1])) == [1]


# --------------------------------------------------------------------------- combined
def test_registration_metrics_json(label_pair):
    a, b = label_pair
    disp = np.zeros((3, 4, 4, 4))
    disp[0] = _grid((4, 4, 4))[0]  # det 2 everywhere (voxels), 1.5 if read as mm at 2 mm
    out = M.registration_metrics(a, b, disp, include_hd95=True)
    assert out["mean_dice"] == pytest.approx((0.5 + 2 / 3) / 3)
    assert out["dice_per_label"] == pytest.approx({"1": 0.5, "2": 2 / 3, "5": 0.0})
    assert out["folding_percent"] == 0.0 and out["std_log_jacobian"] == 0.0
    assert out["jacobian_min"] == pytest.approx(2.0)
    assert set(out["hd95_per_label"]) == {"1", "2", "5"}
    assert out["hd95_per_label"]["5"] != out["hd95_per_label"]["5"]  # NaN: absent in a
    text = json.dumps(out)
    assert json.loads(text)["dice_per_label"]["1"] == 0.5
    mm = M.registration_metrics(a, b, disp, spacing=(2, 1, 1), disp_in_mm=True)
    assert mm["jacobian_min"] == pytest.approx(1.5) and "hd95_per_label" not in mm
    mask = np.zeros((4, 4, 4), dtype=bool)
    assert math.isnan(M.registration_metrics(a, b, disp, mask=mask)["folding_percent"])
    assert list(M.registration_metrics(a, b, disp, labels=[2])["dice_per_label"]) == ["2"]


def test_registration_metrics_is_the_one_scorer(label_pair):
    """Overlap only, warp only, and both folding conventions from one Jacobian."""
    a, b = label_pair
    dice = M.registration_metrics(a, b, None)
    assert dice["mean_dice"] == M.mean_dice(a, b) and "folding_percent" not in dice
    disp = np.zeros((3, 4, 4, 4))
    disp[0, 1:3] = np.array([0.0, -3.0])[:, None, None]  # folds inside rows 1-2
    mask = np.zeros((4, 4, 4), dtype=bool)
    mask[:2] = True
    warp = M.registration_metrics(None, None, disp, mask)
    assert "mean_dice" not in warp
    assert warp["folding_percent"] == M.folding_percent(disp, mask=mask)
    assert warp["folding_percent_grid"] == M.folding_percent(disp)
    assert warp["folding_percent"] != warp["folding_percent_grid"]
    assert warp["std_log_jacobian"] == M.std_log_jacobian(disp, mask)
    assert M.shared_labels(a, b) == sorted(set(np.unique(a)) & set(np.unique(b)) - {0})
    with pytest.raises(ValueError, match="both"):
        M.registration_metrics(a, None, disp)
    with pytest.raises(ValueError, match="nothing to score"):
        M.registration_metrics(None, None, None)


def test_torch_tensors_accepted(label_pair):
    torch = pytest.importorskip("torch")
    a, b = label_pair
    assert M.dice_per_label(torch.from_numpy(a), torch.from_numpy(b)) == M.dice_per_label(a, b)
    assert M.mean_dice(torch.from_numpy(a), b) == M.mean_dice(a, b)
    disp = torch.zeros(3, 4, 4, 4, requires_grad=True)
    assert M.folding_percent(disp) == 0.0
    np.testing.assert_array_equal(M.jacobian_determinant(disp), 1.0)
    assert M.dice30(torch.tensor([0.3, 0.1, 0.2])) == pytest.approx(0.1)
    assert M.hd95(torch.from_numpy(a), torch.from_numpy(a), 1) == 0.0
    out = M.registration_metrics(torch.from_numpy(a), torch.from_numpy(b), disp)
    assert out["folding_percent"] == 0.0


# --------------------------------------------------------------------------- validation
def test_validation_labels(label_pair):
    a, b = label_pair
    with pytest.raises(ValueError, match=r"^a must be a 3-D"):
        M.dice_per_label(a[0], b)
    with pytest.raises(ValueError, match=r"^b must be a 3-D"):
        M.mean_dice(a, b[None])
    with pytest.raises(ValueError, match=r"^a \(4, 4, 4\) and b \(4, 4, 3\)"):
        M.dice_per_label(a, b[..., :3])
    nan_b = b.astype(float)
    nan_b[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"^b contains NaN"):
        M.dice_per_label(a, nan_b)
    with pytest.raises(ValueError, match=r"^a: non-integer values; not a label map"):
        M.hd95(a + 0.5, b, 1)
    # the package's one label rule: float storage within LABEL_TOLERANCE of whole numbers
    # (the scorer refused what the readers accepted)
    assert M.dice_per_label(a + 1e-4, b) == M.dice_per_label(a, b)
    with pytest.raises(ValueError, match=r"^spacing"):
        M.hd95(a, b, 1, spacing=(1, 1))
    with pytest.raises(ValueError, match=r"^spacing"):
        M.hd95_per_label(a, b, spacing=(1, 0, 1))
    with pytest.raises(ValueError, match=r"^labels"):
        M.dice_per_label(a, b, labels=[1.5])
    with pytest.raises(ValueError, match=r"^pair_scores"):
        M.dice30(np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"^pair_scores"):
        M.dice_percentile30([0.1, float("inf")])


def test_validation_disp_and_mask(label_pair):
    a, b = label_pair
    disp = np.zeros((3, 4, 4, 4))
    with pytest.raises(ValueError, match=r"^disp must have shape"):
        M.jacobian_determinant(disp[0])
    with pytest.raises(ValueError, match=r"^disp must have shape"):
        M.folding_percent(disp[:2])
    with pytest.raises(ValueError, match=r"^disp must have shape"):
        M.std_log_jacobian(disp[None])  # batches only for jacobian_determinant
    bad = disp.copy()
    bad[1, 2, 2, 2] = np.nan
    with pytest.raises(ValueError, match=r"^disp contains NaN"):
        M.summarize_warp(bad)
    with pytest.raises(ValueError, match=r"^disp needs >= 2 voxels"):
        M.jacobian_determinant(np.zeros((3, 1, 4, 4)))
    with pytest.raises(ValueError, match=r"^mask \(4, 4, 3\) must match"):
        M.folding_percent(disp, mask=np.ones((4, 4, 3)))
    with pytest.raises(ValueError, match=r"^mask must be a 3-D"):
        M.std_log_jacobian(disp, mask=np.ones((4, 4)))
    with pytest.raises(ValueError, match=r"^mask contains NaN"):
        M.folding_percent(disp, mask=np.full((4, 4, 4), np.nan))
    with pytest.raises(ValueError, match=r"^clip"):
        M.std_log_jacobian(disp, clip=0.0)
    with pytest.raises(ValueError, match=r"^fixed_labels \(4, 4, 4\) and moved_labels"):
        M.registration_metrics(a, b[..., :3], disp)
    with pytest.raises(ValueError, match=r"^moved_labels must be a 3-D"):
        M.registration_metrics(a, b[0], disp)
    with pytest.raises(ValueError, match=r"^disp \(3, 4, 4, 3\) must have the spatial shape"):
        M.registration_metrics(a, b, disp[..., :3])


def test_label_cropping_matches_full_volume():
    # the per-label bounding-box crop must not change Dice or HD95 (labels touching the grid
    # border, labels absent in one map, a negative label that disables the fast path)
    rng = np.random.default_rng(1)
    a = rng.integers(0, 4, size=(9, 8, 7))
    b = rng.integers(0, 4, size=(9, 8, 7))
    a[a == 3] = 0  # label 3 only in b
    for lab in (1, 2, 3):
        in_a, in_b = a == lab, b == lab
        full_dice = 2 * np.sum(in_a & in_b) / (in_a.sum() + in_b.sum())
        assert M.dice_per_label(a, b)[lab] == pytest.approx(full_dice)
    ref = {lab: M._hd95_masks(a == lab, b == lab, (2.0, 1.0, 1.0)) for lab in (1, 2)}
    assert M.hd95_per_label(a, b, labels=[1, 2], spacing=(2, 1, 1)) == pytest.approx(ref)
    neg = a.copy()
    neg[0, 0, 0] = -1
    d_neg = M.dice_per_label(neg, b, labels=[1, 2])
    d_ref = {lab: M.dice_per_label(np.where(neg == -1, 0, neg), b)[lab] for lab in (1, 2)}
    assert d_neg == pytest.approx(d_ref)
