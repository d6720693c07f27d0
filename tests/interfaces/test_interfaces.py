"""Every public Nipype interface of contrareg_bids, run THROUGH NIPYPE on tiny real volumes.

Each interface runs as a ``pe.Node`` (``base_dir`` in a temporary folder), so what is tested
is what a workflow gets: the input spec accepts the values, ``_run_interface`` works in the
node's directory, and the output spec's files exist and make sense (grid, affine, values,
the fields the interface promises).

The data are real: the ICBM 2009c base at 4 mm (``icbm_small``) is the reference, one
simulated subject of ``icbm_subjects`` (a smooth diffeomorphism of it, labels known) is the
subject, shifted in world space by :data:`SHIFT_MM` and given a strong bias field. The
nodes are chained as the participant level chains them (StandardizeImage -> N4 -> BrainMask
-> NormalizeIntensity -> AffineRegister -> PrepareModelPair -> ContraRegister ->
ExportTransforms -> ApplyWarp -> RegistrationMetrics / reports / sinks); each node is run
once, by a module-scoped fixture, and checked by its own test. Everything is real: antspyx
(``sloppy``), SimpleITK, the tiny trained bundle on the CPU, niworkflows' sink.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from nipype.interfaces.base import isdefined
from nipype.pipeline import engine as pe

from contrareg_bids.interfaces import (
    AffineRegister,
    AntsRegister,
    ApplyWarp,
    BrainMask,
    ContraRegister,
    ExportLinearTransform,
    ExportTransforms,
    N4BiasCorrect,
    NormalizeIntensity,
    PrepareModelPair,
    RegistrationMetrics,
    StandardizeImage,
)
from contrareg_bids.interfaces.reports import (
    FlickerReport,
    JacobianReport,
    LabelContoursReport,
    LambdaStripReport,
    SummaryReport,
)
from contrareg_bids.interfaces.training import TrainingVolumes
from contrareg_bids.io.transforms import LPS, read_displacement_nifti, transform_points
from contrareg_bids.processing.grid import resample_to_grid

pytest.importorskip("ants", reason="antspyx not installed")

#: World shift (mm, RAS) of the subject against the reference: what the affine must find.
SHIFT_MM = np.array([6.0, -4.0, 5.0])
#: Zero voxels added on each face (the cropped ICBM base touches its borders).
PAD = 3
SVG = "{http://www.w3.org/2000/svg}svg"


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def run_node(interface, base: Path, name: str) -> Any:
    """Run ``interface`` as a Nipype node under ``base``; return its outputs."""
    result = pe.Node(interface, name=name, base_dir=str(base)).run()
    return result.outputs


def load(path: str | Path) -> nib.Nifti1Image:
    return nib.load(str(path))


def arr(path: str | Path) -> np.ndarray:
    return np.asanyarray(load(path).dataobj)


def assert_same_grid(a: str | Path, b: str | Path) -> None:
    """Same voxel grid: shape and affine."""
    ia, ib = load(a), load(b)
    assert ia.shape[:3] == ib.shape[:3], (a, b)
    np.testing.assert_allclose(ia.affine, ib.affine, atol=1e-4)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def save(path: Path, data: np.ndarray, affine: np.ndarray, dtype=np.float32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data).astype(dtype), affine), str(path))
    return path


def assert_svg(path: str | Path) -> str:
    """A standalone SVG reportlet that embeds its slices as images; returns its text."""
    path = Path(path)
    assert path.suffix == ".svg" and path.stat().st_size > 1000
    assert ET.parse(path).getroot().tag == SVG
    text = path.read_text()
    assert re.search(r"data:image/(jpeg|png);base64,", text)
    return text


def brain_centre_lps(mask: str | Path) -> np.ndarray:
    """LPS mm position of the centre of mass of a mask."""
    img = load(mask)
    ijk = np.argwhere(np.asanyarray(img.dataobj) > 0).mean(0)
    return LPS @ (img.affine[:3, :3] @ ijk + img.affine[:3, 3])


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Inputs:
    """The files of the reference and the subject (subject grid = reference grid + shift)."""

    root: Path
    ref_t2w: Path
    ref_mask: Path
    ref_labels: Path
    subj_t2w: Path  # biased, skull-stripped (exact zeros outside the brain)
    subj_t1w: Path
    subj_mask: Path
    subj_labels: Path
    subj_head: Path  # the same with a noisy background: not skull-stripped
    bias: np.ndarray
    grid_shape: tuple[int, int, int]
    grid_spacing: tuple[float, float, float]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, icbm_small, icbm_subjects, tiny_bundle) -> Inputs:
    from contrareg_bids.io.bundle import describe_bundle

    root = tmp_path_factory.mktemp("interfaces")
    aff = icbm_small["affine"].copy()
    aff[:3, 3] -= aff[:3, :3] @ np.full(3, PAD)  # voxel 0 moves PAD voxels outwards

    def pad(a: np.ndarray) -> np.ndarray:
        return np.pad(a, PAD)

    subj = icbm_subjects[0]
    subj_aff = aff.copy()
    subj_aff[:3, 3] += SHIFT_MM
    shape = pad(subj["t2w"]).shape
    x = np.linspace(-1.0, 1.0, shape[0])[:, None, None]
    bias = np.broadcast_to(1.0 + 0.5 * x, shape).astype(np.float32)  # 0.5 .. 1.5 along x
    t2w = pad(subj["t2w"]) * bias
    rng = np.random.default_rng(1)
    head = np.where(pad(subj["mask"]) > 0, t2w, np.abs(rng.normal(0.02, 0.01, shape)))
    labels = sorted(int(v) for v in np.unique(icbm_small["labels"]) if v)
    (root / "dseg.tsv").write_text("index\tname\n" + "".join(f"{v}\tcerebra{v}\n" for v in labels))
    grid = describe_bundle(tiny_bundle)["metadata"]["grid"]
    return Inputs(
        root=root,
        ref_t2w=save(root / "ref_T2w.nii.gz", pad(icbm_small["t2w"]), aff),
        ref_mask=save(root / "ref_mask.nii.gz", pad(icbm_small["mask"]), aff, np.uint8),
        ref_labels=save(root / "ref_dseg.nii.gz", pad(icbm_small["labels"]), aff, np.int16),
        subj_t2w=save(root / "sub_T2w.nii.gz", t2w, subj_aff),
        subj_t1w=save(root / "sub_T1w.nii.gz", pad(subj["t1w"]), subj_aff),
        subj_mask=save(root / "sub_mask.nii.gz", pad(subj["mask"]), subj_aff, np.uint8),
        subj_labels=save(root / "sub_dseg.nii.gz", pad(subj["labels"]), subj_aff, np.int16),
        subj_head=save(root / "sub_head_T2w.nii.gz", head, subj_aff),
        bias=bias,
        grid_shape=tuple(int(s) for s in grid["shape"]),
        grid_spacing=tuple(float(s) for s in grid["spacing"]),
    )


# ---------------------------------------------------------------------------------------------
# the chain of nodes, each run once
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def work(inputs) -> Path:
    return inputs.root / "work"


@pytest.fixture(scope="module")
def n4(inputs, work):
    return run_node(N4BiasCorrect(in_file=str(inputs.subj_t2w), sloppy=True), work, "n4")


@pytest.fixture(scope="module")
def brain_mask(n4, work):
    return run_node(BrainMask(in_file=n4.out_file), work, "brain_mask")


@pytest.fixture(scope="module")
def norm_subject(n4, brain_mask, work):
    iface = NormalizeIntensity(in_file=n4.out_file, mask_file=brain_mask.out_file)
    return run_node(iface, work, "normalize_subject")


@pytest.fixture(scope="module")
def norm_reference(inputs, work):
    iface = NormalizeIntensity(in_file=str(inputs.ref_t2w), mask_file=str(inputs.ref_mask))
    return run_node(iface, work, "normalize_reference")


@pytest.fixture(scope="module")
def affine(norm_subject, norm_reference, work):
    iface = AffineRegister(
        fixed=norm_reference.out_file, moving=norm_subject.out_file, sloppy=True, seed=0
    )
    return run_node(iface, work, "affine")


@pytest.fixture(scope="module")
def model_pair(inputs, norm_subject, norm_reference, affine, work):
    iface = PrepareModelPair(
        moving=norm_subject.out_file,
        reference=norm_reference.out_file,
        reference_mask=str(inputs.ref_mask),
        affine=affine.transform,
        shape=inputs.grid_shape,
        spacing=inputs.grid_spacing,
    )
    return run_node(iface, work, "prepare_pair")


def node_settings(**options) -> dict:
    """ContraRegister's ``settings`` from command-line option names (CPU, fine stage off)."""
    from contrareg_bids.settings import RegistrationSettings

    options = {"device": "cpu", "fine_steps": 0, **options}
    return RegistrationSettings.from_options(options).to_dict()


