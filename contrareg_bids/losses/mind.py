"""MIND-SSC: modality independent neighbourhood descriptor, self-similarity context.

Heinrich et al., MICCAI 2013 ("Towards realtime multimodal fusion for image-guided
interventions using self-similarity context"). Each voxel is described by 12 patch distances
between pairs of its six face neighbours at distance ``d`` (all pairs except the three
opposite ones, i.e. the 12 edges of an octahedron), normalised by their local mean and mapped
through ``exp(-.)``. Only local self-similarity enters, so the descriptor is largely
independent of the modality's intensity mapping; the loss compares descriptors by their mean
squared difference.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_mask, check_pair, check_volume, full_precision

__all__ = ["MINDSSC", "mind_ssc"]

_NEIGHBOURS = [
    (sign * (axis == 0), sign * (axis == 1), sign * (axis == 2))
    for axis in range(3)
    for sign in (-1, 1)
]
# neighbour pairs at squared distance 2 (not opposite): 12 of the 15 pairs
_PAIRS = [
    (a, b)
    for a, b in itertools.combinations(_NEIGHBOURS, 2)
    if sum((i - j) ** 2 for i, j in zip(a, b, strict=True)) == 2
]


def _shift(padded: torch.Tensor, offset: tuple[int, ...], d: int, size: list[int]) -> torch.Tensor:
    """``I(x + d * offset)`` from an image padded by ``d`` on every side."""
    sl = [slice(d + o * d, d + o * d + s) for o, s in zip(offset, size, strict=True)]
    return padded[:, :, sl[0], sl[1], sl[2]]


def mind_ssc(
    img: torch.Tensor, distance: int = 2, patch_size: int = 3, eps: float = 1e-6
) -> torch.Tensor:
    """MIND-SSC descriptors ``(N, C, X, Y, Z) -> (N, 12 C, X, Y, Z)`` in float32, in (0, 1].

    Args:
        distance: spacing ``d`` of the six neighbours from the centre voxel (dilation).
        patch_size: odd edge of the box over which squared differences are averaged.
        eps: floor of the local variance estimate (flat regions stay finite).
    """
    img = check_volume(img, "img")
    if not isinstance(distance, int) or distance < 1:
        raise ValueError(f"distance must be a positive integer, got {distance!r}")
    if not isinstance(patch_size, int) or patch_size < 1 or patch_size % 2 == 0:
        raise ValueError(f"patch_size must be a positive odd integer, got {patch_size!r}")
    return _descriptor(img, distance, patch_size, eps)


def _descriptor(img: torch.Tensor, distance: int, patch_size: int, eps: float) -> torch.Tensor:
    n, c, *size = img.shape
    with full_precision(img.device):
        x = img.float().reshape(n * c, 1, *size)
        padded = F.pad(x, [distance] * 6, mode="replicate")
        ssd = torch.cat(
            [
                (_shift(padded, a, distance, size) - _shift(padded, b, distance, size)) ** 2
                for a, b in _PAIRS
            ],
            dim=1,
        )
        r = patch_size // 2
        if r > 0:
            ssd = F.avg_pool3d(F.pad(ssd, [r] * 6, mode="replicate"), patch_size, stride=1)
        dist = ssd - ssd.amin(dim=1, keepdim=True)
        var = dist.mean(dim=1, keepdim=True)
        mean_var = var.mean(dim=(1, 2, 3, 4), keepdim=True)
        var = torch.minimum(torch.maximum(var, mean_var * 1e-3), mean_var * 1e3).clamp_min(eps)
        desc = torch.exp(-dist / var)
    return desc.reshape(n, c * len(_PAIRS), *size)


class MINDSSC(nn.Module):
    """Mean squared difference of MIND-SSC descriptors (lower = more similar).

    Args:
        distance: neighbour distance / dilation in voxels (paper baseline: 2).
        patch_size: patch (box filter) size in voxels, odd (paper baseline: 3).
        eps: variance floor, see :func:`mind_ssc`.

    ``forward(fixed, moved, mask=None)``: with a mask the squared differences are averaged
    over foreground voxels only. Returns a float32 scalar.
    """

    def __init__(self, distance: int = 2, patch_size: int = 3, eps: float = 1e-6) -> None:
        super().__init__()
        if not isinstance(distance, int) or distance < 1:
            raise ValueError(f"distance must be a positive integer, got {distance!r}")
        if not isinstance(patch_size, int) or patch_size < 1 or patch_size % 2 == 0:
            raise ValueError(f"patch_size must be a positive odd integer, got {patch_size!r}")
        self.distance = distance
        self.patch_size = patch_size
        self.eps = float(eps)

    def extra_repr(self) -> str:
        return f"distance={self.distance}, patch_size={self.patch_size}"

    def forward(
        self, fixed: torch.Tensor, moved: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        fixed, moved = check_pair(fixed, moved)
        m = check_mask(mask, fixed)
        da = _descriptor(fixed, self.distance, self.patch_size, self.eps)
        db = _descriptor(moved, self.distance, self.patch_size, self.eps)
        with full_precision(fixed.device):
            sq = (da - db) ** 2
            if m is None:
                return sq.mean()
            return (sq * m).sum() / (m.sum() * sq.shape[1]).clamp_min(1.0)
