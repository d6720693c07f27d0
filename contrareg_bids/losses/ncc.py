"""Local (windowed) normalised cross-correlation, as in VoxelMorph.

Within a cubic window around every voxel the squared correlation coefficient
``cov(I, J)^2 / (var(I) var(J))`` is computed from box-filtered moments; the loss is its
negative mean, in [-1, 0]. Used for mono-modal checks and in the autoencoder reconstruction
loss (window 7). Windows are clipped at the volume border (moments over in-volume voxels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_mask, check_pair, full_precision

__all__ = ["LocalNCC"]


class LocalNCC(nn.Module):
    """Negative mean local squared NCC (lower = more similar; ``NCC(x, x) = -1`` on texture).

    Args:
        window: odd edge of the cubic window in voxels (paper's autoencoder loss: 7).
        eps: stabiliser, defined like VoxelMorph's on window *sums* (1e-5); here it enters as
            ``eps / window^6`` on window means, so flat windows score 0 instead of NaN.

    ``forward(fixed, moved, mask=None)``: with a mask, the mean runs over foreground voxels.
    """

    def __init__(self, window: int = 7, eps: float = 1e-5) -> None:
        super().__init__()
        if not isinstance(window, int) or window < 1 or window % 2 == 0:
            raise ValueError(f"window must be a positive odd integer, got {window!r}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        self.window = window
        self.eps = float(eps)

    def extra_repr(self) -> str:
        return f"window={self.window}"

    def forward(
        self, fixed: torch.Tensor, moved: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        fixed, moved = check_pair(fixed, moved)
        m = check_mask(mask, fixed)
        w = self.window
        with full_precision(fixed.device):
            a = fixed.float()
            b = moved.float()
            # five local moments in one pooling call
            stack = torch.cat([a, b, a * a, b * b, a * b], dim=1)
            mom = F.avg_pool3d(stack, w, stride=1, padding=w // 2, count_include_pad=False)
            mu_a, mu_b, aa, bb, ab = mom.chunk(5, dim=1)
            var_a = (aa - mu_a * mu_a).clamp_min(0.0)
            var_b = (bb - mu_b * mu_b).clamp_min(0.0)
            cov = ab - mu_a * mu_b
            cc = cov * cov / (var_a * var_b + self.eps / float(w) ** 6)
            if m is None:
                return -cc.mean()
            return -(cc * m).sum() / (m.sum() * cc.shape[1]).clamp_min(1.0)
