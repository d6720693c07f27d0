"""Smoothness regulariser of the velocity field (diffusion / gradient penalty).

Exact form (VoxelMorph's ``Grad``): with forward differences
``D_k v = v[..., i+1 along axis k] - v[..., i]`` (voxel units, no border padding),

    L_reg = (1/3) * sum_{k in X, Y, Z} mean_{n, c, voxels} (D_k v)^2      (penalty='l2')

i.e. the mean over the three axes of the mean squared finite difference over batch, channels
and voxels. For a 3-channel field this is ``mean_voxels ||grad v||_F^2 / 9``: the squared
Frobenius norm of the spatial Jacobian of v, up to the constant 1/9 (absorbed by lambda).
``penalty='l1'`` uses absolute differences instead.
"""

from __future__ import annotations

import torch
from torch import nn

from ._checks import check_volume, full_precision

__all__ = ["Diffusion", "gradient_loss"]

_PENALTIES = ("l1", "l2")


def gradient_loss(v: torch.Tensor, penalty: str = "l2") -> torch.Tensor:
    """Mean (over axes) of the mean squared (or absolute) forward differences of ``v``.

    ``v``: ``(N, C, X, Y, Z)`` with at least 2 voxels along each axis. Returns float32.
    """
    v = check_volume(v, "v")
    if penalty not in _PENALTIES:
        raise ValueError(f"penalty must be one of {_PENALTIES}, got {penalty!r}")
    if min(v.shape[2:]) < 2:
        raise ValueError(f"v must have at least 2 voxels along each axis, got {tuple(v.shape)}")
    with full_precision(v.device):
        x = v.float()
        terms = []
        for axis in (2, 3, 4):
            d = x.diff(dim=axis)
            terms.append((d * d).mean() if penalty == "l2" else d.abs().mean())
        return torch.stack(terms).mean()


class Diffusion(nn.Module):
    """:func:`gradient_loss` as a module: ``forward(v)`` -> float32 scalar.

    Args:
        penalty: ``'l2'`` (diffusion, paper) or ``'l1'`` (total-variation-like).
    """

    def __init__(self, penalty: str = "l2") -> None:
        super().__init__()
        if penalty not in _PENALTIES:
            raise ValueError(f"penalty must be one of {_PENALTIES}, got {penalty!r}")
        self.penalty = penalty

    def extra_repr(self) -> str:
        return f"penalty={self.penalty!r}"

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return gradient_loss(v, self.penalty)
