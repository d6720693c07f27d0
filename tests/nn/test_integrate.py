"""The spatial transformer and scaling-and-squaring, checked against independent maths."""

import numpy as np
import pytest
import torch
from scipy.linalg import expm
from scipy.ndimage import gaussian_filter, map_coordinates

from contrareg_bids.nn.integrate import (
    compose,
    identity_grid,
    integrate_velocity,
    resize_field,
    warp,
    warp_labels,
)


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _smooth_field(rng, shape, sigma=3.0, amplitude=2.0):
    v = np.stack([gaussian_filter(rng.standard_normal(shape), sigma) for _ in range(3)])
    return (v / np.abs(v).max() * amplitude).astype(np.float32)


@pytest.mark.parametrize(
    ("padding", "scipy_mode"), [("zeros", "grid-constant"), ("border", "nearest")]
)
def test_warp_matches_map_coordinates(rng, padding, scipy_mode):
    src = rng.random((9, 10, 11)).astype(np.float32)
    disp = (rng.standard_normal((3, 9, 10, 11)) * 2.5).astype(np.float32)
    out = warp(_t(src)[None, None], _t(disp)[None], padding_mode=padding)[0, 0].numpy()
    loc = identity_grid(src.shape)[0].numpy() + disp
    ref = map_coordinates(src, loc, order=1, mode=scipy_mode, cval=0.0)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_warp_nearest_matches_map_coordinates(rng):
    src = rng.random((8, 9, 10)).astype(np.float32)
    disp = (rng.uniform(-2, 2, (3, 8, 9, 10))).astype(np.float32)
    disp = np.round(disp) + rng.uniform(-0.3, 0.3, disp.shape).astype(np.float32)
    out = warp(_t(src)[None, None], _t(disp)[None], mode="nearest")[0, 0].numpy()
    loc = identity_grid(src.shape)[0].numpy() + disp
    ref = map_coordinates(src, loc, order=0, mode="grid-constant", cval=0.0)
    np.testing.assert_allclose(out, ref, atol=1e-6)


def test_integer_shift_moves_content_in_itk_direction():
    src = torch.zeros(1, 1, 8, 8, 8)
    src[0, 0, 5, 4, 4] = 1.0
    disp = torch.zeros(1, 3, 8, 8, 8)
    disp[:, 0] = 2.0  # moved(x) = src(x + 2 e0): the bright voxel appears at index 3
    out = warp(src, disp)
    assert out[0, 0, 3, 4, 4] == pytest.approx(1.0)
    assert out.sum() == pytest.approx(1.0)


def test_constant_velocity_integrates_to_translation():
    v = torch.zeros(1, 3, 12, 13, 14)
    v[:, 0], v[:, 1], v[:, 2] = 1.5, -0.75, 2.25
    disp = integrate_velocity(v, steps=7)
    torch.testing.assert_close(disp, v, atol=1e-5, rtol=0)


def test_rotation_velocity_matches_matrix_exponential():
    shape = (33, 33, 9)
    centre = (np.array(shape) - 1) / 2
    theta = 0.15  # radians
    a = np.zeros((3, 3))
    a[0, 1], a[1, 0] = -theta, theta  # skew-symmetric: v(x) = A (x - c) rotates about axis 2
    x = identity_grid(shape)[0].numpy() - centre[:, None, None, None]
    v = np.einsum("ij,j...->i...", a, x)
    disp = integrate_velocity(_t(v)[None], steps=8)[0].numpy()
    expected = np.einsum("ij,j...->i...", expm(a) - np.eye(3), x)
    r = np.sqrt(x[0] ** 2 + x[1] ** 2)
    inner = r < 10  # away from the borders, where samples leave the grid
    err = np.abs(disp - expected)[:, inner].max()
    assert err < 0.02, err
    # without integration (a single Euler step) the error is an order larger
    assert np.abs(v - expected)[:, inner].max() > 10 * err


