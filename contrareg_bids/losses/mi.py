"""Global mutual information with Gaussian Parzen windows (soft joint histograms).

Every voxel intensity spreads a unit mass over ``bins`` equally spaced bin centres in
``[min_val, max_val]`` with Gaussian weights (normalised to sum to one, as in VoxelMorph's
MI). The joint histogram is the average outer product of the two images' weights, computed in
chunks of voxels; when gradients are needed each chunk is checkpointed, so memory stays at
one chunk's ``(chunk, bins)`` weights plus the ``bins x bins`` histogram even for a
160x192x160 volume.

The loss is the *negative* MI (nats), or with ``normalized=True`` the negative normalised MI
``(H(a) + H(b)) / H(a, b)`` (Studholme et al. 1999), which lies in ``[-2, -1]``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ._checks import check_mask, check_pair, full_precision

__all__ = ["MutualInformation", "chunk_histogram", "joint_histogram", "mi_from_joint"]


def bin_centres(
    bins: int, min_val: float, max_val: float, sigma_ratio: float, device: torch.device
) -> tuple[torch.Tensor, float]:
    """Bin centres (float32) and the Gaussian ``1 / (2 sigma^2)`` for Parzen windowing."""
    centres = torch.linspace(min_val, max_val, bins, device=device, dtype=torch.float32)
    sigma = (max_val - min_val) / max(bins - 1, 1) * sigma_ratio
    return centres, 1.0 / (2.0 * sigma * sigma)


def parzen_weights(
    x: torch.Tensor, centres: torch.Tensor, preterm: float, min_val: float, max_val: float
) -> torch.Tensor:
    """Soft bin memberships ``(..., V) -> (..., V, B)`` in float32, rows summing to one."""
    x = x.float().clamp(min_val, max_val)
    w = torch.exp(-preterm * (x[..., None] - centres) ** 2)
    return w / w.sum(-1, keepdim=True)


def chunk_histogram(
    a: torch.Tensor,
    b: torch.Tensor,
    m: torch.Tensor | None,
    centres: torch.Tensor,
    preterm: float,
    lo: float,
    hi: float,
) -> torch.Tensor:
    """Soft joint histogram ``(G, B, B)`` of one chunk ``(G, V_chunk)`` (float32)."""
    with full_precision(a.device):
        wa = parzen_weights(a, centres, preterm, lo, hi)
        if m is not None:
            wa = wa * m[..., None]
        wb = parzen_weights(b, centres, preterm, lo, hi)
        return wa.transpose(-1, -2) @ wb  # (..., B, B)


def joint_histogram(
    a: torch.Tensor,
    b: torch.Tensor,
    m: torch.Tensor | None,
    centres: torch.Tensor,
    preterm: float,
    min_val: float,
    max_val: float,
    chunk_size: int,
) -> torch.Tensor:
    """Unnormalised soft joint histogram of ``(G, V)`` samples -> ``(G, B, B)`` float32.

    ``m`` (``(G, V)`` in {0,1} or None) zeroes the contribution of voxels outside the mask.
    Chunks of ``chunk_size`` total weights rows along V; checkpointed when grads are needed.
    """
    g, v = a.shape
    step = max(1, chunk_size // max(g, 1))
    grad = torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)
    hist = None
    for s in range(0, v, step):
        args = (a[:, s : s + step], b[:, s : s + step], None if m is None else m[:, s : s + step])
        if grad and v > step:
            part = checkpoint(
                chunk_histogram, *args, centres, preterm, min_val, max_val, use_reentrant=False
            )
        else:
            part = chunk_histogram(*args, centres, preterm, min_val, max_val)
        hist = part if hist is None else hist + part
    assert hist is not None
    return hist


def mi_from_joint(
    hist: torch.Tensor, normalized: bool = False, eps: float = 1e-10
) -> torch.Tensor:
    """MI (or NMI) of ``(..., B, B)`` unnormalised joint histograms; 0 for empty ones."""
    hist = hist.float()
    total = hist.sum(dim=(-2, -1), keepdim=True)
    pab = hist / total.clamp_min(eps)
    pa = pab.sum(-1)
    pb = pab.sum(-2)
    papb = pa[..., :, None] * pb[..., None, :]
    mi = (pab * (torch.log(pab + eps) - torch.log(papb + eps))).sum(dim=(-2, -1))
    if not normalized:
        return mi
    ha = -(pa * torch.log(pa + eps)).sum(-1)
    hb = -(pb * torch.log(pb + eps)).sum(-1)
    hab = -(pab * torch.log(pab + eps)).sum(dim=(-2, -1))
    return torch.where(hab > eps, (ha + hb) / hab.clamp_min(eps), torch.zeros_like(hab))


class MutualInformation(nn.Module):
    """Negative global (normalised) mutual information with Parzen windowing.

    Args:
        bins: number of histogram bins (paper baseline: 48).
        sigma_ratio: Gaussian window width in units of the bin spacing (0.5 as VoxelMorph:
            neighbouring bins overlap a little, so the histogram is smooth but sharp).
        min_val, max_val: intensity range of the bins; values outside are clipped.
        normalized: return ``-NMI`` (Studholme) instead of ``-MI``.
        eps: floor inside logarithms and divisions.
        chunk_size: voxels (times batch x channels) per chunk of the joint histogram.

    ``forward(fixed, moved, mask=None)``: images ``(N, C, X, Y, Z)``, each channel of each
    item is a separate histogram; ``mask`` restricts the voxels counted (an empty mask gives a
    zero MI for that item). Returns the mean over items and channels, float32.
    """

    def __init__(
        self,
        bins: int = 48,
        sigma_ratio: float = 0.5,
        min_val: float = 0.0,
        max_val: float = 1.0,
        normalized: bool = False,
        eps: float = 1e-10,
        chunk_size: int = 2**18,
    ) -> None:
        super().__init__()
        if not isinstance(bins, int) or bins < 2:
            raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
        if not sigma_ratio > 0:
            raise ValueError(f"sigma_ratio must be > 0, got {sigma_ratio!r}")
        if not max_val > min_val:
            raise ValueError(f"max_val must be > min_val, got {min_val!r}, {max_val!r}")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        self.bins = bins
        self.sigma_ratio = float(sigma_ratio)
        self.min_val = float(min_val)
        self.max_val = float(max_val)
        self.normalized = bool(normalized)
        self.eps = float(eps)
        self.chunk_size = chunk_size

    def extra_repr(self) -> str:
        return (
            f"bins={self.bins}, sigma_ratio={self.sigma_ratio}, range=({self.min_val}, "
            f"{self.max_val}), normalized={self.normalized}"
        )

    def forward(
        self, fixed: torch.Tensor, moved: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        fixed, moved = check_pair(fixed, moved)
        m = check_mask(mask, fixed)
        n, c = fixed.shape[:2]
        a = fixed.reshape(n * c, -1)
        b = moved.reshape(n * c, -1)
        mm = None if m is None else m.expand(-1, c, -1, -1, -1).reshape(n * c, -1)
        centres, preterm = bin_centres(
            self.bins, self.min_val, self.max_val, self.sigma_ratio, fixed.device
        )
        with full_precision(fixed.device):
            hist = joint_histogram(
                a, b, mm, centres, preterm, self.min_val, self.max_val, self.chunk_size
            )
            mi = mi_from_joint(hist, normalized=self.normalized, eps=self.eps)
        return -mi.mean()