@pytest.fixture(scope="module")
def contrareg(model_pair, tiny_bundle, work):
    iface = ContraRegister(
        moving=model_pair.moving,
        fixed=model_pair.fixed,
        model=str(tiny_bundle),
        settings=node_settings(lam=0.1),
    )
    return run_node(iface, work, "contrareg")


@pytest.fixture(scope="module")
def exported(affine, contrareg, work):
    iface = ExportTransforms(
        affine=affine.transform,
        forward_field=contrareg.forward_field,
        inverse_field=contrareg.inverse_field,
    )
    return run_node(iface, work, "export_xfms")


@pytest.fixture(scope="module")
def subject_in_reference(inputs, norm_subject, exported, work):
    iface = ApplyWarp(
        in_file=norm_subject.out_file,
        reference=str(inputs.ref_t2w),
        transforms=[exported.reference_to_subject],
        out_name="moving_in_ref.nii.gz",
    )
    return run_node(iface, work, "moving_to_ref")


@pytest.fixture(scope="module")
def labels_in_subject(inputs, norm_subject, exported, work):
    iface = ApplyWarp(
        in_file=str(inputs.ref_labels),
        reference=norm_subject.out_file,
        transforms=[exported.subject_to_reference],
        interpolation="label",
        out_name="ref_dseg_in_subject.nii.gz",
    )
    return run_node(iface, work, "ref_dseg_to_subject")


