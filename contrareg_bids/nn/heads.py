"""Projection heads of the contrastive similarity (ContraReg, Dey et al., MICCAI 2022).

One small ReLU MLP per autoencoder feature layer and per modality maps a ``C_k``-channel
feature vector onto the unit hypersphere of a shared ``width``-dimensional embedding, where
the PatchNCE loss compares the two modalities by dot products.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_keys, int_field, list_field

__all__ = ["HeadsConfig", "ProjectionHead", "ProjectionHeads"]


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


@dataclass(frozen=True)
class HeadsConfig:
    """Architecture of the projection heads (one MLP per autoencoder feature layer).

    Stored in model bundles (``io/bundle.py``) that keep the heads (to resume training).
    """

    channels: tuple[int, ...]
    width: int = 256
    depth: int = 3

    def __post_init__(self) -> None:
        ch = list_field("heads.channels", self.channels)
        if not ch:
            raise ValueError("heads.channels must list at least one feature layer")
        ch = tuple(int_field(f"heads.channels[{i}]", c, 1) for i, c in enumerate(ch))
        object.__setattr__(self, "channels", ch)
        int_field("heads.width", self.width, 1)
        int_field("heads.depth", self.depth, 1)

    def build(self) -> ProjectionHeads:
        return ProjectionHeads(self.channels, width=self.width, depth=self.depth)

    @classmethod
    def from_module(cls, heads: ProjectionHeads) -> HeadsConfig:
        depth = getattr(heads, "depth", None)
        if depth is None:  # count the linear layers of the first head
            depth = sum(isinstance(m, nn.Linear) for m in heads[0].modules())
        channels = getattr(heads, "channels", None) or tuple(h.in_channels for h in heads)
        return cls(tuple(channels), int(heads.width), int(depth))

    def to_dict(self) -> dict:
        return {"channels": list(self.channels), "width": self.width, "depth": self.depth}

    @classmethod
    def from_dict(cls, data: Mapping) -> HeadsConfig:
        return cls(**check_keys("heads", data, {"channels", "width", "depth"}, set()))
