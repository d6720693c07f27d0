"""ITK transforms on disk: conventions checked on points, and round trips through SimpleITK,
antspyx (antsApplyTransforms) and nitransforms against the package's own warp."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy.ndimage import gaussian_filter
from scipy.spatial.transform import Rotation

from contrareg_bids.io import transforms as T
from contrareg_bids.io.images import write_nifti
from contrareg_bids.nn.integrate import integrate_velocity, warp

SHAPE = (18, 20, 16)


def grid_affine(spacing=(1.5, 2.0, 1.2), origin=(-13.0, 7.5, 21.0), angles=(6, -4, 9)):
    """A RAS grid (axis codes stay RAS) with a small rotation, anisotropic voxels and an
    origin away from zero: every term of the voxel <-> LPS conversion matters."""
    a = np.eye(4)
    a[:3, :3] = Rotation.from_euler("xyz", angles, degrees=True).as_matrix() @ np.diag(spacing)
    a[:3, 3] = origin
    assert nib.aff2axcodes(a) == ("R", "A", "S")
    return a


def smooth_field(rng, shape=SHAPE, amplitude=2.0, sigma=2.5):
    d = np.stack([gaussian_filter(rng.normal(size=shape), sigma) for _ in range(3)])
    return d * (amplitude / np.abs(d).max())


def blob_image(rng, shape=SHAPE, margin=4):
    """A smooth image that is exactly zero within ``margin`` voxels of the border, so that the
    edge conventions of the interpolators (ITK replicates, grid_sample pads with 0) play no
    role in the comparisons."""
    img = gaussian_filter(rng.normal(size=shape), 1.5)
    img = (img - img.min()) / np.ptp(img)
    inner = np.zeros(shape, bool)
    inner[tuple(slice(margin, s - margin) for s in shape)] = True
    return np.where(inner, img, 0.0).astype(np.float32)


def sitk_affine(matrix=None, translation=(2.0, -1.5, 3.0), center=(1.0, 2.0, -3.0)):
    tx = sitk.AffineTransform(3)
    if matrix is None:
        matrix = Rotation.from_euler("xyz", [4, 3, -5], degrees=True).as_matrix() @ np.diag(
            [1.05, 0.97, 1.02]
        )
    tx.SetMatrix(tuple(np.asarray(matrix).ravel()))
    tx.SetTranslation(translation)
    tx.SetCenter(center)
    return tx


def affine_apply(tx: sitk.AffineTransform, p: np.ndarray) -> np.ndarray:
    m = np.asarray(tx.GetMatrix()).reshape(3, 3)
    c = np.asarray(tx.GetCenter())
    return (p - c) @ m.T + c + np.asarray(tx.GetTranslation())


def torch_warp(img: np.ndarray, disp: np.ndarray) -> np.ndarray:
    out = warp(torch.from_numpy(img)[None, None], torch.from_numpy(disp).float()[None])
    return out[0, 0].numpy()


def interior(shape=SHAPE, margin=2):
    return tuple(slice(margin, s - margin) for s in shape)


# --------------------------------------------------------------------------- conversions


def test_voxel_disp_to_world_flips_x_y():
    a = np.diag([2.0, 3.0, 4.0, 1.0])
    u = np.ones((3, 2, 2, 2))
    d = T.voxel_disp_to_world(u, a)
    np.testing.assert_allclose(d[:, 0, 0, 0], [-2.0, -3.0, 4.0])
    np.testing.assert_allclose(T.world_disp_to_voxel(d, a), u)


def test_geometry_round_trip():
    a = grid_affine()
    img = T.image_from_array(np.zeros(SHAPE, np.float32), a)
    np.testing.assert_allclose(T.affine_from_image(img), a, atol=1e-12)
    assert img.GetSize() == SHAPE
    # the LPS position of a voxel is the flipped RAS position
    idx = (3, 5, 7)
    ras = a[:3, :3] @ np.array(idx) + a[:3, 3]
    np.testing.assert_allclose(img.TransformIndexToPhysicalPoint(idx), T.LPS @ ras, atol=1e-9)


def test_displacement_nifti_layout_and_round_trip(tmp_path, rng):
    a = grid_affine()
    disp = smooth_field(rng)
    path = T.write_displacement_nifti(disp, a, tmp_path / "field.nii.gz")
    nii = nib.load(path)
    assert nii.shape == (*SHAPE, 1, 3)  # ITK/ANTs: (X, Y, Z, 1, 3)
    assert nii.header.get_intent()[0] == "vector"
    assert nii.get_data_dtype() == np.float32
    np.testing.assert_allclose(nii.affine, a, atol=1e-5)
    stored = np.moveaxis(nii.get_fdata()[:, :, :, 0, :], -1, 0)
    np.testing.assert_allclose(stored, T.voxel_disp_to_world(disp, a), atol=1e-5)
    back, aff = T.read_displacement_nifti(path)
    np.testing.assert_allclose(back, disp, atol=1e-5)
    np.testing.assert_allclose(aff, a, atol=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == ["field.nii.gz"]  # no temporary left


def test_displacement_nifti_refuses_sheared_grid(tmp_path):
    a = grid_affine()
    a[0, 1] += 0.3
    with pytest.raises(ValueError, match="sheared"):
        T.write_displacement_nifti(np.zeros((3, *SHAPE)), a, tmp_path / "f.nii.gz")
    assert not list(tmp_path.iterdir())


def test_atomic_output_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "x.nii.gz"
    with pytest.raises(RuntimeError), T.atomic_output(target) as tmp:
        assert tmp.name.endswith(".nii.gz") and tmp.parent == tmp_path
        tmp.write_bytes(b"partial")
        raise RuntimeError("boom")
    assert not list(tmp_path.iterdir())


def test_read_errors_name_the_file(tmp_path):
    bad = tmp_path / "broken.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match=r"broken\.h5"):
        T.read_transform(bad)
    with pytest.raises(FileNotFoundError, match=r"missing\.mat"):
        T.read_ants_affine(tmp_path / "missing.mat")
    img = tmp_path / "img.nii.gz"
    write_nifti(np.zeros(SHAPE, np.float32), grid_affine(), img)
    with pytest.raises(ValueError, match=r"img\.nii\.gz.*displacement"):
        T.read_displacement_nifti(img)


# --------------------------------------------------------------------------- (a) analytic


@pytest.mark.parametrize("affine_first", [False, True])
def test_composite_matches_analytic_formula(tmp_path, rng, affine_first):
    """A displacement that is affine in voxel coordinates is interpolated exactly, so the
    composite can be checked against the closed form at arbitrary points (mm, LPS)."""
    a = grid_affine()
    b = np.array([[0.05, -0.02, 0.01], [0.03, 0.04, -0.02], [-0.01, 0.02, 0.03]])
    c = np.array([0.7, -0.4, 0.3])
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"))
    disp = np.einsum("ij,j...->i...", b, ijk) + c[:, None, None, None]
    tx = sitk_affine()
    path = T.write_composite(tmp_path / "xfm.h5", tx, disp, a, affine_first=affine_first)
    composite = T.read_transform(path)

    def field_lps(p_lps):  # d(p) in LPS mm, from the closed form of the field
        i = np.linalg.solve(a[:3, :3], T.LPS @ p_lps - a[:3, 3])
        return T.LPS @ a[:3, :3] @ (b @ i + c)

    # points well inside the field's grid, where they are looked up
    vox = rng.uniform(3, 12, size=(25, 3))
    pts_field = (T.LPS @ (a[:3, :3] @ vox.T + a[:3, 3:])).T
    if affine_first:  # T(q) = a(q) + d(a(q)): choose q so that a(q) is inside the grid
        inv = tx.GetInverse()
        queries = np.array([inv.TransformPoint(tuple(p)) for p in pts_field])
        expected = np.array([p + field_lps(p) for p in pts_field])
    else:  # T(p) = A(p + d(p))
        queries = pts_field
        expected = affine_apply(tx, np.array([p + field_lps(p) for p in pts_field]))
    got = T.transform_points(composite, queries)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    # the check is sensitive to the order: the other order is clearly different
    other = T.make_composite(tx, disp, a, affine_first=not affine_first)
    assert np.abs(T.transform_points(other, queries) - expected).max() > 0.1


def test_itk_composite_applies_last_added_first():
    """The ITK rule the module relies on, shown with two non-commuting transforms."""
    scale = sitk.ScaleTransform(3, (2.0, 2.0, 2.0))
    shift = sitk.TranslationTransform(3, (1.0, 0.0, 0.0))
    comp = sitk.CompositeTransform(3)
    comp.AddTransform(scale)
    comp.AddTransform(shift)  # added last -> acts first
    assert comp.TransformPoint((1.0, 0.0, 0.0)) == pytest.approx((4.0, 0.0, 0.0))
    # chain_transforms follows antspyx's transformlist: the first listed acts first on points
    assert T.chain_transforms([shift, scale]).TransformPoint((1.0, 0.0, 0.0)) == pytest.approx(
        (4.0, 0.0, 0.0)
    )


def test_read_ants_affine_matches_antspyx(tmp_path):
    ants = pytest.importorskip("ants")
    m = Rotation.from_euler("xyz", [10, -5, 3], degrees=True).as_matrix() * 1.1
    atx = ants.create_ants_transform(
        transform_type="AffineTransform",
        matrix=m,
        translation=(3.0, -2.0, 1.0),
        center=(5.0, 6.0, -7.0),
    )
    path = tmp_path / "x0GenericAffine.mat"
    ants.write_transform(atx, str(path))
    tx = T.read_ants_affine(path)
    assert isinstance(tx, sitk.AffineTransform)
    for p in [(0.0, 0.0, 0.0), (10.0, -20.0, 30.0), (-4.0, 8.0, 1.5)]:
        np.testing.assert_allclose(tx.TransformPoint(p), atx.apply_to_point(p), atol=1e-4)
    # and our writer produces a file antspyx reads back identically
    T.write_affine(tx, tmp_path / "copy.mat")
    back = ants.read_transform(str(tmp_path / "copy.mat"))
    np.testing.assert_allclose(
        back.apply_to_point((1, 2, 3)), tx.TransformPoint((1, 2, 3)), atol=1e-4
    )


def test_compose_to_field_matches_composite(tmp_path, rng):
    a = grid_affine()
    disp = smooth_field(rng)
    tx = sitk_affine()
    h5 = T.write_composite(tmp_path / "c.h5", tx, disp, a, affine_first=False)
    mat = T.write_affine(tx, tmp_path / "a.mat")
    field = T.write_displacement_nifti(disp, a, tmp_path / "d.nii.gz")
    from_h5 = T.compose_to_field(h5, a, SHAPE)
    from_list = T.compose_to_field([field, mat], a, SHAPE)  # ANTs order: field acts first
    np.testing.assert_allclose(from_h5, from_list, atol=1e-4)
    # at voxel centres: x + u(x) == A^-1 o tx o (x + disp(x)) in voxels
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij")).reshape(3, -1)
    p = T.LPS @ (a[:3, :3] @ (ijk + disp.reshape(3, -1)) + a[:3, 3:])
    q = T.LPS @ affine_apply(tx, p.T).T
    target = np.linalg.solve(a[:3, :3], q - a[:3, 3:]) - ijk
    np.testing.assert_allclose(from_h5.reshape(3, -1), target, atol=1e-4)


# --------------------------------------------------------------------------- (b) own warp


@pytest.fixture
def warp_case(tmp_path, rng):
    a = grid_affine()
    disp = smooth_field(rng)
    img = blob_image(rng)
    img_path = write_nifti(img, a, tmp_path / "img.nii.gz")
    expected = torch_warp(img, disp)
    return a, disp, img, img_path, expected


def assert_same_image(got, expected, rel=1e-3):
    sl = interior()
    diff = np.abs(got[sl] - expected[sl])
    rng_ = np.ptp(expected)
    assert diff.mean() < rel * rng_, diff.mean()
    assert diff.max() < 10 * rel * rng_, diff.max()


def test_exported_field_reproduces_warp_simpleitk(tmp_path, warp_case):
    a, disp, _, img_path, expected = warp_case
    field = T.write_displacement_nifti(disp, a, tmp_path / "fwd.nii.gz")
    h5 = T.write_composite(tmp_path / "fwd.h5", None, disp, a, affine_first=False)
    for xfm in (field, h5):
        out = T.apply_transform(img_path, img_path, xfm, tmp_path / "out.nii.gz")
        assert_same_image(nib.load(out).get_fdata(), expected)


def test_composite_with_affine_reproduces_two_step_resampling(tmp_path, rng):
    """Subject on its own grid -> affine onto the model grid -> warp (the app's path, two
    interpolations) vs one resampling through the exported composite."""
    from contrareg_bids.processing.grid import resample_to_grid

    model_a = grid_affine()
    subj_shape = (36, 40, 30)  # covers the model grid: no field-of-view edge effects
    subj_a = np.diag([1.3, 1.3, 1.3, 1.0])
    centre = model_a[:3, :3] @ ((np.array(SHAPE) - 1) / 2) + model_a[:3, 3]
    subj_a[:3, 3] = centre - 1.3 * (np.array(subj_shape) - 1) / 2
    subj = gaussian_filter(rng.normal(size=subj_shape), 2.5)
    subj_path = write_nifti(subj.astype(np.float32), subj_a, tmp_path / "subj.nii.gz")
    tx = sitk_affine(translation=(1.0, -0.5, 0.5), center=(0.0, 0.0, 0.0))
    disp = smooth_field(rng, amplitude=1.0)
    on_model = resample_to_grid(subj_path, model_a, SHAPE, transform=tx)
    expected = torch_warp(on_model.astype(np.float32), disp)
    h5 = T.write_composite(tmp_path / "fwd.h5", tx, disp, model_a, affine_first=False)
    ref = write_nifti(np.zeros(SHAPE, np.float32), model_a, tmp_path / "ref.nii.gz")
    out = nib.load(T.apply_transform(subj_path, ref, h5, tmp_path / "o.nii.gz")).get_fdata()
    inside = np.zeros(SHAPE, bool)
    inside[interior(margin=4)] = True
    inside &= expected != 0
    diff = np.abs(out - expected)[inside]
    # two linear interpolations vs one: measured 0.4 % mean, 2.6 % max of the range
    assert diff.mean() < 0.01 * np.ptp(expected), diff.mean()
    assert diff.max() < 0.06 * np.ptp(expected), diff.max()


def test_label_resampling_keeps_labels(tmp_path, rng):
    a = grid_affine()
    labels = np.zeros(SHAPE, np.int16)
    labels[4:10, 5:12, 3:9] = 3
    labels[10:14, 5:12, 3:9] = 7
    lab_path = write_nifti(labels, a, tmp_path / "lab.nii.gz")
    shift = np.zeros((3, *SHAPE))
    shift[0] = 2.0  # sample two voxels further along x
    field = T.write_displacement_nifti(shift, a, tmp_path / "shift.nii.gz")
    for interp in ("nearest", "label"):
        out = nib.load(T.apply_transform(lab_path, lab_path, field, tmp_path / "o.nii.gz", interp))
        assert out.get_data_dtype() == np.int16
        got = np.asarray(out.dataobj)
        np.testing.assert_array_equal(got[:-2], labels[2:])
    with pytest.raises(ValueError, match="interpolation"):
        T.apply_transform(lab_path, lab_path, field, tmp_path / "o.nii.gz", "cubic")


# --------------------------------------------------------------------------- (c) antspyx


def test_exported_field_reproduces_warp_antspyx(tmp_path, warp_case):
    ants = pytest.importorskip("ants")
    a, disp, _, img_path, expected = warp_case
    field = T.write_displacement_nifti(disp, a, tmp_path / "fwd.nii.gz")
    h5 = T.write_composite(tmp_path / "fwd.h5", None, disp, a, affine_first=False)
    img = ants.image_read(str(img_path))
    for xfm in (field, h5):
        out = ants.apply_transforms(img, img, transformlist=[str(xfm)])
        assert_same_image(out.numpy(), expected)


def test_composite_with_affine_antspyx_matches_simpleitk(tmp_path, rng, warp_case):
    ants = pytest.importorskip("ants")
    a, disp, _, img_path, _ = warp_case
    tx = sitk_affine(translation=(0.5, -0.5, 0.8), center=(0.0, 0.0, 0.0))
    h5 = T.write_composite(tmp_path / "fwd.h5", tx, disp, a, affine_first=False)
    ours = nib.load(T.apply_transform(img_path, img_path, h5, tmp_path / "o.nii.gz"))
    img = ants.image_read(str(img_path))
    theirs = ants.apply_transforms(img, img, transformlist=[str(h5)]).numpy()
    np.testing.assert_allclose(ours.get_fdata(), theirs, atol=1e-5)
    # the same transform as antspyx's list [field.nii.gz, affine.mat] (the field acts first
    # on the reference point, like antsRegistration's fwdtransforms [Warp, GenericAffine])
    mat = T.write_affine(tx, tmp_path / "a.mat")
    field = T.write_displacement_nifti(disp, a, tmp_path / "d.nii.gz")
    listed = ants.apply_transforms(img, img, transformlist=[str(field), str(mat)]).numpy()
    np.testing.assert_allclose(listed, theirs, atol=1e-5)
    ours_listed = T.apply_transform(img_path, img_path, [field, mat], tmp_path / "l.nii.gz")
    np.testing.assert_allclose(nib.load(ours_listed).get_fdata(), theirs, atol=1e-5)
    # the other order is a different transform (the test is sensitive to it)
    swapped = ants.apply_transforms(
        img, img, transformlist=[str(mat), str(field)], whichtoinvert=[False, False]
    ).numpy()
    assert np.abs(swapped - theirs).max() > 0.05


@pytest.mark.filterwarnings("ignore:Reference space not set")
def test_composite_readable_by_nitransforms(tmp_path, rng):
    """nitransforms reads the composite: same points at the field's grid points (off the
    grid it interpolates the field with cubic splines, ITK linearly)."""
    nt = pytest.importorskip("nitransforms")
    from nitransforms.manip import load

    a = grid_affine()
    disp = smooth_field(rng)
    tx = sitk_affine()
    for affine_first in (False, True):
        aff = tx.GetInverse() if affine_first else tx
        h5 = T.write_composite(tmp_path / "x.h5", aff, disp, a, affine_first=affine_first)
        chain = load(h5, fmt="itk")
        assert isinstance(chain, nt.manip.TransformChain)
        vox = rng.integers(1, 14, size=(30, 3)).astype(float)
        grid_pts = (a[:3, :3] @ vox.T + a[:3, 3:]).T  # RAS
        if affine_first:  # query where the inverse affine lands on the field's grid points
            grid_pts = np.array([T.LPS @ tx.TransformPoint(tuple(T.LPS @ p)) for p in grid_pts])
        ras = chain.map(grid_pts)
        lps = T.transform_points(h5, (T.LPS @ grid_pts.T).T)
        np.testing.assert_allclose(ras, (T.LPS @ lps.T).T, atol=1e-4)
    # and the 5-D NIfTI field on its own
    from nitransforms.io.itk import ITKDisplacementsField
    from nitransforms.nonlinear import DenseFieldTransform

    field = T.write_displacement_nifti(disp, a, tmp_path / "d.nii.gz")
    xfm = DenseFieldTransform(ITKDisplacementsField.from_filename(field))
    vox = rng.integers(0, 14, size=(30, 3)).astype(float)
    ras = (a[:3, :3] @ vox.T + a[:3, 3:]).T
    lps = T.transform_points(field, (T.LPS @ ras.T).T)
    np.testing.assert_allclose(xfm.map(ras), (T.LPS @ lps.T).T, atol=1e-4)


# --------------------------------------------------------------------------- (d) inverse pair


def test_forward_then_inverse_composite_is_identity(tmp_path, rng):
    """reference -> subject = A o (id + exp(v)); subject -> reference = (id + exp(-v)) o A^-1.
    Their composition is close to the identity (up to the scaling-and-squaring error)."""
    a = grid_affine()
    v = torch.from_numpy(smooth_field(rng, amplitude=1.5, sigma=3.0)).float()[None]
    fwd = integrate_velocity(v, 7)[0].double().numpy()
    inv = integrate_velocity(-v, 7)[0].double().numpy()
    tx = sitk_affine()
    f = T.read_transform(T.write_composite(tmp_path / "f.h5", tx, fwd, a, affine_first=False))
    i = T.read_transform(
        T.write_composite(tmp_path / "i.h5", tx.GetInverse(), inv, a, affine_first=True)
    )
    vox = rng.uniform(4, 11, size=(50, 3))
    pts = (T.LPS @ (a[:3, :3] @ vox.T + a[:3, 3:])).T
    there = T.transform_points(f, pts)
    back = T.transform_points(i, there)
    err = np.linalg.norm(back - pts, axis=1)
    moved = np.linalg.norm(there - affine_apply(tx, pts), axis=1)
    assert moved.max() > 1.0  # the field really moves points (mm)
    assert err.max() < 0.15, err.max()  # mm, voxels are 1.2-2 mm
    # and subject -> reference -> subject as well
    err2 = np.linalg.norm(T.transform_points(f, T.transform_points(i, there)) - there, axis=1)
    assert err2.max() < 0.15, err2.max()


def test_apply_transform_output_grid_and_dtype(tmp_path, warp_case):
    a, disp, _, img_path, _ = warp_case
    field = T.write_displacement_nifti(disp, a, tmp_path / "fwd.nii.gz")
    out = nib.load(T.apply_transform(img_path, img_path, field, tmp_path / "o.nii.gz"))
    assert out.get_data_dtype() == np.float32
    np.testing.assert_allclose(out.affine, a, atol=1e-5)
    assert out.shape == SHAPE
    assert sorted(os.listdir(tmp_path)) == sorted(["img.nii.gz", "fwd.nii.gz", "o.nii.gz"])
    assert isinstance(out.get_filename(), str) and Path(out.get_filename()).exists()