@pytest.fixture(scope="module")
def metrics(inputs, model_pair, contrareg, labels_in_subject, affine, work):
    iface = RegistrationMetrics(
        forward_field=contrareg.forward_field,
        mask=model_pair.fixed_mask,
        lam=contrareg.lam,
        method=contrareg.method,
        subject_labels=str(inputs.subj_labels),
        reference_labels=labels_in_subject.out_file,
        reference_dseg=str(inputs.ref_labels),
        subject_labels_tsv=str(inputs.root / "dseg.tsv"),
        reference_labels_tsv=str(inputs.root / "dseg.tsv"),
        affine=affine.transform,
        extra={"seed": 0},
    )
    return run_node(iface, work, "metrics")


# ---------------------------------------------------------------------------------------------
# preprocessing
# ---------------------------------------------------------------------------------------------
def test_standardize_image(inputs, tmp_path):
    """StandardizeImage: an LAS image comes out RAS on the same world grid (same voxels in
    the same places), ``orientation`` names the input's axes; a mask comes out uint8 0/1."""
    img = load(inputs.subj_t2w)
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = img.shape[0] - 1  # voxel i -> n-1-i
    las = save(tmp_path / "las.nii.gz", np.asanyarray(img.dataobj)[::-1], img.affine @ flip)
    out = run_node(StandardizeImage(in_file=str(las)), tmp_path, "std_image")
    assert out.orientation == "LAS"
    std = load(out.out_file)
    assert nib.aff2axcodes(std.affine) == ("R", "A", "S")
    assert std.get_data_dtype() == np.float32
    np.testing.assert_allclose(std.affine, img.affine, atol=1e-5)
    np.testing.assert_allclose(std.get_fdata(), img.get_fdata(), atol=1e-6)

    soft = save(tmp_path / "soft_mask.nii.gz", arr(inputs.subj_mask) * 0.9, img.affine)
    out = run_node(StandardizeImage(in_file=str(soft), kind="mask"), tmp_path, "std_mask")
    assert out.orientation == "RAS"
    mask = load(out.out_file)
    assert mask.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(mask.dataobj), arr(inputs.subj_mask))


