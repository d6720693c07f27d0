"""Test-time refinement (instance optimisation) and the objective it optimises."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from contrareg_bids.io.bundle import load_model, save_bundle
from contrareg_bids.metrics import mean_dice
from contrareg_bids.nn.inference import register_arrays
from contrareg_bids.nn.integrate import integrate_velocity, warp, warp_labels
from contrareg_bids.nn.model import ContraRegNet
from contrareg_bids.nn.refine import RefineSettings, lr_factor, phase_view, refine_velocity
from contrareg_bids.training.config import sloppy_config
from contrareg_bids.training.objective import RegistrationObjective, objective_from_bundle
from tests.io.test_bundle import make_bundle


def _pair(icbm_pair):
    """ICBM T2w and labels under a smooth random deformation -> the undeformed T1w."""
    sl = (slice(16, 48), slice(24, 64), slice(20, 52))
    t1, t2 = icbm_pair["t1w"][sl], icbm_pair["t2w"][sl]
    lab, mask = icbm_pair["labels"][sl].astype(np.int64), icbm_pair["mask"][sl]
    rng = np.random.default_rng(1)
    v = np.stack([gaussian_filter(rng.standard_normal(t2.shape), 5) for _ in range(3)])
    v = torch.from_numpy((v / np.abs(v).max() * 2.5).astype(np.float32))[None]
    disp = integrate_velocity(v, 7)
    mov = warp(torch.from_numpy(t2)[None, None], disp)[0, 0].numpy()
    mov_lab = warp_labels(torch.from_numpy(lab)[None, None], disp, "nearest")[0, 0].numpy()
    mov_mask = warp(torch.from_numpy(mask.astype(np.float32))[None, None], disp, "nearest")
    return mov, t1, mov_lab, lab, mov_mask[0, 0].numpy(), mask


def test_refinement_improves_dice_of_an_untrained_network(icbm_pair):
    """Starting from (near) zero velocity, the MI objective alone recovers much of a known
    deformation; refinement never touches the network or the objective's parameters."""
    mov, fix, mov_lab, fix_lab, mov_mask, fix_mask = _pair(icbm_pair)
    torch.manual_seed(0)
    net = ContraRegNet(ch=4, depth=2)
    cfg = sloppy_config(loss="mi", reg_scale=20.0, regnet={"ch": 4, "depth": 2})
    objective = RegistrationObjective(cfg)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    plain = register_arrays(net, mov, fix, lam=0.1, moving_labels=mov_lab)
    refined = register_arrays(
        net, mov, fix, lam=0.1, moving_labels=mov_lab, objective=objective,
        refine=RefineSettings(steps=40, lr=0.1), moving_mask=mov_mask, fixed_mask=fix_mask,
    )  # fmt: skip
    labels = [v for v in np.unique(fix_lab) if v][:20]
    d0 = mean_dice(plain.moved_labels, fix_lab, labels=labels)
    d1 = mean_dice(refined.moved_labels, fix_lab, labels=labels)
    print("Dice without / with refinement:", d0, d1)
    assert d1 > d0 + 0.03
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    with pytest.raises(ValueError, match="refine needs the objective"):
        register_arrays(net, mov, fix, lam=0.1, refine=RefineSettings(steps=1))


def test_objective_from_bundle_uses_the_bundles_heads_and_regulariser_scale(tmp_path):
    bundle = make_bundle(
        loss_params={"tau": 0.07, "reg_scale": 123.0, "num_negatives": 8},
        extra={"train_config": sloppy_config(loss="mcr", tau=0.07, num_negatives=8).to_dict()},
    )
    path = tmp_path / "m.safetensors"
    save_bundle(path, bundle)
    loaded = load_model(path)
    objective = objective_from_bundle(loaded)
    assert objective.reg_scale == 123.0 and objective.contrastive
    assert objective.heads["moving"] is loaded.heads["T2w"]
    assert objective.sim12.ae_moved is loaded.autoencoders["T2w"]
    assert objective.sim12.nce.tau == 0.07


def test_refinement_with_draws_averages_patchnce_samples_and_restores_them():
    """``RefineSettings(draws=k)``: every PatchNCE loss of the objective averages k location
    samples during the refinement (a different, less noisy step than one draw) and is back
    at one draw afterwards; bad values are refused."""
    bundle = make_bundle(
        loss_params={"reg_scale": 1.0, "num_negatives": 8},
        extra={"train_config": sloppy_config(loss="mcr", num_negatives=8).to_dict()},
    )
    objective = objective_from_bundle(bundle)
    shape = (12, 14, 10)  # make_bundle's grid
    gen = torch.Generator().manual_seed(0)
    mov, fix = (torch.rand((1, 1, *shape), generator=gen) for _ in range(2))
    v0 = torch.zeros((1, 3, *shape))

    def refine(draws: int) -> torch.Tensor:
        return refine_velocity(
            v0, mov, fix, objective, lam=0.5, ts=3, settings=RefineSettings(steps=2, draws=draws)
        )

    one, eight = refine(1), refine(8)
    assert not torch.allclose(one, eight)
    assert {objective.sim12.nce.draws, objective.sim21.nce.draws} == {1}
    with pytest.raises(ValueError, match="draws must be >= 1"):
        RefineSettings(steps=1, draws=0)


