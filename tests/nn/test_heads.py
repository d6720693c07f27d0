"""Projection heads: architecture, eager construction, normalisation, validation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from contrareg_bids.nn.heads import ProjectionHead, ProjectionHeads

AE_CHANNELS = (32, 64, 128, 64, 32, 32)


def test_head_architecture_is_linear_relu_mlp():
    head = ProjectionHead(64)
    kinds = [type(m) for m in head.mlp]
    assert kinds == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    shapes = [tuple(m.weight.shape) for m in head.mlp if isinstance(m, nn.Linear)]
    assert shapes == [(256, 64), (256, 256), (256, 256)]
    assert len(ProjectionHead(8, width=16, depth=1).mlp) == 1


def test_head_output_is_unit_norm_float32():
    head = ProjectionHead(32, width=256)
    y = head(torch.randn(2, 100, 32))
    assert y.shape == (2, 100, 256)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.norm(dim=-1), torch.ones(2, 100))
    # a zero vector (bias-free worst case) stays finite
    head0 = ProjectionHead(4, width=8)
    for m in head0.mlp:
        if isinstance(m, nn.Linear):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
    assert torch.isfinite(head0(torch.zeros(3, 4))).all()


def test_head_forward_map_matches_per_location_projection():
    head = ProjectionHead(8, width=16)
    feat = torch.randn(2, 8, 3, 4, 5)
    out = head.forward_map(feat)
    assert out.shape == (2, 16, 3, 4, 5)
    torch.testing.assert_close(out[1, :, 2, 3, 4], head(feat[1, :, 2, 3, 4]))


def test_heads_are_built_eagerly_from_channels():
    heads = ProjectionHeads(AE_CHANNELS)
    assert len(heads) == 6
    assert heads.channels == AE_CHANNELS
    # parameters exist right away (an optimiser can be built before any forward pass)
    firsts = [h.mlp[0].weight.shape[1] for h in heads]
    assert firsts == list(AE_CHANNELS)
    assert not any(isinstance(p, nn.parameter.UninitializedParameter) for p in heads.parameters())
    torch.optim.Adam(heads.parameters())


def test_heads_project_sampled_features():
    heads = ProjectionHeads(AE_CHANNELS, width=32)
    x = torch.randn(2, 17, 128)
    y = heads.project(2, x)
    assert y.shape == (2, 17, 32)
    torch.testing.assert_close(y.norm(dim=-1), torch.ones(2, 17))
    outs = heads([torch.randn(1, 5, c) for c in AE_CHANNELS])
    assert [tuple(o.shape) for o in outs] == [(1, 5, 32)] * 6


def test_heads_validation():
    heads = ProjectionHeads(AE_CHANNELS)
    with pytest.raises(ValueError, match="x must end with 64 channels"):
        heads.project(1, torch.randn(1, 5, 32))
    with pytest.raises(ValueError, match="x must be a 3-D tensor"):
        heads.project(0, torch.randn(5, 32))
    with pytest.raises(ValueError, match="layer must be in"):
        heads.project(6, torch.randn(1, 5, 32))
    with pytest.raises(ValueError, match="samples must have 6 entries"):
        heads([torch.randn(1, 5, 32)])
    with pytest.raises(ValueError, match="depth"):
        ProjectionHead(8, depth=0)
    with pytest.raises(ValueError, match="in_channels"):
        ProjectionHead(0)
    with pytest.raises(ValueError, match="channels"):
        ProjectionHeads(())


def test_heads_under_autocast_return_normalised_float32():
    heads = ProjectionHeads((16,), width=32)
    x = torch.randn(1, 50, 16)
    ref = heads.project(0, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = heads.project(0, x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(1, 50))
    assert (out * ref).sum(-1).min() > 0.99  # same directions up to bf16 rounding