def test_n4_bias_correct(inputs, n4):
    """N4BiasCorrect (sloppy): same grid, zeros kept outside the head, and the field it
    removed (input / output) follows the bias put into the subject (0.5 -> 1.5 along x)."""
    assert_same_grid(n4.out_file, inputs.subj_t2w)
    before, after = arr(inputs.subj_t2w), arr(n4.out_file)
    assert np.isfinite(after).all()
    brain = before > 0.05
    assert (after[before == 0] == 0).all()
    removed = before[brain] / after[brain]
    assert np.corrcoef(removed, inputs.bias[brain])[0, 1] > 0.8


def test_brain_mask_sources(inputs, n4, brain_mask, affine, tmp_path):
    """BrainMask, its three sources: detected on the skull-stripped N4 output; the given
    mask, standardised; the reference mask carried through the affine into an image that is
    not skull-stripped. Each is a 0/1 mask on the subject grid covering the subject's brain."""
    truth = arr(inputs.subj_mask)
    assert brain_mask.source == "skull-stripped"
    assert_same_grid(brain_mask.out_file, n4.out_file)
    detected = arr(brain_mask.out_file)
    assert set(np.unique(detected)) <= {0, 1}
    assert dice(detected, truth) > 0.95

    given = run_node(
        BrainMask(in_file=n4.out_file, given_mask=str(inputs.subj_mask)), tmp_path, "given"
    )
    assert given.source == "given"
    np.testing.assert_array_equal(arr(given.out_file), truth)

    carried = run_node(
        BrainMask(
            in_file=str(inputs.subj_head),
            reference_mask=str(inputs.ref_mask),
            affine=affine.transform,
        ),
        tmp_path,
        "reference",
    )
    assert carried.source == "reference"
    assert_same_grid(carried.out_file, inputs.subj_head)
    assert dice(arr(carried.out_file), truth) > 0.8  # a warp away, dilated by 2 mm


def test_normalize_intensity(norm_subject, n4, brain_mask):
    """NormalizeIntensity: same grid, values in [0, 1], the brain spread over that range."""
    assert_same_grid(norm_subject.out_file, n4.out_file)
    out = arr(norm_subject.out_file)
    assert out.min() >= 0.0 and out.max() <= 1.0
    inside = out[arr(brain_mask.out_file) > 0]
    assert np.percentile(inside, 99) > 0.9 and np.percentile(inside, 1) < 0.3


def test_affine_register(inputs, affine, norm_reference):
    """AffineRegister (sloppy): an ANTs ``.mat`` mapping reference points to subject points
    that recovers the world shift of the subject, and the subject on the reference grid."""
    assert Path(affine.transform).suffix == ".mat"
    assert_same_grid(affine.moved, norm_reference.out_file)
    centre = brain_centre_lps(inputs.ref_mask)
    moved_centre = transform_points(affine.transform, centre[None])[0]
    shift = moved_centre - centre
    # the subject is also warped nonlinearly (simulate_subject): a few mm of slack
    np.testing.assert_allclose(shift, LPS @ SHIFT_MM, atol=3.0)
    assert dice(arr(affine.moved) > 0.05, arr(inputs.ref_mask)) > 0.85


def test_export_linear_transform(affine, tmp_path):
    """ExportLinearTransform: the ``.mat`` as ITK ``.h5`` both ways; forward acts as the
    original, inverse undoes it."""
    out = run_node(ExportLinearTransform(transform=affine.transform), tmp_path, "export")
    assert Path(out.forward).suffix == Path(out.inverse).suffix == ".h5"
    pts = np.array([[0.0, 0.0, 0.0], [20.0, -30.0, 15.0], [-40.0, 10.0, -5.0]])
    fwd = transform_points(out.forward, pts)
    np.testing.assert_allclose(fwd, transform_points(affine.transform, pts), atol=1e-6)
    np.testing.assert_allclose(transform_points(out.inverse, fwd), pts, atol=1e-6)


