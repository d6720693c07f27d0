"""Similarity losses and the regulariser: the maths on real T1w/T2w data (ICBM 2009c).

Each multi-modal loss must (1) be lowest at alignment, (2) barely react to a monotonic
intensity remap of one image (exactly invariant where the theory says so), (3) agree with its
closed form on identities, (4) validate its input, and (5) run under bf16 autocast.
The contrastive loss is tested in ``test_patchnce.py``.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from contrareg_bids.losses import (
    MINDSSC,
    SIMILARITIES,
    Diffusion,
    LocalMutualInformation,
    LocalNCC,
    MutualInformation,
    NormalizedGradientFields,
    build_similarity,
    gradient_loss,
    mind_ssc,
    set_finite_checks,
)

MULTIMODAL = ["mi", "localmi", "mind", "ngf"]
SIMPLE = [*MULTIMODAL, "ncc"]
SHIFTS = [(3, 0, 0), (0, -3, 0), (0, 0, 2)]


def shift(x: torch.Tensor, s: tuple[int, int, int]) -> torch.Tensor:
    return torch.roll(x, s, dims=(2, 3, 4))


@pytest.fixture(scope="module")
def vols(icbm_pair) -> dict[str, torch.Tensor]:
    """Central 32x40x32 crop of the aligned 2 mm ICBM T1w/T2w pair (mostly brain)."""
    size = (32, 40, 32)
    shp = icbm_pair["t1w"].shape
    sl = tuple(slice((s - c) // 2, (s - c) // 2 + c) for s, c in zip(shp, size, strict=True))
    out = {}
    for key in ("t1w", "t2w", "mask"):
        out[key] = torch.from_numpy(np.ascontiguousarray(icbm_pair[key][sl]))[None, None]
    out["full_t1w"] = torch.from_numpy(icbm_pair["t1w"])[None, None]
    return out


# --------------------------------------------------------------------------- alignment


@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
@pytest.mark.parametrize("name", SIMPLE)
def test_aligned_pair_scores_best(vols, name, masked):
    loss = build_similarity(name)
    t1, t2 = vols["t1w"], vols["t2w"]
    m = vols["mask"] if masked else None
    aligned = loss(t1, t2, m).item()
    for s in SHIFTS:
        moved = loss(t1, shift(t2, s), m).item()
        assert moved > aligned + 0.1 * abs(aligned), (s, aligned, moved)


@pytest.mark.parametrize("name", MULTIMODAL)
def test_loss_grows_with_misalignment(vols, name):
    loss = build_similarity(name)
    t1, t2 = vols["t1w"], vols["t2w"]
    values = [loss(t1, shift(t2, (s, 0, 0))).item() for s in (0, 1, 2, 4)]
    assert all(b > a for a, b in itertools.pairwise(values)), values


# --------------------------------------------------------------------------- invariance

REMAPS = {
    "square": lambda x: x**2,
    "sqrt": lambda x: x.sqrt(),
    "invert": lambda x: 1.0 - x,
}
#: largest |L(a, g(b)) - L(a, b)| allowed, as a fraction of the change a 3-voxel shift causes
REMAP_TOLERANCE = {"mi": 0.1, "localmi": 0.2, "mind": 0.1, "ngf": 0.1}


@pytest.mark.parametrize("remap", list(REMAPS))
@pytest.mark.parametrize("name", MULTIMODAL)
def test_monotonic_remap_changes_little(vols, name, remap):
    loss = build_similarity(name)
    g = REMAPS[remap]
    t1, t2 = vols["t1w"], vols["t2w"]
    base = loss(t1, t2).item()
    remapped = loss(t1, g(t2)).item()
    shifted = loss(t1, shift(t2, SHIFTS[0])).item()
    assert abs(remapped - base) < REMAP_TOLERANCE[name] * abs(shifted - base)
    # alignment is still the better configuration after the remap
    assert remapped < loss(t1, shift(g(t2), SHIFTS[0])).item()


@pytest.mark.parametrize(
    ("name", "remap", "rtol"),
    [
        ("mi", lambda x: 1.0 - x, 1e-5),  # bins symmetric in [0, 1]: a permutation of bins
        ("localmi", lambda x: 1.0 - x, 1e-5),
        ("ngf", lambda x: 1.0 - x, 1e-5),  # anti-parallel edges count as parallel
        ("mind", lambda x: 0.5 * x + 0.2, 1e-4),  # normalised by local variance
        ("mind", lambda x: 1.0 - x, 1e-5),
        ("ncc", lambda x: 1.0 - x, 1e-5),  # squared correlation
        ("ncc", lambda x: 0.5 * x + 0.2, 1e-3),  # up to the eps of near-flat windows
    ],
)
def test_exact_invariances(vols, name, remap, rtol):
    loss = build_similarity(name)
    t1, t2 = vols["t1w"], vols["t2w"]
    torch.testing.assert_close(loss(t1, remap(t2)), loss(t1, t2), rtol=rtol, atol=1e-7)


# --------------------------------------------------------------------------- identities


def test_ncc_of_image_with_itself_is_minus_one():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 20, 20, 20, generator=gen)
    x = torch.nn.functional.avg_pool3d(x, 3, stride=1, padding=1)  # smooth texture
    torch.testing.assert_close(LocalNCC()(x, x), torch.tensor(-1.0), atol=1e-4, rtol=0)
    assert LocalNCC()(x, torch.rand_like(x)) > -0.2  # unrelated noise: no correlation


def test_ngf_of_image_with_itself_is_zero(vols):
    x = vols["full_t1w"]  # includes flat background
    ngf = NormalizedGradientFields()
    assert ngf(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert ngf(x, 1.0 - x).item() == pytest.approx(0.0, abs=1e-6)
    assert 0.0 < ngf(x, shift(x, (2, 0, 0))).item() <= 1.0


def test_ngf_matches_closed_form_on_planes():
    # two linear ramps: constant gradients (1, 0, 0) * 0.1 and (cos t, sin t, 0) * 0.1
    eps = 0.01
    coords = torch.stack(torch.meshgrid(*[torch.arange(6.0)] * 3, indexing="ij"))
    a = (0.1 * coords[0])[None, None]
    t = 0.7
    b = (0.1 * (np.cos(t) * coords[0] + np.sin(t) * coords[1]))[None, None]
    g2 = 0.01
    expected = 1 - (abs(g2 * np.cos(t)) + eps**2) ** 2 / (g2 + eps**2) ** 2
    got = NormalizedGradientFields(eps=eps)(a, b).item()
    assert got == pytest.approx(expected, rel=1e-4)


def test_mind_descriptor_shape_and_identity(vols):
    t1 = vols["t1w"]
    desc = mind_ssc(t1)
    assert desc.shape == (1, 12, *t1.shape[2:])
    assert desc.dtype == torch.float32
    assert desc.max() <= 1.0 and desc.min() > 0.0
    assert MINDSSC()(t1, t1).item() == 0.0


def test_mi_of_image_with_itself_exceeds_cross_modal_mi(vols):
    mi = MutualInformation()
    t1, t2 = vols["t1w"], vols["t2w"]
    assert mi(t1, t1) < mi(t1, t2) < 0
    nmi = MutualInformation(normalized=True)
    assert -2.0 <= nmi(t1, t1).item() <= nmi(t1, t2).item() <= -1.0


def test_mi_matches_hard_histogram_for_narrow_windows():
    # with a tiny window each voxel falls in one bin: MI equals the plug-in estimate
    gen = torch.Generator().manual_seed(1)
    bins = 8
    ia = torch.randint(0, bins, (4000,), generator=gen)
    ib = (ia + torch.randint(0, 2, (4000,), generator=gen)) % bins  # dependent labels
    a = (ia.float() / (bins - 1)).reshape(1, 1, 10, 20, 20)
    b = (ib.float() / (bins - 1)).reshape(1, 1, 10, 20, 20)
    joint = np.zeros((bins, bins))
    np.add.at(joint, (ia.numpy(), ib.numpy()), 1)
    p = joint / joint.sum()
    pa, pb = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    expected = float((p[nz] * np.log(p[nz] / (pa @ pb)[nz])).sum())
    got = -MutualInformation(bins=bins, sigma_ratio=0.05)(a, b).item()
    assert got == pytest.approx(expected, rel=1e-4)


def test_regulariser_closed_forms():
    v = torch.full((2, 3, 5, 6, 7), 0.3)
    assert gradient_loss(v).item() == 0.0
    # v_x = a * x: forward difference a along X in channel 0 only
    a = 0.25
    ramp = torch.zeros(1, 3, 5, 6, 7)
    ramp[:, 0] = a * torch.arange(5.0)[:, None, None]
    # mean over (channels, voxels) of dX^2 = a^2 / 3; the Y and Z terms are 0; mean of axes / 3
    assert gradient_loss(ramp).item() == pytest.approx(a**2 / 9, rel=1e-6)
    assert Diffusion("l1")(ramp).item() == pytest.approx(a / 9, rel=1e-6)
    # general field against an explicit numpy computation
    gen = torch.Generator().manual_seed(0)
    r = torch.randn(2, 3, 4, 5, 6, generator=gen)
    rn = r.numpy().astype(np.float64)
    expected = np.mean([np.mean(np.diff(rn, axis=k) ** 2) for k in (2, 3, 4)])
    assert Diffusion()(r).item() == pytest.approx(expected, rel=1e-5)


# --------------------------------------------------------------------------- masks


@pytest.mark.parametrize("name", SIMPLE)
def test_full_mask_equals_no_mask_and_empty_mask_is_finite(vols, name):
    loss = build_similarity(name)
    t1, t2 = vols["t1w"], vols["t2w"]
    ones = torch.ones_like(t1)
    torch.testing.assert_close(loss(t1, t2, ones), loss(t1, t2), rtol=1e-5, atol=1e-6)
    empty = loss(t1, t2, torch.zeros_like(t1))
    assert torch.isfinite(empty)


@pytest.mark.parametrize("cls", [MutualInformation, LocalMutualInformation])
def test_histogram_losses_ignore_voxels_outside_mask(vols, cls):
    loss = cls()
    t1, t2, m = vols["t1w"], vols["t2w"], vols["mask"]
    garbage = torch.where(m > 0.5, t2, torch.rand_like(t2))
    torch.testing.assert_close(loss(t1, garbage, m), loss(t1, t2, m))
    assert MutualInformation()(t1, t2, torch.zeros_like(m)).item() == 0.0


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("name", SIMPLE)
def test_gradients_reach_moved_and_are_finite(vols, name):
    loss = build_similarity(name)
    moved = shift(vols["t2w"], (1, 0, 0)).clone().requires_grad_(True)
    loss(vols["t1w"], moved, vols["mask"]).backward()
    assert moved.grad is not None
    assert torch.isfinite(moved.grad).all()
    assert moved.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "make",
    [
        lambda c: MutualInformation(chunk_size=c),
        lambda c: MutualInformation(chunk_size=c, normalized=True),
        lambda c: LocalMutualInformation(patch_size=5, chunk_size=c),
    ],
    ids=["mi", "nmi", "localmi"],
)
def test_chunked_checkpointed_histograms_match_one_shot(vols, make):
    """The memory-bounded path (small checkpointed chunks) gives the same value and grads."""
    t1, t2, m = vols["t1w"], vols["t2w"], vols["mask"]
    results = []
    for chunk in (10**9, 8192):
        moved = t2.clone().requires_grad_(True)
        val = make(chunk)(t1, moved, m)
        val.backward()
        results.append((val.detach(), moved.grad))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-4, atol=1e-9)


# --------------------------------------------------------------------------- validation

LOSS_CLASSES = {
    "mi": MutualInformation,
    "localmi": LocalMutualInformation,
    "mind": MINDSSC,
    "ngf": NormalizedGradientFields,
    "ncc": LocalNCC,
}


@pytest.mark.parametrize("name", SIMPLE)
def test_input_validation_names_the_argument(name):
    loss = LOSS_CLASSES[name]()
    x = torch.rand(1, 1, 8, 8, 8)
    with pytest.raises(ValueError, match=r"fixed must be a 5-D tensor \(N, C, X, Y, Z\)"):
        loss(x[0], x)
    with pytest.raises(ValueError, match="moved must be a 5-D tensor"):
        loss(x, x[0])
    with pytest.raises(ValueError, match="moved must have the same shape as fixed"):
        loss(x, torch.rand(1, 1, 8, 8, 9))
    bad = x.clone()
    bad[0, 0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="moved contains NaN"):
        loss(x, bad)
    with pytest.raises(ValueError, match="fixed contains NaN"):
        loss(bad, x)
    with pytest.raises(ValueError, match="mask spatial shape"):
        loss(x, x, torch.ones(1, 1, 8, 8, 7))
    with pytest.raises(ValueError, match="mask must have 1 channel"):
        loss(x, x, torch.ones(1, 2, 8, 8, 8))
    with pytest.raises(ValueError, match="mask must be a 5-D tensor"):
        loss(x, x, torch.ones(8, 8, 8))
    with pytest.raises(ValueError, match="fixed must be a floating-point tensor"):
        loss(torch.ones(1, 1, 8, 8, 8, dtype=torch.long), x)


def test_finite_checks_can_be_switched_off():
    x = torch.rand(1, 1, 8, 8, 8)
    bad = x.clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    set_finite_checks(False)
    try:
        Diffusion()(bad)  # no error: the caller vouches for its data
    finally:
        set_finite_checks(True)
    with pytest.raises(ValueError, match="v contains NaN"):
        Diffusion()(bad)


def test_constructor_and_regulariser_validation():
    with pytest.raises(ValueError, match="bins"):
        MutualInformation(bins=1)
    with pytest.raises(ValueError, match="max_val"):
        MutualInformation(min_val=1.0, max_val=0.0)
    with pytest.raises(ValueError, match="patch_size"):
        LocalMutualInformation(patch_size=1)
    with pytest.raises(ValueError, match="patch_size must be a positive odd"):
        MINDSSC(patch_size=4)
    with pytest.raises(ValueError, match="distance"):
        MINDSSC(distance=0)
    with pytest.raises(ValueError, match="window"):
        LocalNCC(window=6)
    with pytest.raises(ValueError, match="eps"):
        NormalizedGradientFields(eps=0.0)
    with pytest.raises(ValueError, match="penalty"):
        Diffusion("l3")
    with pytest.raises(ValueError, match=r"v must be a 5-D tensor"):
        gradient_loss(torch.zeros(3, 4, 4, 4))
    with pytest.raises(ValueError, match="v must have at least 2 voxels"):
        gradient_loss(torch.zeros(1, 3, 4, 1, 4))


def test_build_similarity():
    assert isinstance(build_similarity("MI"), MutualInformation)
    assert isinstance(build_similarity("LocalMI"), LocalMutualInformation)
    assert isinstance(build_similarity("local_mi", bins=32), LocalMutualInformation)
    assert build_similarity("mi", bins=32).bins == 32
    assert build_similarity("mind", distance=3).distance == 3
    assert set(SIMILARITIES) == {"mi", "localmi", "mind", "ngf", "ncc", "cr", "mcr"}
    with pytest.raises(ValueError, match="unknown similarity 'ssd'; valid names: mi, localmi"):
        build_similarity("ssd")
    with pytest.raises(ValueError, match="ContrastiveSimilarity"):
        build_similarity("mcr")
    with pytest.raises(ValueError, match="ae_moved="):
        build_similarity("cr", ae_fixed=torch.nn.Identity())


# --------------------------------------------------------------------------- autocast


@pytest.mark.parametrize("name", SIMPLE)
def test_bf16_autocast_gives_float32_close_to_reference(vols, name):
    loss = build_similarity(name)
    t1, t2, m = vols["t1w"], vols["t2w"], vols["mask"]
    ref = loss(t1, t2, m)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss(t1, t2, m)
        out_bf16_inputs = loss(t1.bfloat16(), t2.bfloat16(), m)
    for val in (out, out_bf16_inputs):
        assert val.dtype == torch.float32
        assert val.dim() == 0
        assert torch.isfinite(val)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    # bf16 storage rounds intensities to ~3 significant digits
    torch.testing.assert_close(out_bf16_inputs, ref, rtol=0.03, atol=1e-3)


def test_regulariser_under_autocast():
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(1, 3, 6, 6, 6, generator=gen)
    ref = gradient_loss(v)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = gradient_loss(v.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0.02, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", SIMPLE)
def test_cuda_matches_cpu_and_runs_under_autocast(vols, name, dtype):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    loss = build_similarity(name)
    t1, t2, m = vols["t1w"], vols["t2w"], vols["mask"]
    ref = loss(t1, t2, m)
    dev = torch.device("cuda")
    moved = t2.to(dev).requires_grad_(True)
    got = loss(t1.to(dev), moved, m.to(dev))
    torch.testing.assert_close(got.cpu(), ref, rtol=1e-4, atol=1e-5)
    with torch.autocast("cuda", dtype=dtype):
        out = loss(t1.to(dev), moved, m.to(dev))
    assert out.dtype == torch.float32 and out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-3, atol=1e-5)
    out.backward()
    assert torch.isfinite(moved.grad).all() and moved.grad.abs().sum() > 0
