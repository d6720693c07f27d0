"""Projection heads of the contrastive similarity (ContraReg, Dey et al., MICCAI 2022).

One small ReLU MLP per autoencoder feature layer and per modality maps a ``C_k``-channel
feature vector onto the unit hypersphere of a shared ``width``-dimensional embedding, where
the PatchNCE loss compares the two modalities by dot products.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ProjectionHead", "ProjectionHeads"]


class ProjectionHead(nn.Module):
    """MLP ``Linear-ReLU-...-Linear`` applied to the last axis, output L2-normalised.

    Args:
        in_channels: feature channels ``C_k`` of the layer it projects.
        width: hidden and output width (paper: 256).
        depth: number of linear layers (paper: 3).
        eps: floor of the norm in the normalisation, so a zero vector stays finite.
    """

    def __init__(
        self, in_channels: int, width: int = 256, depth: int = 3, eps: float = 1e-12
    ) -> None:
        super().__init__()
        for arg, val in (("in_channels", in_channels), ("width", width), ("depth", depth)):
            if not isinstance(val, int) or isinstance(val, bool) or val < 1:
                raise ValueError(f"{arg} must be a positive integer, got {val!r}")
        self.in_channels = in_channels
        self.width = width
        self.eps = eps
        layers: list[nn.Module] = []
        c = in_channels
        for i in range(depth):
            layers.append(nn.Linear(c, width))
            if i < depth - 1:
                layers.append(nn.ReLU(inplace=True))
            c = width
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project ``(..., C)`` vectors to unit-norm ``(..., width)`` float32 vectors."""
        if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[-1] != self.in_channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must end with {self.in_channels} channels, got {shape}")
        y = self.mlp(x)
        # normalise in float32: bf16 norms are too coarse for dot products divided by tau
        return F.normalize(y.float(), dim=-1, eps=self.eps)

    def forward_map(self, feat: torch.Tensor) -> torch.Tensor:
        """Project every location of a ``(N, C, *spatial)`` map: ``(N, width, *spatial)``."""
        if feat.dim() < 3 or feat.shape[1] != self.in_channels:
            raise ValueError(
                f"feat must be (N, {self.in_channels}, ...), got shape {tuple(feat.shape)}"
            )
        return self(feat.movedim(1, -1)).movedim(-1, 1)


class ProjectionHeads(nn.ModuleList):
    """One :class:`ProjectionHead` per feature layer, built eagerly from channel counts.

    Args:
        channels: channels of each feature layer, e.g. the autoencoder's
            ``feature_channels`` ``(32, 64, 128, 64, 32, 32)``.
        width, depth: see :class:`ProjectionHead`.
    """

    def __init__(self, channels: Sequence[int], width: int = 256, depth: int = 3) -> None:
        channels = tuple(channels)
        if not channels:
            raise ValueError("channels must list at least one feature layer")
        super().__init__(ProjectionHead(int(c), width=width, depth=depth) for c in channels)
        self.channels = tuple(int(c) for c in channels)
        self.width = width

    def project(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """Project sampled features ``(N, P, C_layer)`` -> unit-norm ``(N, P, width)``."""
        if not 0 <= layer < len(self):
            raise ValueError(f"layer must be in [0, {len(self)}), got {layer}")
        if x.dim() != 3:
            raise ValueError(f"x must be a 3-D tensor (N, P, C), got shape {tuple(x.shape)}")
        return self[layer](x)

    def forward(self, samples: Sequence[torch.Tensor]) -> list[torch.Tensor]:  # type: ignore[override]
        """Project one ``(N, P_k, C_k)`` tensor per layer."""
        if len(samples) != len(self):
            raise ValueError(f"samples must have {len(self)} entries, got {len(samples)}")
        return [self.project(k, s) for k, s in enumerate(samples)]