def test_prepare_model_pair(inputs, model_pair, norm_subject, affine):
    """PrepareModelPair: moving, fixed and fixed mask on the same grid, the bundle's shape
    and spacing, the subject brought over the reference brain by the affine."""
    for name in ("moving", "fixed", "fixed_mask"):
        img = load(getattr(model_pair, name))
        assert img.shape == inputs.grid_shape, name
        zooms = np.linalg.norm(img.affine[:3, :3], axis=0)
        np.testing.assert_allclose(zooms, inputs.grid_spacing, atol=1e-5)
        assert_same_grid(getattr(model_pair, name), model_pair.fixed)
    mask = arr(model_pair.fixed_mask)
    assert set(np.unique(mask)) == {0, 1}
    moving = arr(model_pair.moving)
    assert 0.0 <= moving.min() and moving.max() <= 1.0 + 1e-5
    assert dice(moving > 0.05, mask) > 0.85


def test_prepare_model_pair_for_phase_sampled_refinement(
    inputs, norm_subject, norm_reference, affine, work, tiny_bundle
):
    """On a model grid twice as coarse as the reference, ``phase_sampling`` also writes the
    pair on a grid over the same extent at the reference's resolution: its even voxels are the
    model grid's. The registration node refines from it; without the flag nothing extra."""
    ref_spacing = min(load(norm_reference.out_file).header.get_zooms()[:3])
    spacing = tuple(2 * ref_spacing for _ in range(3))
    kwargs = dict(
        moving=norm_subject.out_file, reference=norm_reference.out_file,
        reference_mask=str(inputs.ref_mask), affine=affine.transform,
        shape=inputs.grid_shape, spacing=spacing,
    )  # fmt: skip
    plain = run_node(PrepareModelPair(**kwargs), work, "prepare_coarse")
    assert not isdefined(plain.fine_moving) and not isdefined(plain.fine_fixed)
    pair = run_node(PrepareModelPair(phase_sampling=True, **kwargs), work, "prepare_phases")
    fine, model = load(pair.fine_fixed), load(pair.fixed)
    assert fine.shape == tuple(2 * s - 1 for s in model.shape)
    np.testing.assert_allclose(fine.affine[:3, 3], model.affine[:3, 3], atol=1e-4)
    for name in ("fixed", "moving"):
        np.testing.assert_allclose(
            arr(getattr(pair, f"fine_{name}"))[::2, ::2, ::2], arr(getattr(pair, name)), atol=1e-4
        )
    node = ContraRegister(
        moving=pair.moving, fixed=pair.fixed, fine_moving=pair.fine_moving,
        fine_fixed=pair.fine_fixed, model=str(tiny_bundle),
        settings=node_settings(lam=0.2, refine_steps=3),
    )  # fmt: skip
    with pytest.warns(UserWarning, match="differs from the model"):  # the bundle's own spacing
        out = run_node(node, work, "contrareg_phases")
    disp, _ = read_displacement_nifti(out.forward_field)
    assert np.isfinite(disp).all()


# ---------------------------------------------------------------------------------------------
# registration and transforms
# ---------------------------------------------------------------------------------------------
def check_registration_outputs(out, model_pair) -> None:
    """Both displacement fields (ITK, 5-D) and the moved image on the model grid, finite."""
    fixed = load(model_pair.fixed)
    for name in ("forward_field", "inverse_field"):
        disp, aff = read_displacement_nifti(getattr(out, name))
        assert disp.shape == (3, *fixed.shape), name
        np.testing.assert_allclose(aff, fixed.affine, atol=1e-4)
        assert np.isfinite(disp).all() and np.abs(disp).max() > 0, name
    assert_same_grid(out.moved, model_pair.fixed)
    assert np.isfinite(arr(out.moved)).all()


def test_contra_register(contrareg, model_pair):
    """ContraRegister (tiny bundle, CPU): both fields and the moved image on the model
    grid; it reports the lambda it ran at and its method; no lambda search without
    ``auto_lambda``."""
    check_registration_outputs(contrareg, model_pair)
    assert contrareg.lam == pytest.approx(0.1)
    assert contrareg.method == "contrareg"
    assert not isdefined(contrareg.lambda_search)