def test_forward_and_inverse_compose_to_identity(rng):
    shape = (32, 32, 32)
    v = _t(_smooth_field(rng, shape, sigma=4.0, amplitude=3.0))[None]
    fwd = integrate_velocity(v, steps=7)
    inv = integrate_velocity(-v, steps=7)
    assert fwd.abs().max() > 1.0  # a real deformation
    residual = compose(fwd, inv)[..., 6:-6, 6:-6, 6:-6]
    assert residual.abs().max() < 0.05
    residual = compose(inv, fwd)[..., 6:-6, 6:-6, 6:-6]
    assert residual.abs().max() < 0.05


def test_compose_matches_sequential_warping(rng):
    shape = (20, 21, 22)
    img = _t(gaussian_filter(rng.random(shape), 2))[None, None]
    a = _t(_smooth_field(rng, shape, amplitude=1.5))[None]
    b = _t(_smooth_field(rng, shape, amplitude=1.5))[None]
    # warp(warp(img, a), b)(x) = img(x + b(x) + a(x + b(x))) = warp(img, compose(a, b))
    twice = warp(warp(img, a), b)[..., 4:-4, 4:-4, 4:-4]
    once = warp(img, compose(a, b))[..., 4:-4, 4:-4, 4:-4]
    assert (twice - once).abs().max() < 0.02


def test_resize_field_exact_for_affine():
    a = np.array([[0.05, 0.01, 0.0], [0.0, -0.03, 0.02], [0.01, 0.0, 0.04]])
    t = np.array([1.0, -0.5, 0.25])

    def field(shape, extent):
        # same physical map on grids of different resolution (voxel units of each grid)
        x = identity_grid(shape)[0].numpy()
        scale = (np.array(extent) - 1) / (np.array(shape) - 1)
        phys = x * scale[:, None, None, None]
        u = np.einsum("ij,j...->i...", a, phys) + t[:, None, None, None]
        return u / scale[:, None, None, None]

    fine, coarse = (21, 25, 17), (11, 13, 9)
    out = resize_field(_t(field(coarse, fine))[None], fine)[0].numpy()
    np.testing.assert_allclose(out, field(fine, fine), atol=1e-4)


def test_half_resolution_integration_close_to_full(rng):
    v = _t(_smooth_field(rng, (32, 30, 28), sigma=5.0, amplitude=2.0))[None]
    full = integrate_velocity(v, steps=6)
    half = integrate_velocity(v, steps=6, downsize=2)
    err = (full - half)[..., 4:-4, 4:-4, 4:-4].abs().max()
    assert err < 0.1, err


@pytest.mark.parametrize("method", ["nearest", "onehot"])
def test_warp_labels_integer_shift_is_exact(rng, method):
    labels = torch.from_numpy(rng.integers(0, 5, (10, 11, 12)))[None, None]
    disp = torch.zeros(1, 3, 10, 11, 12)
    disp[:, 1] = -2.0
    out = warp_labels(labels, disp, method)
    assert out.dtype == labels.dtype
    torch.testing.assert_close(out[..., :, 2:, :], labels[..., :, :-2, :])


def test_onehot_labels_follow_smooth_warp(rng):
    labels = np.zeros((24, 24, 24), dtype=np.int64)
    labels[6:18, 6:18, 6:18] = 1
    labels[9:15, 9:15, 9:15] = 2
    disp = _t(_smooth_field(rng, labels.shape, amplitude=1.5))[None]
    out = warp_labels(torch.from_numpy(labels)[None, None], disp, "onehot")[0, 0].numpy()
    loc = identity_grid(labels.shape)[0].numpy() + disp[0].numpy()
    ref = map_coordinates(labels, loc, order=0, mode="grid-constant")
    assert set(np.unique(out)) <= {0, 1, 2}
    assert (out == ref).mean() > 0.97


def test_warp_rejects_bad_input():
    with pytest.raises(ValueError, match="disp"):
        warp(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 2, 4, 4, 4))
    with pytest.raises(ValueError, match="spatial shape"):
        warp(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 3, 4, 4, 5))
    with pytest.raises(ValueError, match="velocity"):
        integrate_velocity(torch.zeros(1, 3, 4, 4), steps=3)
    v = torch.zeros(1, 3, 4, 4, 4)
    v[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="velocity contains NaN"):
        integrate_velocity(v, steps=3)
