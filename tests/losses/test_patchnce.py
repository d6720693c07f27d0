"""PatchNCE / ContrastiveSimilarity: exact maths against a reference, sampling and masks,
frozen-autoencoder gradients, and the alignment property with trained heads on real data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from contrareg_bids.losses import (
    ContrastiveSimilarity,
    PatchNCELoss,
    build_similarity,
    resize_mask,
)
from contrareg_bids.losses.patchnce import _pad_like_autoencoder, _sample_indices, more_draws
from contrareg_bids.nn.autoencoder import Autoencoder
from contrareg_bids.nn.heads import ProjectionHeads

TAU = 0.007


def reference_nce(q: torch.Tensor, k: torch.Tensor, ext: torch.Tensor | None = None) -> float:
    """Mean over i of -log(exp(q_i.k_i/tau) / sum_j exp(q_i.k_j/tau)), written out in float64."""
    q, k = q.double(), k.double()
    keys = k if ext is None else torch.cat([k, ext.double()], 0)
    total = 0.0
    for i in range(q.shape[0]):
        logits = [float((q[i] @ keys[j]).detach()) / TAU for j in range(keys.shape[0])]
        mx = max(logits)
        log_den = mx + math.log(sum(math.exp(v - mx) for v in logits))
        total += log_den - logits[i]
    return total / q.shape[0]


def project_all(heads: ProjectionHeads, layer: int, feat: torch.Tensor, n: int = 0):
    """Every location of item ``n`` of a ``(N, C, x, y, z)`` map, projected: ``(V, W)``."""
    return heads.project(layer, feat[n].flatten(1).T[None])[0]


@pytest.fixture
def small():
    torch.manual_seed(0)
    chans = (4, 6)
    feats_f = [torch.randn(2, 4, 3, 3, 3), torch.randn(2, 6, 2, 2, 3)]
    feats_m = [f + 0.5 * torch.randn_like(f) for f in feats_f]
    hf = ProjectionHeads(chans, width=8)
    hm = ProjectionHeads(chans, width=8)
    return feats_f, feats_m, hf, hm


# --------------------------------------------------------------------------- exact maths


def test_patchnce_equals_reference_when_all_locations_are_sampled(small):
    feats_f, feats_m, hf, hm = small
    nce = PatchNCELoss(num_negatives=100, tau=TAU)  # > every layer's size: all sampled
    got = nce(feats_f, feats_m, hf, hm).item()
    expected = 0.0
    for k in range(2):  # sum over layers of the mean over the batch and locations
        per_item = [
            reference_nce(project_all(hf, k, feats_f[k], n), project_all(hm, k, feats_m[k], n))
            for n in range(2)
        ]
        expected += float(np.mean(per_item))
    assert got == pytest.approx(expected, rel=1e-4)


def test_patchnce_mask_restricts_positives_and_negatives(small):
    feats_f, feats_m, hf, hm = small
    nce = PatchNCELoss(num_negatives=100, tau=TAU)
    gen = torch.Generator().manual_seed(0)
    masks = [(torch.rand(1, 1, *f.shape[2:], generator=gen) > 0.4).float() for f in feats_f]
    got = nce(feats_f, feats_m, hf, hm, mask=masks).item()
    expected = 0.0
    for k in range(2):
        sel = masks[k][0, 0].flatten() > 0.5
        per_item = [
            reference_nce(
                project_all(hf, k, feats_f[k], n)[sel], project_all(hm, k, feats_m[k], n)[sel]
            )
            for n in range(2)
        ]
        expected += float(np.mean(per_item))
    assert got == pytest.approx(expected, rel=1e-4)


def test_patchnce_external_negatives_join_the_denominator(small):
    feats_f, feats_m, hf, hm = small
    feats_e = [torch.randn(1, f.shape[1], 2, 2, 2) for f in feats_f]
    nce = PatchNCELoss(num_negatives=100, tau=TAU)
    got = nce(feats_f, feats_m, hf, hm, feats_external=feats_e).item()
    expected = 0.0
    for k in range(2):
        ext = project_all(hm, k, feats_e[k])  # external image of the moved modality
        per_item = [
            reference_nce(
                project_all(hf, k, feats_f[k], n), project_all(hm, k, feats_m[k], n), ext
            )
            for n in range(2)
        ]
        expected += float(np.mean(per_item))
    assert got == pytest.approx(expected, rel=1e-4)
    assert got > nce(feats_f, feats_m, hf, hm).item()  # more negatives, larger loss


def test_empty_mask_falls_back_to_unmasked_sampling(small):
    feats_f, feats_m, hf, hm = small
    nce = PatchNCELoss(num_negatives=100, tau=TAU)
    empty = torch.zeros(2, 1, 6, 6, 6)
    got = nce(feats_f, feats_m, hf, hm, mask=empty)
    assert torch.isfinite(got)
    torch.testing.assert_close(got, nce(feats_f, feats_m, hf, hm))
    one_voxel = torch.zeros(2, 1, 3, 3, 3)
    one_voxel[:, :, 1, 1, 1] = 1  # 1 cell: no negatives possible -> whole grid
    masks = [one_voxel, torch.ones(2, 1, 2, 2, 3)]
    torch.testing.assert_close(nce(feats_f, feats_m, hf, hm, mask=masks), got)


def test_sampling_counts_distinctness_mask_and_reproducibility():
    v = 1000
    gen = torch.Generator().manual_seed(3)
    valid = torch.rand(2, v, generator=gen) > 0.5
    idx = _sample_indices(valid, 2, v, 65, torch.Generator().manual_seed(1), torch.device("cpu"))
    assert idx.shape == (2, 65)
    for n in range(2):
        assert len(set(idx[n].tolist())) == 65  # without replacement
        assert valid[n, idx[n]].all()  # inside the mask
    again = _sample_indices(valid, 2, v, 65, torch.Generator().manual_seed(1), idx.device)
    assert torch.equal(idx, again)
    other = _sample_indices(valid, 2, v, 65, torch.Generator().manual_seed(2), idx.device)
    assert not torch.equal(idx, other)
    # fewer foreground cells than requested: every item gets the smallest count
    few = torch.zeros(2, v, dtype=torch.bool)
    few[0, :10] = True
    few[1, :30] = True
    idx = _sample_indices(few, 2, v, 65, None, torch.device("cpu"))
    assert idx.shape == (2, 10) and (idx[0] < 10).all() and (idx[1] < 30).all()


def test_patchnce_generator_makes_the_loss_reproducible():
    torch.manual_seed(0)
    feats = [torch.randn(1, 4, 12, 12, 12)]
    heads = ProjectionHeads((4,), width=8)
    nce = PatchNCELoss(num_negatives=63)
    a = nce(feats, feats, heads, heads, generator=torch.Generator().manual_seed(5))
    b = nce(feats, feats, heads, heads, generator=torch.Generator().manual_seed(5))
    c = nce(feats, feats, heads, heads, generator=torch.Generator().manual_seed(6))
    assert a.item() == b.item() != c.item()


def test_more_draws_averages_independent_samples_and_restores():
    """With ``more_draws(module, k)`` each layer's loss is the mean of k successive draws of
    the generator (one draw each before and after); a refinement averaging draws optimises
    the same loss with less sampling noise."""
    torch.manual_seed(0)
    feats_f = [torch.randn(1, 4, 12, 12, 12)]
    feats_m = [f + 0.3 * torch.randn_like(f) for f in feats_f]
    heads = ProjectionHeads((4,), width=8)
    nce = PatchNCELoss(num_negatives=31)
    holder = nn.ModuleDict({"inner": nn.ModuleDict({"nce": nce})})
    gen = torch.Generator().manual_seed(3)
    singles = [nce(feats_f, feats_m, heads, heads, generator=gen).item() for _ in range(4)]
    with more_draws(holder, 4):
        assert nce.draws == 4
        gen = torch.Generator().manual_seed(3)
        averaged = nce(feats_f, feats_m, heads, heads, generator=gen).item()
    assert nce.draws == 1
    assert averaged == pytest.approx(sum(singles) / 4, rel=1e-6)
    with pytest.raises(ValueError, match="draws must be a positive integer"):
        with more_draws(holder, 0):
            pass


def test_resize_mask_keeps_thin_structures_and_aligns_with_autoencoder_padding():
    mask = torch.zeros(1, 1, 16, 16, 16)
    mask[0, 0, 5, 3:12, 7] = 1  # a 1-voxel thick line
    for f in (2, 4, 8):
        coarse = resize_mask(mask, (16 // f,) * 3)
        assert coarse.sum() > 0  # survives at every scale (nearest would drop it)
        assert coarse[0, 0, 5 // f, 3 // f, 7 // f] == 1
    # the autoencoder pads 12^3 to 16^3 at the end: image voxel i lies in feature cell i // f
    ae = Autoencoder()
    img_mask = torch.zeros(1, 1, 12, 12, 12)
    img_mask[0, 0, 11, 0, 6] = 1
    feats = ae.features(torch.rand(1, 1, 12, 12, 12))
    padded = _pad_like_autoencoder(img_mask, ae)
    for feat in feats:
        size = feat.shape[2:]
        f = 16 // size[0]
        cell = resize_mask(padded, size)[0, 0]
        assert cell.sum() == 1 and cell[11 // f, 0, 6 // f] == 1


def test_patchnce_validation(small):
    feats_f, feats_m, hf, hm = small
    nce = PatchNCELoss()
    with pytest.raises(ValueError, match="feats_fixed must have 2 layers"):
        nce(feats_f[:1], feats_m, hf, hm)
    with pytest.raises(ValueError, match=r"feats_moved\[1\] shape"):
        nce(feats_f, [feats_m[0], feats_m[1][:, :, :1]], hf, hm)
    with pytest.raises(ValueError, match=r"feats_fixed\[0\] must be a 5-D tensor"):
        nce([feats_f[0][0], feats_f[1]], feats_m, hf, hm)
    with pytest.raises(ValueError, match="heads expect"):
        nce(feats_f, feats_m, ProjectionHeads((4, 5)), ProjectionHeads((4, 5)))
    bad = feats_m[0].clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"feats_moved\[0\] contains NaN"):
        nce(feats_f, [bad, feats_m[1]], hf, hm)
    with pytest.raises(ValueError, match="mask batch size 3"):
        nce(feats_f, feats_m, hf, hm, mask=torch.ones(3, 1, 6, 6, 6))
    with pytest.raises(ValueError, match=r"mask\[1\] spatial shape"):
        nce(feats_f, feats_m, hf, hm, mask=[torch.ones(1, 1, 3, 3, 3)] * 2)
    with pytest.raises(ValueError, match="mask_external given without feats_external"):
        nce(feats_f, feats_m, hf, hm, mask_external=torch.ones(1, 1, 6, 6, 6))
    with pytest.raises(ValueError, match="tau"):
        PatchNCELoss(tau=0.0)
    with pytest.raises(ValueError, match="num_negatives"):
        PatchNCELoss(num_negatives=0)


# --------------------------------------------------------------------------- module


@pytest.fixture
def sim():
    torch.manual_seed(0)
    return ContrastiveSimilarity(Autoencoder(), Autoencoder(), num_negatives=63, width=32)


def test_gradients_reach_moved_and_heads_but_not_autoencoders(sim):
    fixed = torch.rand(1, 1, 16, 16, 16)
    moved = torch.rand(1, 1, 16, 16, 16, requires_grad=True)
    mask = torch.zeros(1, 1, 16, 16, 16)
    mask[..., 2:14, 2:14, 2:14] = 1
    sim.train()
    loss = sim(fixed, moved, mask)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    loss.backward()
    assert moved.grad is not None and moved.grad.abs().sum() > 0
    for heads in (sim.heads_fixed, sim.heads_moved):
        for head in heads:  # every layer's head of both modalities is trained
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    for ae in (sim.ae_fixed, sim.ae_moved):
        assert all(p.grad is None or not p.grad.any() for p in ae.parameters())
        assert not any(p.requires_grad for p in ae.parameters())


def test_autoencoders_stay_frozen_and_in_eval_mode(sim):
    parent = nn.ModuleDict({"sim": sim})
    parent.train()
    assert sim.heads_fixed.training and sim.heads_moved.training
    assert not sim.ae_fixed.training and not sim.ae_moved.training
    assert not any(m.training for m in sim.ae_moved.modules())
    sim.requires_grad_(True)
    assert not any(p.requires_grad for p in sim.ae_fixed.parameters())
    assert all(p.requires_grad for p in sim.heads_moved.parameters())
    # a parent's requires_grad_ walks the parameters directly: the next forward re-freezes
    parent.requires_grad_(True)
    moved = torch.rand(1, 1, 16, 16, 16, requires_grad=True)
    sim(torch.rand(1, 1, 16, 16, 16), moved).backward()
    assert not any(p.requires_grad or p.grad is not None for p in sim.ae_moved.parameters())
    assert moved.grad is not None
    parent.eval()
    assert not sim.heads_fixed.training


def test_unfrozen_autoencoders_train_for_pretraining():
    torch.manual_seed(0)
    sim = ContrastiveSimilarity(
        Autoencoder(), Autoencoder(), num_negatives=31, width=16, freeze_autoencoders=False
    )
    sim.train()
    assert sim.ae_fixed.training
    sim(torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16)).backward()
    assert sim.ae_fixed.blocks[0].conv.weight.grad is not None


class ForwardOnly(nn.Module):
    """An autoencoder honouring only the minimal contract: forward -> (recon, features)."""

    def __init__(self, ae: Autoencoder) -> None:
        super().__init__()
        self.ae = ae
        self.feature_channels = ae.feature_channels

    def forward(self, x):
        return self.ae(x)


def test_forward_only_autoencoder_contract_gives_same_loss(sim):
    x, y = torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16)
    plain = ContrastiveSimilarity(
        ForwardOnly(sim.ae_fixed), ForwardOnly(sim.ae_moved), sim.heads_fixed, sim.heads_moved,
        num_negatives=63,
    )  # fmt: skip
    a = sim(x, y, generator=torch.Generator().manual_seed(0))
    b = plain(x, y, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)


def test_external_negatives_and_swapped_direction(sim):
    x, y, z = (torch.rand(1, 1, 16, 16, 16) for _ in range(3))
    sim_all = ContrastiveSimilarity(  # every location sampled: sampling order is irrelevant
        sim.ae_fixed, sim.ae_moved, sim.heads_fixed, sim.heads_moved, num_negatives=5000
    )
    without = sim_all(x, y)
    with_ext = sim_all(x, y, external=z, external_mask=torch.ones(1, 1, 16, 16, 16))
    assert torch.isfinite(with_ext) and with_ext > without
    rev = sim.swapped()
    assert rev.ae_fixed is sim.ae_moved and rev.heads_fixed is sim.heads_moved
    with pytest.raises(ValueError, match="external must have 1 channel"):
        sim(x, y, external=torch.rand(1, 2, 16, 16, 16))
    with pytest.raises(ValueError, match="external_mask given without external"):
        sim(x, y, external_mask=torch.ones(1, 1, 16, 16, 16))


def test_cr_ignores_masks_and_mcr_uses_them(sim):
    x, y = torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16)
    mask = torch.zeros(1, 1, 16, 16, 16)
    mask[..., :8, :8, :8] = 1
    kw = dict(ae_fixed=sim.ae_fixed, ae_moved=sim.ae_moved, num_negatives=63, width=32)
    cr, mcr = build_similarity("cr", **kw), build_similarity("mcr", **kw)
    assert not cr.masked and mcr.masked

    def run(loss, m):
        return loss(x, y, m, generator=torch.Generator().manual_seed(0))

    torch.testing.assert_close(run(cr, mask), run(cr, None))
    assert run(mcr, mask).item() != run(mcr, None).item()


def test_contrastive_validation(sim):
    x = torch.rand(1, 1, 8, 8, 8)
    with pytest.raises(ValueError, match="fixed must be a 5-D tensor"):
        sim(x[0], x)
    with pytest.raises(ValueError, match="moved must have the same shape as fixed"):
        sim(x, torch.rand(1, 1, 8, 8, 16))
    with pytest.raises(ValueError, match="moved contains NaN"):
        sim(x, torch.full_like(x, float("nan")))
    with pytest.raises(ValueError, match="mask spatial shape"):
        sim(x, x, torch.ones(1, 1, 4, 8, 8))
    with pytest.raises(
        ValueError, match=r"ae_fixed must be an nn\.Module with a feature_channels"
    ):
        ContrastiveSimilarity(nn.Identity(), Autoencoder())
    with pytest.raises(ValueError, match="heads_moved must be ProjectionHeads"):
        ContrastiveSimilarity(Autoencoder(), Autoencoder(), heads_moved=ProjectionHeads((4,)))


def test_contrastive_under_bf16_autocast(sim):
    gen = torch.Generator().manual_seed(0)
    x = torch.nn.functional.avg_pool3d(torch.rand(1, 1, 16, 16, 16, generator=gen), 3, 1, 1)
    y = 1.0 - x
    ref = sim(x, y, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sim(x, y, generator=torch.Generator().manual_seed(1))
    assert out.dtype == torch.float32 and torch.isfinite(out)
    torch.testing.assert_close(out, ref, rtol=0.02, atol=0)
    out16 = sim(x.bfloat16(), y.bfloat16(), generator=torch.Generator().manual_seed(1))
    assert out16.dtype == torch.float32
    torch.testing.assert_close(out16, ref, rtol=0.02, atol=0)


# --------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def trained(icbm_pair):
    """RandAE setting: random frozen autoencoders, heads trained for 30 Adam steps on the
    aligned 32^3 central crop of the ICBM T1w/T2w pair (mCR: sampling inside the mask)."""
    size = 32
    shp = icbm_pair["t1w"].shape
    sl = tuple(slice((s - size) // 2, (s - size) // 2 + size) for s in shp)
    t1, t2, mask = (
        torch.from_numpy(np.ascontiguousarray(icbm_pair[k][sl]))[None, None]
        for k in ("t1w", "t2w", "mask")
    )
    torch.manual_seed(0)
    sim = ContrastiveSimilarity(Autoencoder(), Autoencoder(), num_negatives=255)
    params = [*sim.heads_fixed.parameters(), *sim.heads_moved.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    with torch.no_grad():  # frozen features of the aligned training pair, computed once
        ff = sim.ae_fixed.features(t1)
        fm = sim.ae_moved.features(t2)
    gen = torch.Generator().manual_seed(0)
    first = None
    for _ in range(30):
        loss = sim.nce(ff, fm, sim.heads_fixed, sim.heads_moved, mask=mask, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert loss.item() < 0.5 * first  # the heads learned the correspondence
    return sim, t1, t2, mask


def _eval(sim, fixed, moved, mask, repeats=2):
    with torch.no_grad():
        return np.mean(
            [sim(fixed, moved, mask, generator=torch.Generator().manual_seed(100 + i)).item()
             for i in range(repeats)]
        )  # fmt: skip


def test_trained_contrastive_loss_is_lowest_at_alignment(trained):
    sim, t1, t2, mask = trained
    aligned = _eval(sim, t1, t2, mask)
    for s in [(3, 0, 0), (0, -3, 0), (0, 0, 3), (-2, 2, 0)]:  # never seen in training
        moved = torch.roll(t2, s, dims=(2, 3, 4))
        assert _eval(sim, t1, moved, mask) > 1.8 * aligned, s
    # also without the mask (CR) on the same heads
    assert _eval(sim, t1, torch.roll(t2, 3, 2), None) > _eval(sim, t1, t2, None)


@pytest.mark.parametrize("remap", ["sqrt", "square"])
def test_trained_contrastive_loss_nearly_invariant_to_monotonic_remap(trained, remap):
    sim, t1, t2, mask = trained
    g = torch.sqrt if remap == "sqrt" else torch.square
    aligned = _eval(sim, t1, t2, mask)
    shifted = _eval(sim, t1, torch.roll(t2, 3, 2), mask)
    remapped = _eval(sim, t1, g(t2), mask)
    remapped_shifted = _eval(sim, t1, torch.roll(g(t2), 3, 2), mask)
    assert remapped < remapped_shifted  # alignment still wins after the remap
    assert abs(remapped - aligned) < 0.35 * (shifted - aligned)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_contrastive_on_cuda_under_autocast(sim, dtype):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    dev = torch.device("cuda")
    sim = sim.to(dev)
    x = torch.rand(1, 1, 16, 16, 16, device=dev)
    moved = (1.0 - x).requires_grad_(True)
    mask = torch.ones(1, 1, 16, 16, 16, device=dev)
    gen = torch.Generator(device=dev)
    ref = sim(x, moved, mask, generator=gen.manual_seed(0))
    with torch.autocast("cuda", dtype=dtype):
        out = sim(x, moved, mask, generator=gen.manual_seed(0))
    assert out.dtype == torch.float32 and torch.isfinite(out)
    torch.testing.assert_close(out, ref, rtol=0.02, atol=0)
    out.backward()
    assert torch.isfinite(moved.grad).all() and moved.grad.abs().sum() > 0
    # a CPU generator with CUDA data also works (indices drawn on CPU, then moved)
    assert torch.isfinite(sim(x, moved, mask, generator=torch.Generator().manual_seed(0)))


def test_fixed_feature_cache_gives_the_same_loss_with_one_encoder_pass(sim):
    """Instance optimisation keeps the fixed image: its features are computed once, the
    loss and the gradient to the moved image are unchanged, and a changed image misses."""
    fixed = torch.rand(1, 1, 16, 16, 16)
    moved = torch.rand(1, 1, 16, 16, 16, requires_grad=True)
    calls = []
    hook = sim.ae_fixed.blocks[0].register_forward_pre_hook(lambda *_: calls.append(1))
    sim.eval()
    ref = sim(fixed, moved, generator=torch.Generator().manual_seed(3))
    (ref_grad,) = torch.autograd.grad(ref, moved)
    assert len(calls) == 1
    calls.clear()
    with sim.cache_fixed_features():
        for _ in range(3):
            loss = sim(fixed, moved, generator=torch.Generator().manual_seed(3))
            (grad,) = torch.autograd.grad(loss, moved)
            assert torch.allclose(loss, ref) and torch.allclose(grad, ref_grad)
        n_cached = len(calls)
        fixed.add_(0.1)  # in place: the version counter changes, the cache misses
        changed = sim(fixed, moved, generator=torch.Generator().manual_seed(3))
    hook.remove()
    assert n_cached == 1 and len(calls) == 2 and not torch.allclose(changed, ref)
    assert sim._fixed_cache is None  # released on exit