def test_contra_register_auto_lambda(model_pair, tiny_bundle, tmp_path):
    """ContraRegister with lambda ``auto``: the chosen lambda, its trace as a file and as
    the dict the metrics node takes, within the folding budget."""
    iface = ContraRegister(
        moving=model_pair.moving,
        fixed=model_pair.fixed,
        model=str(tiny_bundle),
        settings=node_settings(lam="auto", max_folding=0.5),
    )
    out = run_node(iface, tmp_path, "contrareg_auto")
    check_registration_outputs(out, model_pair)
    info = out.lambda_search_info
    assert json.loads(Path(out.lambda_search).read_text()) == info
    assert info["lambda"] == pytest.approx(out.lam) and info["max_folding_percent"] == 0.5
    assert info["probes"] == len(info["trace"]) >= 1


def test_ants_register(model_pair, tmp_path):
    """AntsRegister (SyN, sloppy): the same outputs as ContraRegister, method ``ants-syn``,
    no lambda."""
    iface = AntsRegister(moving=model_pair.moving, fixed=model_pair.fixed, sloppy=True)
    out = run_node(iface, tmp_path, "ants")
    check_registration_outputs(out, model_pair)
    assert out.method == "ants-syn"
    assert not isdefined(out.lam)


def test_export_transforms(exported, affine, model_pair):
    """ExportTransforms: ITK ``.h5`` composites both ways: reference -> subject is the
    field then the affine (it moves points off the affine alone), subject -> reference
    undoes it up to the inversion error of the field."""
    r2s, s2r = exported.reference_to_subject, exported.subject_to_reference
    assert Path(r2s).suffix == Path(s2r).suffix == ".h5"
    fixed = load(model_pair.fixed)
    ijk = np.argwhere(arr(model_pair.fixed_mask) > 0)[::50].T
    pts = (LPS @ (fixed.affine[:3, :3] @ ijk + fixed.affine[:3, 3:])).T
    there = transform_points(r2s, pts)
    assert np.abs(there - transform_points(affine.transform, pts)).max() > 0.1
    back = transform_points(s2r, there)
    spacing = float(np.linalg.norm(fixed.affine[:3, 0]))
    assert np.median(np.linalg.norm(back - pts, axis=1)) < 0.5 * spacing


def test_apply_warp(inputs, subject_in_reference, labels_in_subject, norm_subject):
    """ApplyWarp: the subject image onto the reference grid (linear) lies over the
    reference brain; the reference labels onto the subject grid (``label``) stay labels of
    the reference and cover the subject's labelled region."""
    assert_same_grid(subject_in_reference.out_file, inputs.ref_t2w)
    moved = arr(subject_in_reference.out_file)
    assert np.isfinite(moved).all()
    assert dice(moved > 0.05, arr(inputs.ref_mask)) > 0.85

    assert_same_grid(labels_in_subject.out_file, norm_subject.out_file)
    labels = arr(labels_in_subject.out_file)
    assert np.issubdtype(labels.dtype, np.integer)
    assert set(np.unique(labels)) <= set(np.unique(arr(inputs.ref_labels)))
    # the labelled region lands on the subject's, far better than with no transform (shift)
    subj = load(inputs.subj_labels)
    untouched = resample_to_grid(
        inputs.ref_labels, subj.affine, subj.shape, interpolation="nearest"
    )
    truth = np.asanyarray(subj.dataobj)
    assert dice(labels, truth) > max(0.7, dice(untouched, truth) + 0.1)


def test_registration_metrics(metrics, contrareg):
    """RegistrationMetrics: one TSV row (folding, std log|J|, Dice after the registration
    and after the affine alone, the extra column) equal to the ``metrics`` dict, and a JSON
    sidecar describing every column."""
    row = metrics.metrics
    assert row["method"] == "contrareg" and row["lambda"] == pytest.approx(contrareg.lam)
    assert 0.0 <= row["folding_percent"] < 5.0
    assert 0.0 < row["std_log_jacobian"] < 1.0
    assert 0.3 < row["mean_dice"] <= 1.0 and 0.3 < row["mean_dice_affine"] <= 1.0
    assert any(k.startswith("dice_") for k in row)
    assert row["seed"] == 0
    header, values = Path(metrics.out_tsv).read_text().splitlines()
    assert header.split("\t") == list(row)
    assert values.split("\t")[0] == "contrareg"
    sidecar = json.loads(Path(metrics.out_json).read_text())
    assert set(sidecar) == set(row)
    assert all("Description" in v for v in sidecar.values())