@pytest.mark.parametrize("loss", ["mi", "localmi"])
def test_baseline_similarities_only_see_the_union_foreground(loss):
    """About 80 % of a neonatal grid is background: the histogram baselines score the same
    union mask as mCR, so what lies outside both brains does not change the similarity
    (MIND and NGF get the mask too, but their descriptors look a few voxels across it)."""
    g = torch.Generator().manual_seed(0)
    shape = (1, 1, 24, 24, 24)
    fixed, moving = torch.rand(shape, generator=g), torch.rand(shape, generator=g)
    mask = torch.zeros(shape)
    mask[..., 6:18, 6:18, 6:18] = 1
    objective = RegistrationObjective(sloppy_config(loss=loss, reg_scale=1.0))
    zero = torch.zeros((1, 3, 24, 24, 24))

    def sim(fix, mov):
        batch = {"fixed": fix, "moving": mov, "fixed_mask": mask, "moving_mask": mask}
        from contrareg_bids.nn.model import RegistrationOutput

        out = RegistrationOutput(mov, fix, zero, zero, zero)
        return float(objective.similarity(batch, out))

    noise = torch.rand(shape, generator=g) * (1 - mask)
    a = sim(fixed * mask, moving * mask)
    b = sim(fixed * mask + noise, moving * mask + noise.flip(2))
    assert a == pytest.approx(b, rel=1e-4, abs=1e-6)


def test_phase_view_at_zero_offset_is_the_plain_warp():
    """Sampling the model-grid images themselves at phase 0 gives the images and their warps
    exactly as the unjittered refinement sees them."""
    g = torch.Generator().manual_seed(0)
    mov, fix = torch.rand(1, 1, 9, 10, 11, generator=g), torch.rand(1, 1, 9, 10, 11, generator=g)
    v = torch.randn(1, 3, 9, 10, 11, generator=g)
    fwd, inv = integrate_velocity(v, 5), integrate_velocity(-v, 5)
    batch, out = phase_view(mov, fix, fwd, inv, v, torch.zeros(3))
    torch.testing.assert_close(batch["moving"], mov)
    torch.testing.assert_close(batch["fixed"], fix)
    torch.testing.assert_close(out.moved, warp(mov, fwd))
    torch.testing.assert_close(out.fixed_moved, warp(fix, inv))


def test_phase_view_sees_between_the_model_grid_points():
    """From images twice as fine, a half-voxel phase lands on the fine voxels the model grid
    skips; the displacement is carried along (sampled at the shifted points)."""
    n = 8
    ramp = torch.arange(2 * n - 1, dtype=torch.float32).view(-1, 1, 1) / 2  # model voxels
    fine = ramp.expand(2 * n - 1, 2 * n - 1, 2 * n - 1)[None, None].contiguous()
    zero = torch.zeros(1, 3, n, n, n)
    shift = torch.zeros(1, 3, n, n, n)
    shift[:, 0] = 1.0  # one model voxel along axis 0
    batch, out = phase_view(fine, fine, shift, zero, zero, torch.tensor([0.5, 0.0, 0.0]))
    x = torch.arange(n, dtype=torch.float32).view(-1, 1, 1) + 0.5
    inside = slice(0, n - 2)  # the last points sample beyond the image (zero padding)
    torch.testing.assert_close(batch["fixed"][0, 0, inside], x[inside].expand(-1, n, n))
    torch.testing.assert_close(out.moved[0, 0, inside], (x + 1)[inside].expand(-1, n, n))
    torch.testing.assert_close(out.forward_disp, shift)


def test_refinement_with_fine_images_moves_the_field_and_keeps_the_objective(icbm_pair):
    """Phase-sampled refinement runs from finer images (and uses them), changes the
    velocity, leaves the objective's parameters alone, and is reproducible for a seed."""
    mov, fix, *_ = _pair(icbm_pair)
    cfg = sloppy_config(loss="mi", reg_scale=20.0, regnet={"ch": 4, "depth": 2})
    objective = RegistrationObjective(cfg)
    m, f = (torch.from_numpy(a)[None, None] for a in (mov, fix))
    fine = tuple(
        torch.nn.functional.interpolate(t, scale_factor=2, mode="trilinear", align_corners=True)
        for t in (m, f)
    )
    before = {k: p.clone() for k, p in objective.state_dict().items()}
    v0 = torch.zeros(1, 3, *mov.shape)
    settings = RefineSettings(steps=5, lr=0.1)
    runs = [refine_velocity(v0, m, f, objective, 0.1, 5, settings, fine_images=fine)
            for _ in range(2)]  # fmt: skip
    assert runs[0].abs().max() > 1e-3
    torch.testing.assert_close(runs[0], runs[1])
    # the fine images are what the steps see: the same run from the model-grid pair differs
    plain = refine_velocity(v0, m, f, objective, 0.1, 5, settings)
    assert (plain - runs[0]).abs().max() > 1e-3
    assert all(torch.equal(before[k], p) for k, p in objective.state_dict().items())


