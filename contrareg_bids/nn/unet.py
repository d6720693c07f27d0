"""VoxelMorph-style 3-D U-Net with a constant channel width, optionally FiLM-conditioned."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvAct(nn.Module):
    """3x3x3 convolution, optional FiLM modulation, LeakyReLU(0.2)."""

    def __init__(self, in_ch: int, out_ch: int, slope: float = 0.2):
        super().__init__()
        self.conv = nn.Conv3d(in_ch, out_ch, 3, padding=1)
        self.act = nn.LeakyReLU(slope)

    def forward(self, x: torch.Tensor, film: tuple[torch.Tensor, torch.Tensor] | None = None):
        x = self.conv(x)
        if film is not None:
            scale, shift = film
            x = x * scale[:, :, None, None, None].to(x.dtype) + shift[:, :, None, None, None].to(
                x.dtype
            )
        return self.act(x)


class UNet3D(nn.Module):
    """Encoder of ``depth`` max-pool levels and a decoder with skip connections, all ``ch`` wide.

    Returns the ``ch``-channel full-resolution features; the velocity head lives in the
    registration model. ``film_channels`` lists every convolution's width, in call order, for
    the hypernetwork.
    """

    def __init__(self, in_channels: int = 2, ch: int = 64, depth: int = 4, slope: float = 0.2):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.depth = depth
        self.encoder = nn.ModuleList(
            [ConvAct(in_channels, ch, slope)] + [ConvAct(ch, ch, slope) for _ in range(depth)]
        )
        self.decoder = nn.ModuleList(ConvAct(2 * ch, ch, slope) for _ in range(depth))
        self.final = ConvAct(ch, ch, slope)
        self.film_channels: tuple[int, ...] = (ch,) * (2 * depth + 2)
        self.multiple = 2**depth

    def forward(self, x: torch.Tensor, films: list | None = None) -> torch.Tensor:
        films = films if films is not None else [None] * len(self.film_channels)
        it = iter(films)
        skips = []
        h = self.encoder[0](x, next(it))
        for conv in self.encoder[1:]:
            skips.append(h)
            h = conv(F.max_pool3d(h, 2), next(it))
        for conv in self.decoder:
            skip = skips.pop()
            h = F.interpolate(h, size=skip.shape[2:], mode="nearest")
            h = conv(torch.cat([h, skip], dim=1), next(it))
        return self.final(h, next(it))