# ---------------------------------------------------------------------------------------------
# reportlets
# ---------------------------------------------------------------------------------------------
def test_flicker_report(inputs, subject_in_reference, tmp_path):
    """FlickerReport: an SVG alternating the reference and the registered subject."""
    iface = FlickerReport(
        reference=str(inputs.ref_t2w),
        moving=subject_in_reference.out_file,
        mask=str(inputs.ref_mask),
        labels=str(inputs.ref_labels),
        out_name="registration.svg",
    )
    out = run_node(iface, tmp_path, "flicker")
    assert Path(out.out_report).name == "registration.svg"
    text = assert_svg(out.out_report)
    assert 'class="background-svg"' in text and 'class="foreground-svg"' in text


def test_label_contours_report(norm_subject, labels_in_subject, brain_mask, tmp_path):
    """LabelContoursReport: an SVG of the reference labels outlined on the subject."""
    iface = LabelContoursReport(
        image=norm_subject.out_file,
        labels=labels_in_subject.out_file,
        mask=brain_mask.out_file,
        title="reference labels in the subject",
    )
    out = run_node(iface, tmp_path, "contours")
    assert Path(out.out_report).name == "contours.svg"
    assert_svg(out.out_report)


def test_jacobian_report(contrareg, model_pair, metrics, tmp_path):
    """JacobianReport: an SVG of log|J| whose numbers are those of the metrics table."""
    iface = JacobianReport(
        forward_field=contrareg.forward_field,
        background=model_pair.fixed,
        mask=model_pair.fixed_mask,
    )
    out = run_node(iface, tmp_path, "jacobian")
    text = assert_svg(out.out_report)
    row = metrics.metrics
    assert f"folding {float(row['folding_percent']):.4g} %" in text
    assert f"std log|J| {float(row['std_log_jacobian']):.4g}" in text


def test_lambda_sweep_then_strip_report(inputs, model_pair, affine, tiny_bundle, tmp_path):
    """LambdaSweep runs the network at five lambdas of the bundle (its .npz holds each
    moved image, log|J| and scores); LambdaStripReport only draws it: an SVG with the run's
    lambda marked, each panel with its Dice and folding."""
    from contrareg_bids.interfaces import LambdaSweep
    from contrareg_bids.processing.lambda_strip import read_lambda_sweep

    sweep = run_node(
        LambdaSweep(
            moving=model_pair.moving,
            fixed=model_pair.fixed,
            model=str(tiny_bundle),
            lam=0.1,
            device="cpu",
            mask=model_pair.fixed_mask,
            reference_labels=str(inputs.ref_labels),
            subject_labels=str(inputs.subj_labels),
            affine=affine.transform,
        ),
        tmp_path,
        "lambda_sweep",
    )
    rows, fixed, fixed_labels, mask, chosen = read_lambda_sweep(sweep.out_file)
    assert len(rows) == 5 and chosen == 0.1 and fixed_labels is not None and mask.any()
    assert all(r["moved"].shape == fixed.shape and "mean_dice" in r for r in rows)
    out = run_node(LambdaStripReport(sweep=sweep.out_file), tmp_path, "lambda_strip")
    text = assert_svg(out.out_report)
    lambdas = re.findall(r"λ = ([0-9.]+)", text)
    assert len(lambdas) == 5 and "0.1" in lambdas and "(used)" in text
    assert text.count("Dice ") == 5 and text.count("folds ") == 5


