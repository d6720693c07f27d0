"""Local mutual information over non-overlapping patches (Guo 2019, as in VoxelMorph).

The volume is tiled into ``patch_size^3`` cubes; each cube gets its own Parzen-window joint
histogram (same windowing as :mod:`.mi`) and its own MI, so the loss follows spatially
varying intensity relationships (bias fields, contrast changing across the brain) that a
single global histogram blurs. Volumes are zero-padded to a multiple of the patch size; the
padded voxels (and voxels outside an optional mask) carry no weight. Patches are averaged
with weights equal to their number of counted voxels (all equal without mask or padding), so
border patches with a handful of voxels, whose MI is meaningless, barely count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ._checks import check_mask, check_pair, full_precision
from .mi import MutualInformation, bin_centres, chunk_histogram, mi_from_joint

__all__ = ["LocalMutualInformation"]


def _to_patches(x: torch.Tensor, p: int) -> torch.Tensor:
    """``(G, X, Y, Z)`` (sizes multiples of ``p``) -> ``(G * patches, p^3)``."""
    g, sx, sy, sz = x.shape
    x = x.reshape(g, sx // p, p, sy // p, p, sz // p, p)
    return x.permute(0, 1, 3, 5, 2, 4, 6).reshape(-1, p**3)


class LocalMutualInformation(MutualInformation):
    """Negative patch-wise mutual information, averaged over patches (the global
    :class:`MutualInformation`'s settings and checks, plus the patch size).

    Args:
        bins: histogram bins per patch (paper baseline: 48).
        patch_size: edge of the non-overlapping cubic patches in voxels (paper: 9).
        sigma_ratio, min_val, max_val, eps: as :class:`MutualInformation`.
        normalized: per-patch normalised MI instead of MI.
        chunk_size: voxels per checkpointed chunk of the histograms (memory bound).

    ``forward(fixed, moved, mask=None)`` -> float32 scalar (lower = more similar).
    """

    def __init__(
        self,
        bins: int = 48,
        patch_size: int = 9,
        sigma_ratio: float = 0.5,
        min_val: float = 0.0,
        max_val: float = 1.0,
        normalized: bool = False,
        eps: float = 1e-10,
        chunk_size: int = 2**18,
    ) -> None:
        super().__init__(bins, sigma_ratio, min_val, max_val, normalized, eps, chunk_size)
        if not isinstance(patch_size, int) or patch_size < 2:
            raise ValueError(f"patch_size must be an integer >= 2, got {patch_size!r}")
        self.patch_size = patch_size

    def extra_repr(self) -> str:
        return f"bins={self.bins}, patch_size={self.patch_size}, normalized={self.normalized}"

    def forward(
        self, fixed: torch.Tensor, moved: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        fixed, moved = check_pair(fixed, moved)
        m = check_mask(mask, fixed)
        n, c, *size = fixed.shape
        p = self.patch_size
        pad = [s for d in reversed(size) for s in (0, (-d) % p)]
        a = fixed.reshape(n * c, *size)
        b = moved.reshape(n * c, *size)
        if m is None:
            m = torch.ones((n, 1, *size), device=fixed.device, dtype=torch.float32)
        mm = m.expand(-1, c, -1, -1, -1).reshape(n * c, *size)
        needs_mask = mask is not None or any(pad)
        if any(pad):
            a = F.pad(a, pad)
            b = F.pad(b, pad)
            mm = F.pad(mm, pad)
        a, b, mm = (_to_patches(t, p) for t in (a, b, mm))
        centres, preterm = bin_centres(
            self.bins, self.min_val, self.max_val, self.sigma_ratio, fixed.device
        )
        with full_precision(fixed.device):
            # one histogram per patch: rows = patches, columns = the patch's voxels
            hist = _patch_histograms(a, b, mm if needs_mask else None, centres, preterm, self, p)
            mi = mi_from_joint(hist, normalized=self.normalized, eps=self.eps)
            counts = mm.sum(-1)
            return -(mi * counts).sum() / counts.sum().clamp_min(1.0)


def _patch_histograms(
    a: torch.Tensor,
    b: torch.Tensor,
    m: torch.Tensor | None,
    centres: torch.Tensor,
    preterm: float,
    cfg: LocalMutualInformation,
    p: int,
) -> torch.Tensor:
    """Histograms of ``(P, p^3)`` patch rows, in checkpointed chunks of patches."""
    rows = max(1, cfg.chunk_size // p**3)
    grad = torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)
    parts = []
    for s in range(0, a.shape[0], rows):
        sl = slice(s, s + rows)
        args = (a[sl], b[sl], None if m is None else m[sl], centres, preterm)
        rng = (cfg.min_val, cfg.max_val)
        if grad and a.shape[0] > rows:
            parts.append(checkpoint(chunk_histogram, *args, *rng, use_reentrant=False))
        else:
            parts.append(chunk_histogram(*args, *rng))
    return torch.cat(parts, 0)
