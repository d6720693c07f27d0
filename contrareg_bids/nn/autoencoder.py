"""Modality-specific autoencoder whose intermediate activations feed the contrastive loss.

Architecture per Dey et al., MICCAI 2022 (ContraReg), supplementary Fig. 4: seven
Conv-InstanceNorm-LeakyReLU(0.2) blocks with 32-64-128-64-32-32-32 filters, three strided
down-samplings then three up-samplings, and a final 1-channel convolution. The outputs of the
first six blocks are the multi-scale features sampled by PatchNCE.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_volume

#: (filters, resampling) of the seven blocks: -1 = stride-2 down, +1 = x2 up, 0 = same grid.
DEFAULT_BLOCKS: tuple[tuple[int, int], ...] = (
    (32, 0),
    (64, -1),
    (128, -1),
    (64, -1),
    (32, 1),
    (32, 1),
    (32, 1),
)


class ConvNormAct(nn.Module):
    """3x3x3 convolution, InstanceNorm, LeakyReLU(0.2); optional stride-2 or x2 upsampling."""

    def __init__(self, in_ch: int, out_ch: int, resample: int = 0, slope: float = 0.2):
        super().__init__()
        self.upsample = resample > 0
        stride = 2 if resample < 0 else 1
        self.conv = nn.Conv3d(in_ch, out_ch, 3, stride=stride, padding=1)
        self.norm = nn.InstanceNorm3d(out_ch, affine=True)
        self.act = nn.LeakyReLU(slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)
        return self.act(self.norm(self.conv(x)))


class Autoencoder(nn.Module):
    """Single-modality convolutional autoencoder returning its reconstruction and features.

    Inputs whose sides are not multiples of 8 are padded internally and the reconstruction is
    cropped back, so any grid works; feature maps keep the padded (coarser) grids.
    """

    def __init__(
        self,
        in_channels: int = 1,
        blocks: Sequence[tuple[int, int]] = DEFAULT_BLOCKS,
        n_feature_layers: int = 6,
        slope: float = 0.2,
    ):
        super().__init__()
        if not 1 <= n_feature_layers <= len(blocks):
            raise ValueError(f"n_feature_layers must be in [1, {len(blocks)}]")
        self.in_channels = in_channels
        layers, ch = [], in_channels
        for filters, resample in blocks:
            layers.append(ConvNormAct(ch, filters, resample, slope))
            ch = filters
        self.blocks = nn.ModuleList(layers)
        self.out = nn.Conv3d(ch, in_channels, 3, padding=1)
        self.n_feature_layers = n_feature_layers
        self.feature_channels: tuple[int, ...] = tuple(f for f, _ in blocks[:n_feature_layers])
        downs = sum(1 for _, r in blocks if r < 0)
        self.multiple = 2**downs

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        pads = []
        for s in reversed(x.shape[2:]):
            pads += [0, (-s) % self.multiple]
        return (F.pad(x, pads) if any(pads) else x), tuple(x.shape[2:])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Return ``(reconstruction, [features of the first n_feature_layers blocks])``."""
        check_volume("x", x, self.in_channels)
        h, shape = self._pad(x)
        feats = []
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i < self.n_feature_layers:
                feats.append(h)
        recon = self.out(h)[..., : shape[0], : shape[1], : shape[2]]
        return recon, feats

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Only the features: stops after the last feature block (saves time and memory)."""
        check_volume("x", x, self.in_channels)
        h, _ = self._pad(x)
        feats = []
        for block in self.blocks[: self.n_feature_layers]:
            h = block(h)
            feats.append(h)
        return feats


def mask_to_feature_grid(mask: torch.Tensor, feature_shape: Sequence[int], multiple: int = 8):
    """Resize a foreground mask ``(N, 1, X, Y, Z)`` onto a feature map's grid.

    The autoencoder pads its input at the END of each axis up to a multiple of ``multiple``
    before the first block, so feature voxel ``i`` of a map ``f`` times coarser covers image
    voxels ``[i*f, (i+1)*f)``. The mask is padded the same way, then max-pooled by ``f``: a
    feature voxel counts as foreground when any voxel under it is (thin structures survive).
    """
    pads = []
    for s in reversed(mask.shape[2:]):
        pads += [0, (-s) % multiple]
    m = F.pad(mask.float(), pads) if any(pads) else mask.float()
    factors = [ps // fs for ps, fs in zip(m.shape[2:], feature_shape, strict=True)]
    if any(f < 1 for f in factors):
        raise ValueError(
            f"feature_shape {tuple(feature_shape)} is finer than mask {tuple(m.shape)}"
        )
    if all(f == 1 for f in factors):
        return m[..., : feature_shape[0], : feature_shape[1], : feature_shape[2]]
    return F.max_pool3d(m, kernel_size=factors, stride=factors)
