"""Preprocessing and registration functions on tiny synthetic volumes (32^3, 2 mm voxels),
with the real antspyx / SimpleITK underneath."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy.ndimage import gaussian_filter

from contrareg_bids.io import transforms as T
from contrareg_bids.io.images import write_nifti
from contrareg_bids.processing import grid as grid_mod
from contrareg_bids.processing import masks as masks_mod
from contrareg_bids.processing.normalize import (
    check_normalization,
    normalization_description,
    normalize_intensity,
    percentile_normalize,
)
from contrareg_bids.settings import RegistrationSettings

pytest.importorskip("ants", reason="antspyx not installed")

SHAPE = (32, 32, 32)
AFFINE = np.array([[2.0, 0, 0, -31.0], [0, 2.0, 0, -35.0], [0, 0, 2.0, -20.0], [0, 0, 0, 1.0]])
#: the network alone at lambda 0.3 on the CPU (no refinement, no fine stage)
NETWORK_03 = RegistrationSettings.from_options({"lam": 0.3, "device": "cpu", "fine_steps": 0})


def phantom(shape=SHAPE, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth 'brain': ellipsoid (radii 11, 13, 10 voxels) with a brighter core and four
    asymmetric blobs (so rotations are identifiable), exactly 0 outside. Returns
    ``(image, brain mask)``."""
    rng = np.random.default_rng(seed)
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")).astype(float)
    c = (np.array(shape) - 1) / 2
    radii = np.array([11.0, 13.0, 10.0])
    r = np.sqrt((((ijk - c[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0))
    brain = r < 1
    img = np.where(r < 0.55, 100.0, np.where(brain, 60.0, 0.0))
    for _ in range(4):
        p = c + rng.uniform(-6, 6, 3)
        img += 40 * np.exp(-((ijk - p[:, None, None, None]) ** 2).sum(0) / 8.0) * brain
    return (gaussian_filter(img, 0.7) * brain).astype(np.float32), brain


def rigid(angles_deg=(6, -4, 8), translation=(3.0, -2.0, 4.0)) -> sitk.Euler3DTransform:
    """Reference -> subject rigid transform, rotating about the grid centre."""
    tx = sitk.Euler3DTransform()
    tx.SetRotation(*np.deg2rad(angles_deg))
    tx.SetTranslation(translation)
    centre = AFFINE[:3, :3] @ ((np.array(SHAPE) - 1) / 2) + AFFINE[:3, 3]
    tx.SetCenter(tuple(T.LPS @ centre))
    return tx


def brain_points(brain: np.ndarray, step: int = 40) -> np.ndarray:
    """LPS mm positions of every ``step``-th brain voxel."""
    ijk = np.argwhere(brain)[::step]
    return (T.LPS @ (AFFINE[:3, :3] @ ijk.T + AFFINE[:3, 3:])).T


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict:
    """Reference 'T1w' (the phantom) and a subject 'T2w': the phantom moved by a known rigid
    transform, with inverted contrast inside the head (a multi-modal pair)."""
    d = tmp_path_factory.mktemp("pair")
    img, brain = phantom()
    fixed = write_nifti(img, AFFINE, d / "fixed.nii.gz")
    mask = write_nifti(brain.astype(np.uint8), AFFINE, d / "fixed_mask.nii.gz")
    true = rigid()
    # subject(q) = fixed(true^-1(q)), so that subject(true(p)) = fixed(p)
    moved = grid_mod.resample_to_grid(fixed, AFFINE, SHAPE, transform=true.GetInverse())
    head = moved > 1.0
    t2 = np.where(head, 150.0 - moved, 0.0).astype(np.float32)
    moving = write_nifti(t2, AFFINE, d / "moving.nii.gz")
    true_mask = grid_mod.resample_to_grid(
        mask, AFFINE, SHAPE, transform=true.GetInverse(), interpolation="nearest"
    )
    return {
        "dir": d,
        "fixed": fixed,
        "fixed_mask": mask,
        "moving": moving,
        "true": true,
        "brain": brain,
        "moving_brain": true_mask > 0,
    }


FAST_AFFINE = {
    "iterations": (100, 50, 20),
    "shrink_factors": (4, 2, 1),
    "smoothing_sigmas": (2, 1, 0),
}


# --------------------------------------------------------------------------- N4


def test_n4_removes_multiplicative_bias(tmp_path):
    from contrareg_bids.processing.n4 import n4_bias_correct

    _, brain = phantom()
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij")).astype(float)
    bias = np.exp(0.5 * (ijk[0] - 16) / 16 + 0.3 * (ijk[1] - 16) / 16)
    uniform = np.where(brain, 100.0, 0.0)
    src = write_nifti((uniform * bias).astype(np.float32), AFFINE, tmp_path / "b.nii.gz")
    mask = write_nifti(brain.astype(np.uint8), AFFINE, tmp_path / "m.nii.gz")

    def cv(x):
        return x[brain].std() / x[brain].mean()

    out = n4_bias_correct(
        src,
        tmp_path / "n4.nii.gz",
        mask,
        shrink=2,
        iterations=(50, 50, 50),
        spline_distance_mm=100,
        bias_file=tmp_path / "bias.nii.gz",
    )
    corrected = nib.load(out)
    before, after = cv(uniform * bias), cv(corrected.get_fdata())
    assert before > 0.15 and after < 0.2 * before, (before, after)
    np.testing.assert_allclose(corrected.affine, AFFINE)
    est = nib.load(tmp_path / "bias.nii.gz").get_fdata()[brain]
    assert np.corrcoef(est, bias[brain])[0, 1] > 0.98  # the field found is the one applied


def test_n4_errors_name_the_file(tmp_path):
    from contrareg_bids.processing.n4 import n4_bias_correct

    empty = write_nifti(np.zeros(SHAPE, np.float32), AFFINE, tmp_path / "empty.nii.gz")
    with pytest.raises(ValueError, match=r"empty\.nii\.gz"):
        n4_bias_correct(empty, tmp_path / "o.nii.gz")
    with pytest.raises(FileNotFoundError, match=r"nope\.nii\.gz"):
        n4_bias_correct(tmp_path / "nope.nii.gz", tmp_path / "o.nii.gz")
    assert not (tmp_path / "o.nii.gz").exists()


# --------------------------------------------------------------------------- normalisation


def test_normalisation_maps_percentiles_to_unit_range(tmp_path, rng):
    _, brain = phantom()
    img = np.where(brain, rng.uniform(100, 1100, SHAPE), rng.uniform(0, 30, SHAPE))
    src = write_nifti(img.astype(np.float32), AFFINE, tmp_path / "i.nii.gz")
    mask = write_nifti(brain.astype(np.uint8), AFFINE, tmp_path / "m.nii.gz")
    res = normalize_intensity(src, tmp_path / "n.nii.gz", mask)
    out = nib.load(res.out_file).get_fdata()
    lo, hi = np.percentile(img[brain].astype(np.float32), [0.5, 99.5])
    assert res.low_value == pytest.approx(lo, rel=1e-5)
    assert res.high_value == pytest.approx(hi, rel=1e-5)
    assert out.min() == 0.0 and out.max() == pytest.approx(1.0)
    assert np.all(out[~brain] == 0.0)
    inside = out[brain]
    assert np.mean(inside == 0.0) == pytest.approx(0.005, abs=0.002)
    assert np.mean(inside >= 1.0 - 1e-6) == pytest.approx(0.005, abs=0.002)
    mid = (img[brain] > lo) & (img[brain] < hi)
    np.testing.assert_allclose(inside[mid], (img[brain][mid] - lo) / (hi - lo), atol=1e-5)
    assert res.description == {"method": "percentile", "lower": 0.5, "upper": 99.5, "mask": True}
    assert res.description == normalization_description()


def test_normalisation_recipe_check():
    bundle_recipe = {"method": "percentile", "lower": 0.5, "upper": 99.5, "mask": True}
    check_normalization(normalization_description(), bundle_recipe)
    with pytest.raises(ValueError, match="upper"):
        check_normalization(normalization_description(upper=99.0), bundle_recipe)
    with pytest.raises(ValueError, match="mask"):
        check_normalization(normalization_description(mask=False), bundle_recipe)
    with pytest.raises(ValueError, match="constant"):
        percentile_normalize(np.ones((4, 4, 4)), None)


# --------------------------------------------------------------------------- masks


def test_skullstripped_detection(rng):
    img, brain = phantom()
    stripped = img.copy()
    stripped[14:18, 14:18, 14:18] = 0.0  # a zeroed ventricle inside the brain
    mask = masks_mod.mask_from_skullstripped(stripped)
    assert mask is not None
    np.testing.assert_array_equal(mask, brain)  # the ventricle is filled back
    # a head: skull shell and scanner noise in the background
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij")).astype(float)
    r = np.sqrt((((ijk - 15.5) / np.array([14.0, 15.0, 14.0])[:, None, None, None]) ** 2).sum(0))
    head = img + np.where((r > 0.85) & (r < 1.0), 200.0, 0.0) + np.abs(rng.normal(0, 3, SHAPE))
    assert masks_mod.mask_from_skullstripped(head) is None
    # a head whose background is exactly zero but the face region holds noise: not one blob
    speckled = stripped + np.where(rng.random(SHAPE) < 0.05, 5.0, 0.0) * (~brain)
    assert masks_mod.mask_from_skullstripped(speckled) is None


def test_mask_helpers():
    m = np.zeros((9, 9, 9), bool)
    m[2:7, 2:7, 2:7] = True
    m[4, 4, 4] = False
    m[0, 0, 0] = True
    clean = masks_mod.fill_holes(masks_mod.largest_component(m))
    assert clean[4, 4, 4] and not clean[0, 0, 0]
    grown = masks_mod.dilate_mask(clean, 2.0, spacing=(2.0, 2.0, 2.0))
    assert grown.sum() == 5 * 5 * 5 + 6 * 25  # one voxel (2 mm) on each face
    np.testing.assert_array_equal(masks_mod.dilate_mask(clean, 0.0), clean)


def test_propagate_mask_through_inverse_affine(tmp_path, pair):
    tx_path = T.write_affine(pair["true"], tmp_path / "true.mat")  # reference -> subject
    out = masks_mod.propagate_mask(
        pair["fixed_mask"], tx_path, pair["moving"], tmp_path / "subject_mask.nii.gz"
    )
    got = nib.load(out)
    assert got.get_data_dtype() == np.uint8
    m = np.asarray(got.dataobj) > 0
    truth = pair["moving_brain"]
    dice = 2 * (m & truth).sum() / (m.sum() + truth.sum())
    assert dice > 0.97, dice
    # the forward affine (a wrong direction) would give a clearly worse overlap
    wrong = masks_mod.propagate_mask(
        pair["fixed_mask"], pair["true"].GetInverse(), pair["moving"], tmp_path / "w.nii.gz"
    )
    w = np.asarray(nib.load(wrong).dataobj) > 0
    assert 2 * (w & truth).sum() / (w.sum() + truth.sum()) < dice - 0.05


# --------------------------------------------------------------------------- affine


def _point_error(tx_path, true, brain) -> np.ndarray:
    pts = brain_points(brain)
    got = T.transform_points(T.read_ants_affine(tx_path), pts)
    return np.linalg.norm(got - T.transform_points(true, pts), axis=1)


def test_affine_register_recovers_rigid_motion(tmp_path, pair):
    from contrareg_bids.processing.affine import affine_register

    res = affine_register(
        pair["fixed"],
        pair["moving"],
        tmp_path / "sub_",
        transform_type="Rigid",
        seed=0,
        **FAST_AFFINE,
    )
    assert res.transform_path == tmp_path / "sub_0GenericAffine.mat"
    err = _point_error(res.transform_path, pair["true"], pair["brain"])
    assert err.mean() < 2.0 and err.max() < 3.0, err  # mm; voxels are 2 mm
    # moved = subject resampled on the reference grid through the reference -> subject .mat
    check = T.apply_transform(
        pair["moving"], pair["fixed"], res.transform_path, tmp_path / "c.nii.gz"
    )
    np.testing.assert_allclose(
        nib.load(check).get_fdata(), nib.load(res.moved_path).get_fdata(), atol=1e-3
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "c.nii.gz",
        "sub_0GenericAffine.mat",
        "sub_Warped.nii.gz",
    ]


def test_affine_register_recovers_translation_with_masks(tmp_path, pair):
    from contrareg_bids.processing.affine import affine_register

    _, brain = phantom()
    shift = sitk.TranslationTransform(3, (4.0, -3.0, 2.0))
    moving = grid_mod.resample_to_grid(pair["fixed"], AFFINE, SHAPE, transform=shift.GetInverse())
    mov_path = write_nifti(moving, AFFINE, tmp_path / "shifted.nii.gz")
    mov_mask = write_nifti((moving > 1).astype(np.uint8), AFFINE, tmp_path / "sm.nii.gz")
    res = affine_register(
        pair["fixed"],
        mov_path,
        tmp_path / "t_",
        transform_type="Affine",
        seed=3,
        fixed_mask=pair["fixed_mask"],
        moving_mask=mov_mask,
        **FAST_AFFINE,
    )
    err = _point_error(res.transform_path, shift, brain)
    assert err.mean() < 1.0, err


@pytest.mark.parametrize("seed", [0, 7])
def test_affine_register_is_bitwise_reproducible_when_seeded(tmp_path, pair, seed):
    """Regression: the seeded affine differed run to run, in one process on its threads
    (the Mattes metric sums the threads' partial histograms in the order they finish) and
    with seed 0, our default (ANTs takes ``--random-seed 0`` as "seed from the clock")."""
    from contrareg_bids.processing.affine import affine_register

    schedule = {
        "iterations": (60, 30, 10),
        "shrink_factors": (4, 2, 1),
        "smoothing_sigmas": (2, 1, 0),
    }
    files = [
        affine_register(pair["fixed"], pair["moving"], tmp_path / f"r{i}_", seed=seed, **schedule)
        for i in range(2)
    ]
    assert files[0].transform_path.read_bytes() == files[1].transform_path.read_bytes()


def test_ants_seed_is_never_zero_and_worker_errors_come_back():
    from contrareg_bids.io.images import ImageNotFoundError
    from contrareg_bids.processing._ants import ants_random_seed, run_reproducibly
    from contrareg_bids.processing.affine import affine_register

    assert [ants_random_seed(s) for s in (0, 1, 41)] == [1, 2, 42]
    with pytest.raises(ValueError, match="must be >= 0"):
        ants_random_seed(-1)
    with pytest.raises(ImageNotFoundError, match=r"nope\.nii\.gz"):
        run_reproducibly(affine_register, "nope.nii.gz", "nope.nii.gz", "x_")


def test_affine_register_rejects_bad_schedule(tmp_path, pair):
    from contrareg_bids.processing.affine import affine_register

    with pytest.raises(ValueError, match="one entry per level"):
        affine_register(pair["fixed"], pair["moving"], tmp_path / "x_", iterations=(10, 5))
    with pytest.raises(ValueError, match="transform_type"):
        affine_register(pair["fixed"], pair["moving"], tmp_path / "x_", transform_type="SyN")


# --------------------------------------------------------------------------- model grid


def test_model_grid_centres_on_mask_and_snaps(tmp_path):
    ref_a = np.diag([1.0, 1.0, 1.0, 1.0])
    ref_a[:3, 3] = [-30.0, -40.0, -25.0]
    ref_shape = (60, 70, 50)
    mask = np.zeros(ref_shape, np.uint8)
    mask[10:41, 20:51, 5:36] = 1  # bounding-box centre at voxel (25, 35, 20)
    img = np.random.default_rng(0).random(ref_shape).astype(np.float32)
    ref = write_nifti(img, ref_a, tmp_path / "ref.nii.gz")
    mask_path = write_nifti(mask, ref_a, tmp_path / "mask.nii.gz")
    centre = ref_a[:3, :3] @ np.array([25.0, 35.0, 20.0]) + ref_a[:3, 3]

    # model spacing differs: exact centring, requested shape and spacing
    a2 = grid_mod.model_grid(ref, (16, 16, 16), (2.0, 2.0, 2.0), mask=mask_path)
    np.testing.assert_allclose(a2[:3, :3], np.diag([2.0, 2.0, 2.0]))
    np.testing.assert_allclose(a2[:3, :3] @ np.full(3, 7.5) + a2[:3, 3], centre)

    # same spacing: a pure crop/pad of the reference, centred within half a voxel
    a1 = grid_mod.model_grid(ref, (32, 33, 40), (1.0, 1.0, 1.0), mask=mask_path)
    start = np.linalg.solve(ref_a[:3, :3], a1[:3, 3] - ref_a[:3, 3])
    np.testing.assert_allclose(start, np.round(start), atol=1e-9)
    got_centre = a1[:3, :3] @ ((np.array([32, 33, 40]) - 1) / 2) + a1[:3, 3]
    assert np.abs(got_centre - centre).max() <= 0.5
    crop = grid_mod.resample_to_grid(ref, a1, (32, 33, 40))
    s = start.astype(int)
    np.testing.assert_allclose(crop, img[s[0] : s[0] + 32, s[1] : s[1] + 33, s[2] : s[2] + 40])

    # no mask: the image centre
    a3 = grid_mod.model_grid(ref, (16, 16, 16), (3.0, 3.0, 3.0))
    img_centre = ref_a[:3, :3] @ ((np.array(ref_shape) - 1) / 2) + ref_a[:3, 3]
    np.testing.assert_allclose(a3[:3, :3] @ np.full(3, 7.5) + a3[:3, 3], img_centre)
    with pytest.raises(ValueError, match="spacing"):
        grid_mod.model_grid(ref, (16, 16, 16), (0.0, 1.0, 1.0))


def test_model_grid_keeps_reference_rotation(tmp_path):
    from scipy.spatial.transform import Rotation

    a = np.eye(4)
    a[:3, :3] = Rotation.from_euler("z", 10, degrees=True).as_matrix() * 0.8
    ref = write_nifti(np.ones((20, 20, 20), np.float32), a, tmp_path / "r.nii.gz")
    g = grid_mod.model_grid(ref, (10, 12, 8), (1.6, 1.6, 2.0))
    np.testing.assert_allclose(np.linalg.norm(g[:3, :3], axis=0), [1.6, 1.6, 2.0])
    np.testing.assert_allclose(g[:3, :3] / [1.6, 1.6, 2.0], a[:3, :3] / 0.8, atol=1e-12)


def test_resample_to_grid_through_affine_undoes_motion(pair, tmp_path):
    """The subject brought onto the reference grid with the reference -> subject transform
    matches the reference (labels too, with nearest neighbour)."""
    back = grid_mod.resample_to_grid(pair["moving"], AFFINE, SHAPE, transform=pair["true"])
    fixed = nib.load(pair["fixed"]).get_fdata()
    inside = pair["brain"]
    t2_of_fixed = np.where(fixed > 1, 150.0 - fixed, 0.0)
    err = np.abs(back - t2_of_fixed)[inside]
    assert np.median(err) < 5.0  # two interpolations of a smooth image (range 0-150)
    lab = write_nifti(pair["moving_brain"].astype(np.int16), AFFINE, tmp_path / "l.nii.gz")
    lab_back = grid_mod.resample_to_grid(
        lab,
        AFFINE,
        SHAPE,
        transform=pair["true"],
        interpolation="nearest",
        out_path=tmp_path / "lb.nii.gz",
    )
    assert lab_back.dtype == np.int16
    dice = 2 * ((lab_back > 0) & inside).sum() / ((lab_back > 0).sum() + inside.sum())
    assert dice > 0.95
    assert nib.load(tmp_path / "lb.nii.gz").get_data_dtype() == np.int16


# --------------------------------------------------------------------------- registration


def tiny_bundle(path: Path, shape=SHAPE) -> Path:
    from contrareg_bids.io.bundle import BundleMetadata, GridSpec, ModelBundle, save_bundle
    from contrareg_bids.nn.autoencoder import Autoencoder
    from contrareg_bids.nn.model import ContraRegNet

    torch.manual_seed(0)
    regnet = ContraRegNet(ch=4, depth=2)
    with torch.no_grad():  # an untrained net that still moves voxels (~1 voxel)
        regnet.flow.weight.normal_(0.0, 5.0)
    blocks = ((4, 0), (8, -1), (8, -1), (4, 1), (4, 1))
    aes = {m: Autoencoder(1, blocks, 3) for m in ("T2w", "T1w")}
    md = BundleMetadata.for_models(
        regnet,
        aes,
        grid=GridSpec(shape, (2.0, 2.0, 2.0), AFFINE, "tpl-Phantom"),
        modalities={"moving": "T2w", "fixed": "T1w"},
        normalization=normalization_description(),
        loss="mcr",
        lambda_range=(0.0, 1.0),
    )
    save_bundle(path, ModelBundle(regnet=regnet, autoencoders=aes, metadata=md))
    return path


@pytest.fixture(scope="module")
def normalised_pair(pair) -> tuple[Path, Path]:
    d = pair["dir"]
    mov = normalize_intensity(pair["moving"], d / "mov_norm.nii.gz", None).out_file
    fix = normalize_intensity(pair["fixed"], d / "fix_norm.nii.gz", pair["fixed_mask"]).out_file
    return mov, fix


def test_contrareg_register_exports_fields_that_reproduce_its_output(tmp_path, normalised_pair):
    from contrareg_bids.io.bundle import load_model
    from contrareg_bids.nn.inference import register_arrays
    from contrareg_bids.processing.register import contrareg_register

    mov, fix = normalised_pair
    bundle = tiny_bundle(tmp_path / "tiny.safetensors")
    res = contrareg_register(mov, fix, bundle, NETWORK_03, tmp_path / "out")
    assert res.method == "contrareg" and res.lam == 0.3
    for p in (res.forward_field, res.inverse_field, res.moved, res.fixed_moved):
        assert p.exists() and p.parent == tmp_path / "out"
    # in-memory result of the same network
    net = load_model(bundle).regnet
    mem = register_arrays(
        net,
        nib.load(mov).get_fdata().astype(np.float32),
        nib.load(fix).get_fdata().astype(np.float32),
        0.3,
        "cpu",
    )
    assert np.abs(mem.forward_disp).max() > 0.5  # the test is not trivial
    np.testing.assert_allclose(nib.load(res.moved).get_fdata(), mem.moved, atol=1e-6)
    disp, aff = T.read_displacement_nifti(res.forward_field)
    np.testing.assert_allclose(disp, mem.forward_disp, atol=1e-4)
    np.testing.assert_allclose(aff, AFFINE, atol=1e-5)
    # the exported fields, resampled through SimpleITK, give the app's own warped images
    for field, src, ref, expected in (
        (res.forward_field, mov, fix, mem.moved),
        (res.inverse_field, fix, mov, mem.fixed_moved),
    ):
        out = T.apply_transform(src, ref, field, tmp_path / "check.nii.gz")
        diff = np.abs(nib.load(out).get_fdata() - expected)
        assert diff.max() < 1e-3, diff.max()  # images are 0 near the border: no edge effects


def test_contrareg_register_checks_inputs(tmp_path, normalised_pair, pair):
    from contrareg_bids.processing.register import contrareg_register

    mov, fix = normalised_pair
    bundle = tiny_bundle(tmp_path / "tiny.safetensors", shape=(16, 16, 16))
    with pytest.raises(ValueError, match=r"fix_norm\.nii\.gz.*model"):
        contrareg_register(mov, fix, bundle, NETWORK_03, tmp_path)
    las = AFFINE.copy()
    las[0] *= -1
    flipped = write_nifti(nib.load(mov).get_fdata(), las, tmp_path / "las.nii.gz")
    with pytest.raises(ValueError, match=r"las\.nii\.gz.*RAS"):
        contrareg_register(flipped, fix, bundle, NETWORK_03, tmp_path)
    small = write_nifti(np.zeros((16, 16, 16), np.float32), AFFINE, tmp_path / "s.nii.gz")
    with pytest.raises(ValueError, match="share one grid"):
        contrareg_register(small, fix, bundle, NETWORK_03, tmp_path)


def test_ants_syn_register_exports_fields_that_reproduce_its_output(tmp_path, normalised_pair):
    from contrareg_bids.processing.register import ants_syn_register

    mov, fix = normalised_pair
    res = ants_syn_register(mov, fix, tmp_path / "syn", seed=1, iterations=(20, 10))
    assert res.method == "ants-syn"
    assert sorted(p.name for p in (tmp_path / "syn").iterdir()) == sorted(
        ["fwd_disp.nii.gz", "inv_disp.nii.gz", "moved.nii.gz", "fixed_moved.nii.gz"]
    )  # ANTs' own files were cleaned up
    for field, src, ref, expected in (
        (res.forward_field, mov, fix, res.moved),
        (res.inverse_field, fix, mov, res.fixed_moved),
    ):
        nii = nib.load(field)
        assert nii.shape == (*SHAPE, 1, 3) and nii.header.get_intent()[0] == "vector"
        out = T.apply_transform(src, ref, field, tmp_path / "check.nii.gz")
        diff = np.abs(nib.load(out).get_fdata() - nib.load(expected).get_fdata())
        assert diff.max() < 1e-3, diff.max()

    # SyN undid most of the rigid motion: the moved subject overlaps the reference brain
    def dice(a, b):
        return 2 * (a & b).sum() / (a.sum() + b.sum())

    fixed = nib.load(fix).get_fdata() > 0.05
    before = dice(nib.load(mov).get_fdata() > 0.05, fixed)
    after = dice(nib.load(res.moved).get_fdata() > 0.05, fixed)
    assert after > 0.9 and after > before + 0.03, (before, after)


def test_warp_quality_reads_a_model_grid_mask_for_a_field_on_a_finer_grid(tmp_path):
    """The fine stage writes its fields on a grid finer than the model grid's brain mask: the
    metrics (and the Jacobian reportlet) take the mask onto the field's grid instead of
    refusing the shapes, and count only what lies inside it."""
    from contrareg_bids.processing.grid import finer_grid
    from contrareg_bids.processing.participant_metrics import mask_on_grid, warp_quality

    coarse = np.diag([2.0, 2.0, 2.0, 1.0])
    shape = (10, 12, 10)
    mask = np.zeros(shape, np.uint8)
    mask[2:8, 3:9, 2:8] = 1
    nib.save(nib.Nifti1Image(mask, coarse), tmp_path / "mask.nii.gz")
    fine_aff, fine_shape = finer_grid(coarse, shape, 2.0)
    disp = np.zeros((3, *fine_shape), np.float32)
    rng = np.random.default_rng(0)
    disp[:, :2] = rng.normal(0, 2.0, (3, 2, *fine_shape[1:]))  # rough only outside the brain
    field = T.write_displacement_nifti(disp, fine_aff, tmp_path / "fwd.nii.gz")
    on_fine = mask_on_grid(tmp_path / "mask.nii.gz", fine_aff, fine_shape)
    assert on_fine.shape == fine_shape
    assert abs(on_fine.sum() / on_fine.size - mask.sum() / mask.size) < 0.05
    quality = warp_quality(field, tmp_path / "mask.nii.gz")
    assert quality["std_log_jacobian"] == pytest.approx(0.0, abs=1e-6)
