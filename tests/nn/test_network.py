"""Registration network, hypernetwork, autoencoder and inference."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from contrareg_bids.nn.autoencoder import Autoencoder, dilate_box, mask_to_feature_grid
from contrareg_bids.nn.inference import register_arrays, resolve_device
from contrareg_bids.nn.integrate import compose
from contrareg_bids.nn.model import ContraRegNet, RegNetConfig


def _pair(shape=(20, 22, 18), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 1, *shape, generator=g), torch.rand(1, 1, *shape, generator=g)


def test_outputs_and_near_identity_init():
    torch.manual_seed(0)
    net = ContraRegNet(ch=8, depth=3)
    mov, fix = _pair()
    out = net(mov, fix, 0.3)
    for t in (out.forward_disp, out.inverse_disp, out.velocity):
        assert t.shape == (1, 3, 20, 22, 18)
    assert out.moved.shape == mov.shape and out.fixed_moved.shape == fix.shape
    assert out.forward_disp.abs().max() < 1e-2  # flow layer initialised near zero
    torch.testing.assert_close(out.moved, mov, atol=1e-2, rtol=0)


def test_forward_and_inverse_are_inverse_of_each_other():
    torch.manual_seed(0)
    net = ContraRegNet(ch=8, depth=2, ts=7)
    torch.nn.init.normal_(net.flow.weight, 0, 1.0)  # a non-trivial field
    mov, fix = (torch.nn.functional.avg_pool3d(t, 5, 1, 2) for t in _pair((24, 24, 24)))
    out = net(mov, fix, 0.1)
    assert out.forward_disp.abs().max() > 0.3
    res = compose(out.forward_disp, out.inverse_disp)[..., 4:-4, 4:-4, 4:-4]
    assert res.abs().max() < 0.05 * out.forward_disp.abs().max()


def test_lambda_shrink_makes_lambda_one_the_identity():
    torch.manual_seed(0)
    net = ContraRegNet(ch=8, depth=2)
    torch.nn.init.normal_(net.flow.weight, 0, 0.05)
    mov, fix = _pair()
    assert net.velocity(mov, fix, 1.0).abs().max() == 0
    assert net.velocity(mov, fix, 0.0).abs().max() > 0


def test_lambda_changes_output_through_film():
    torch.manual_seed(0)
    net = ContraRegNet(ch=8, depth=2, lambda_shrink=False)
    torch.nn.init.normal_(net.flow.weight, 0, 0.05)
    mov, fix = _pair()
    a = net.velocity(mov, fix, 0.0)
    # small non-zero projections: lambda matters from the start, but only a little
    diff = (a - net.velocity(mov, fix, 1.0)).abs().max()
    assert 1e-5 < diff < 0.5 * a.abs().max()
    batch = torch.cat([mov, mov]), torch.cat([fix, fix])
    v = net.velocity(*batch, torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(v[:1], net.velocity(mov, fix, 0.0), atol=1e-5, rtol=1e-4)


def test_gradients_reach_unet_flow_and_hypernet():
    torch.manual_seed(0)
    net = ContraRegNet(ch=8, depth=2)
    mov, fix = _pair()
    out = net(mov, fix, torch.rand(1))
    ((out.moved - fix) ** 2).mean().backward()
    assert net.flow.weight.grad.abs().sum() > 0
    assert net.unet.encoder[0].conv.weight.grad.abs().sum() > 0
    assert net.hypernet.projections[0].weight.grad.abs().sum() > 0


def test_lambda_embedding_gets_gradient_at_step_zero():
    """Zero-initialised FiLM projections left the embedding MLP without any gradient, so
    the lambda conditioning could not start to learn."""
    torch.manual_seed(0)
    net = ContraRegNet(ch=8, depth=2)
    mov, fix = _pair()
    out = net(mov, fix, torch.full((1,), 0.3))
    ((out.moved - fix) ** 2).mean().backward()
    for layer in net.hypernet.embed:
        if isinstance(layer, torch.nn.Linear):
            assert layer.weight.grad.abs().sum() > 0
    # lambda's direct path into the projections (the last input column) is trained too
    assert net.hypernet.projections[0].weight.grad[:, -1].abs().sum() > 0


def test_param_groups_give_projection_weight_decay():
    net = ContraRegNet(ch=8, depth=2, hyper_weight_decay=1e-5)
    groups = net.param_groups()
    decays = sorted(g["weight_decay"] for g in groups)
    assert decays == [0.0, 0.0, 1e-5]
    n_params = sum(p.numel() for g in groups for p in g["params"])
    assert n_params == sum(p.numel() for p in net.parameters())


def test_fixed_lambda_network_has_no_hypernet():
    net = ContraRegNet(ch=8, depth=2, hypernet=False)
    assert net.hypernet is None
    out = net(*_pair())  # lam not needed
    assert out.velocity.shape[1] == 3


def test_config_round_trip_and_unknown_field():
    cfg = RegNetConfig(ch=16, ts=7, int_downsize=2)
    assert RegNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown RegNetConfig"):
        RegNetConfig.from_dict({"chanels": 3})


def test_half_resolution_integration_in_model():
    net = ContraRegNet(ch=8, depth=2, int_downsize=2)
    out = net(*_pair((21, 19, 17)), 0.5)
    assert out.forward_disp.shape == (1, 3, 21, 19, 17)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8, 8), 0.1), "moving must be a 5-D"),
        ((torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 9), 0.1), "spatial shape"),
        ((torch.rand(1, 1, 8, 8, 8), torch.full((1, 1, 8, 8, 8), float("nan")), 0.1), "fixed"),
        ((torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 8), 1.5), "lam"),
        ((torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 8), None), "lam is required"),
    ],
)
def test_network_rejects_bad_input(args, match):
    net = ContraRegNet(ch=4, depth=2)
    with pytest.raises(ValueError, match=match):
        net(*args)


def test_bf16_autocast_on_cpu():
    torch.manual_seed(0)
    net = ContraRegNet(ch=8, depth=2)
    mov, fix = _pair()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(mov, fix, 0.2)
    assert out.forward_disp.dtype == torch.float32
    assert torch.isfinite(out.moved).all()


def test_autoencoder_features_and_mask_grid():
    ae = Autoencoder()
    assert ae.feature_channels == (32, 64, 128, 64, 32, 32)
    x = torch.rand(1, 1, 19, 24, 17)
    recon, feats = ae(x)
    assert recon.shape == x.shape
    assert [f.shape[1] for f in feats] == list(ae.feature_channels)
    assert [f.shape[2:] for f in feats] == [
        (24, 24, 24),
        (12, 12, 12),
        (6, 6, 6),
        (3, 3, 3),
        (6, 6, 6),
        (12, 12, 12),
    ]
    assert all(torch.equal(a, b) for a, b in zip(ae.features(x), feats, strict=True))


def _linearised(ae: Autoencoder) -> Autoencoder:
    """The autoencoder with positive constant kernels, no norm, no activation: every
    feature cell is a symmetric positive filter of the input, centred where the cell is."""
    for block in ae.blocks:
        torch.nn.init.constant_(block.conv.weight, 1.0)
        torch.nn.init.zeros_(block.conv.bias)
        block.norm = torch.nn.Identity()
        block.act = torch.nn.Identity()
    return ae


def test_feature_geometry_matches_an_impulse_response_through_the_real_autoencoder():
    """Cell centres of every feature layer (the receptive field's centroid) are where
    ``feature_geometry`` says, not at the blocks ``[f j, f (j + 1))``."""
    ae = _linearised(Autoencoder()).double()
    assert ae.feature_geometry == (
        (1.0, 0.0), (2.0, 0.0), (4.0, 0.0), (8.0, 0.0), (4.0, -2.0), (2.0, -3.0),
    )  # fmt: skip
    x = torch.rand(1, 1, 64, 64, 64, dtype=torch.float64, requires_grad=True)
    feats = ae.features(x)
    axis_pos = torch.arange(64, dtype=torch.float64)
    for (stride, offset), f in zip(ae.feature_geometry, feats, strict=True):
        n = f.shape[2]
        for j in (n // 2 - 1, n // 2):  # interior cells (no border clamping)
            (g,) = torch.autograd.grad(f[0, 0, j, n // 2, n // 2], x, retain_graph=True)
            w = g[0, 0].abs().sum(dim=(1, 2))
            centroid = float((w * axis_pos).sum() / w.sum())
            assert centroid == pytest.approx(stride * j + offset, abs=1e-6)


def test_mask_to_feature_grid_follows_the_real_cell_centres():
    ae = Autoencoder()
    x = torch.rand(1, 1, 19, 24, 17)
    feats = ae.features(x)
    mask = torch.zeros(1, 1, 19, 24, 17)
    mask[0, 0, 9, 12, 8] = 1  # one interior voxel
    for (stride, offset), f in zip(ae.feature_geometry, feats, strict=True):
        m = mask_to_feature_grid(mask, f.shape[2:], stride, offset)[0, 0]
        assert m.shape == f.shape[2:]
        cells = m.nonzero().tolist()
        assert cells, (stride, offset)
        radius = np.ceil(stride / 2) if stride > 1 else 0
        for c in cells:  # every foreground cell is centred within `radius` of the voxel
            centre = np.array(c) * stride + offset
            assert np.all(np.abs(np.round(centre) - [9, 12, 8]) <= radius)
    # a cell centred outside the image (before voxel 0 at the upsampled layers) is background
    full = torch.ones(1, 1, 19, 24, 17)
    m5 = mask_to_feature_grid(full, feats[5].shape[2:], *ae.feature_geometry[5])
    assert (
        m5[0, 0, 0].sum() == 0 and m5[0, 0, 2, 2:10, 2:10].all() and m5[0, 0, 2, :, 10:].sum() == 0
    )


def test_register_arrays_matches_forward_and_warps_labels(rng):
    torch.manual_seed(0)
    net = ContraRegNet(ch=8, depth=2)
    torch.nn.init.normal_(net.flow.weight, 0, 0.05)
    mov = rng.random((16, 18, 20)).astype(np.float32)
    fix = rng.random((16, 18, 20)).astype(np.float32)
    labels = rng.integers(0, 3, (16, 18, 20))
    res = register_arrays(net, mov, fix, lam=0.2, moving_labels=labels)
    assert net.training  # mode restored
    with torch.no_grad():
        net.eval()
        out = net(torch.from_numpy(mov)[None, None], torch.from_numpy(fix)[None, None], 0.2)
    np.testing.assert_allclose(res.forward_disp, out.forward_disp[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(res.inverse_disp, out.inverse_disp[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(res.moved, out.moved[0, 0].numpy(), atol=1e-5)
    assert res.moved_labels.shape == labels.shape
    assert set(np.unique(res.moved_labels)) <= {0, 1, 2}


@pytest.mark.parametrize(
    ("moving", "fixed", "match"),
    [
        (np.zeros((4, 4, 4, 2)), np.zeros((4, 4, 4)), "moving must be a 3-D"),
        (np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), "share a grid"),
        (np.zeros((4, 4, 4)), np.full((4, 4, 4), np.nan), "fixed contains NaN"),
    ],
)
def test_register_arrays_rejects_bad_input(moving, fixed, match):
    with pytest.raises(ValueError, match=match):
        register_arrays(ContraRegNet(ch=4, depth=2), moving, fixed, lam=0.1)


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in {"cpu", "cuda"}
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:1")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_register_arrays_on_cuda_matches_cpu(rng):
    torch.manual_seed(0)
    net = ContraRegNet(ch=8, depth=2)
    mov = rng.random((16, 16, 16)).astype(np.float32)
    fix = rng.random((16, 16, 16)).astype(np.float32)
    cpu = register_arrays(net, mov, fix, lam=0.2, device="cpu")
    gpu = register_arrays(net, mov, fix, lam=0.2, device="cuda")
    np.testing.assert_allclose(cpu.forward_disp, gpu.forward_disp, atol=1e-4)


@pytest.mark.parametrize("radius", [0, 1, 2, 4])
def test_dilate_box_is_the_cubic_max_pool(radius):
    mask = torch.rand(2, 1, 13, 17, 11, generator=torch.Generator().manual_seed(radius)) > 0.9
    mask = mask.float()
    expected = F.max_pool3d(mask, 2 * radius + 1, stride=1, padding=radius) if radius else mask
    assert torch.equal(dilate_box(mask, radius), expected)