def test_summary_report(metrics, tiny_bundle, tmp_path):
    """SummaryReport: an HTML fragment with the subject, the model header and every
    metric as the table prints it."""
    info = {"subject": "01", "age_weeks": 40.0, "reference": "ICBMTest", "method": "contrareg"}
    iface = SummaryReport(info=info, metrics=metrics.metrics, model=str(tiny_bundle))
    out = run_node(iface, tmp_path, "summary")
    text = Path(out.out_report).read_text()
    assert text.startswith('<div class="summary-panel">')
    assert "<th>Subject</th><td>01</td>" in text and "ICBMTest" in text
    assert "Training data fingerprint" in text and Path(tiny_bundle).name in text
    header, values = Path(metrics.out_tsv).read_text().splitlines()
    for key, value in zip(header.split("\t"), values.split("\t"), strict=True):
        assert f"<th>{key.removeprefix('dice_')}</th><td>{value}</td>" in text, key


# ---------------------------------------------------------------------------------------------
# train level and sink
# ---------------------------------------------------------------------------------------------
def test_training_volumes(inputs, norm_subject, norm_reference, brain_mask, affine, model_pair,
                          tmp_path):  # fmt: skip
    """TrainingVolumes: moving, fixed modality, mask and labels on the model grid, the moving
    image exactly as PrepareModelPair shows it to the network; labels stay labels."""
    iface = TrainingVolumes(
        moving=norm_subject.out_file,
        other=str(inputs.subj_t1w),
        mask=brain_mask.out_file,
        labels=str(inputs.subj_labels),
        reference=norm_reference.out_file,
        reference_mask=str(inputs.ref_mask),
        affine=affine.transform,
        shape=inputs.grid_shape,
        spacing=inputs.grid_spacing,
    )
    out = run_node(iface, tmp_path, "training_volumes")
    for name in ("moving", "fixed", "mask", "labels"):
        assert_same_grid(getattr(out, name), model_pair.fixed)
    np.testing.assert_allclose(arr(out.moving), arr(model_pair.moving), atol=1e-6)
    assert set(np.unique(arr(out.mask))) == {0, 1}
    assert dice(arr(out.mask), arr(model_pair.fixed_mask)) > 0.85
    assert set(np.unique(arr(out.labels))) <= set(np.unique(arr(inputs.subj_labels)))
    assert dice(arr(out.fixed) > 0.05, arr(out.mask)) > 0.9


def test_derivatives_data_sink(inputs, norm_subject, metrics, tmp_path):
    """DerivativesDataSink: BIDS-Derivatives names under ``base_directory`` (no extra
    folder): an image with its JSON sidecar, the metrics table (our extra pattern) and a
    label table keeping its ``space``/``desc`` (our first pattern)."""
    from contrareg_bids.interfaces.bids import DerivativesDataSink

    out_dir = tmp_path / "derivatives"
    source = str(tmp_path / "bids" / "sub-01" / "anat" / "sub-01_T2w.nii.gz")
    anat = out_dir / "sub-01" / "anat"
    cases = [
        (norm_subject.out_file, {"desc": "preproc", "compress": True,
                                 "meta_dict": {"Sources": ["bids:raw:sub-01/anat/x"]}},
         "sub-01_desc-preproc_T2w.nii.gz"),
        (metrics.out_tsv, {"desc": "registration", "suffix": "metrics", "extension": ".tsv"},
         "sub-01_desc-registration_metrics.tsv"),
        (str(inputs.root / "dseg.tsv"),
         {"space": "T2w", "desc": "ICBMTest", "suffix": "dseg", "extension": ".tsv"},
         "sub-01_space-T2w_desc-ICBMTest_dseg.tsv"),
    ]  # fmt: skip
    for i, (in_file, entities, expected) in enumerate(cases):
        iface = DerivativesDataSink(
            base_directory=str(out_dir), source_file=source, in_file=in_file, **entities
        )
        out = run_node(iface, tmp_path, f"ds_{i}")
        assert Path(out.out_file) == anat / expected
        assert (anat / expected).is_file()
    image = anat / "sub-01_desc-preproc_T2w.nii.gz"
    assert_same_grid(image, norm_subject.out_file)
    np.testing.assert_allclose(arr(image), arr(norm_subject.out_file))
    sidecar = json.loads((anat / "sub-01_desc-preproc_T2w.json").read_text())
    assert sidecar["Sources"] == ["bids:raw:sub-01/anat/x"]
    table = anat / "sub-01_desc-registration_metrics.tsv"
    assert table.read_text() == Path(metrics.out_tsv).read_text()