def test_refine_settings_reject_what_cannot_run():
    for bad in ({"steps": -1}, {"lr": 0.0}, {"coarse": 0}, {"draws": 0}, {"schedule": "step"}):
        with pytest.raises(ValueError, match="refine"):
            RefineSettings(**{"steps": 1, **bad})


def test_cosine_schedule_anneals_the_learning_rate():
    """The cosine schedule starts at the full rate and falls monotonically to nearly 0 at the
    last step, so the final iterate settles instead of jittering with PatchNCE's sampling."""
    cos = RefineSettings(steps=50)  # the default schedule
    rates = [lr_factor(cos, i) for i in range(cos.steps)]
    assert rates[0] == 1.0 and rates[-1] < 0.01
    assert all(b < a for a, b in itertools.pairwise(rates))
    constant = RefineSettings(steps=50, schedule="constant")
    assert {lr_factor(constant, i) for i in range(50)} == {1.0}


def test_fine_stage_recovers_a_deformation_between_modalities(icbm_pair):
    """From a zero velocity on a coarse model grid, the fine stage (MIND-SSC on the fine
    images) recovers much of a known deformation between the T2w and the T1w: Dice of the
    labels warped with its field rises well above the unregistered Dice, its inverse
    composes with the forward field to about the identity, and nothing folds."""
    from contrareg_bids.nn.integrate import compose
    from contrareg_bids.nn.refine import FineSettings, refine_fine

    mov, fix, mov_lab, fix_lab, _, _ = _pair(icbm_pair)
    v_model = torch.zeros((1, 3, 16, 20, 16))  # a coarse model grid over the same extent
    fine = torch.from_numpy(mov)[None, None], torch.from_numpy(fix)[None, None]
    fwd, inv = refine_fine(v_model, *fine, ts=7, settings=FineSettings(steps=60))
    assert fwd.shape == (1, 3, *fix.shape) and inv.shape == fwd.shape
    moved = warp_labels(torch.from_numpy(mov_lab)[None, None], fwd, "nearest")[0, 0].numpy()
    before, after = mean_dice(fix_lab, mov_lab), mean_dice(fix_lab, moved)
    assert after > before + 0.05, (before, after)
    roundtrip = compose(fwd, inv)[:, :, 4:-4, 4:-4, 4:-4]
    assert roundtrip.abs().mean() < 0.1 * fwd.abs().mean()
    from contrareg_bids.metrics import folding_percent

    assert folding_percent(fwd[0].numpy()) < 0.5


def test_fine_stage_starts_from_the_given_velocity():
    """No step: the fields are exp(+-v) of the model-grid velocity carried onto the fine grid
    (in fine voxels), so the stage continues from the network and the refinement."""
    from contrareg_bids.nn.refine import FineSettings, refine_fine

    v = torch.zeros((1, 3, 9, 9, 9))
    v[:, 0] = 0.5  # half a model voxel along axis 0 = 2 fine voxels (grid 4x finer)
    img = torch.rand((1, 1, 33, 33, 33))
    fwd, inv = refine_fine(v, img, img, ts=7, settings=FineSettings(steps=0))
    assert torch.allclose(fwd[:, 0], torch.full_like(fwd[:, 0], 2.0), atol=1e-4)
    assert torch.allclose(inv[:, 0], torch.full_like(inv[:, 0], -2.0), atol=1e-4)
    assert fwd[:, 1:].abs().max() < 1e-5


def test_full_resolution_steps_match_the_descriptors_the_control_grid_blurs(icbm_pair):
    """The same budget with its last steps at the images' own resolution ends with a smaller
    descriptor mismatch at that resolution than all steps on the control grid (which only
    sees the descriptors averaged over its cells)."""
    from contrareg_bids.nn.refine import FineSettings, _mind_mismatch, _mind_on, refine_fine

    mov, fix, *_ = _pair(icbm_pair)
    fine = torch.from_numpy(mov)[None, None], torch.from_numpy(fix)[None, None]
    full = [_mind_on(img, fix.shape, 2) for img in fine]

    def mismatch(fraction: float) -> float:
        settings = FineSettings(steps=40, control=3, full_resolution=fraction)
        fwd, inv = refine_fine(torch.zeros((1, 3, 16, 20, 16)), *fine, 7, settings)
        return float(_mind_mismatch(*full, fwd, inv))

    coarse_only, with_full = mismatch(0.0), mismatch(0.5)
    assert with_full < 0.98 * coarse_only, (coarse_only, with_full)


def test_fine_settings_reject_what_cannot_run():
    from contrareg_bids.nn.refine import FineSettings

    for bad in ({"steps": -1}, {"lr": 0}, {"reg": -1}, {"control": 0}, {"full_resolution": 1.5}):
        with pytest.raises(ValueError):
            FineSettings(**{"steps": 1, **bad})
