"""Modality-specific autoencoder whose intermediate activations feed the contrastive loss.

Architecture per Dey et al., MICCAI 2022 (ContraReg), supplementary Fig. 4: seven
Conv-InstanceNorm-LeakyReLU(0.2) blocks with 32-64-128-64-32-32-32 filters, three strided
down-samplings then three up-samplings, and a final 1-channel convolution. The outputs of the
first six blocks are the multi-scale features sampled by PatchNCE.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_keys, check_volume, float_field, int_field, is_int, list_field

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
        #: ``(stride, offset)`` of each feature layer's cells in image voxels
        self.feature_geometry = block_geometry(blocks)[:n_feature_layers]

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        pads = []
        for s in reversed(x.shape[2:]):
            pads += [0, (-s) % self.multiple]
        return (F.pad(x, pads) if any(pads) else x), tuple(x.shape[2:])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Return ``(reconstruction, [features of the first n_feature_layers blocks])``."""
        check_volume(x, "x", self.in_channels)
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
        check_volume(x, "x", self.in_channels)
        h, _ = self._pad(x)
        feats = []
        for block in self.blocks[: self.n_feature_layers]:
            h = block(h)
            feats.append(h)
        return feats


@dataclass(frozen=True)
class AutoencoderConfig:
    """Architecture of the (per-modality) autoencoders; all modalities share it.

    Stored in model bundles (``io/bundle.py``), which rebuild the modules from it: fields
    read from a file are validated here, with errors naming the field.
    """

    in_channels: int = 1
    blocks: tuple[tuple[int, int], ...] = DEFAULT_BLOCKS
    n_feature_layers: int = 6
    slope: float = 0.2

    def __post_init__(self) -> None:
        blocks = []
        for i, b in enumerate(list_field("autoencoder.blocks", self.blocks)):
            filters, resample = list_field(f"autoencoder.blocks[{i}]", b, 2)
            int_field(f"autoencoder.blocks[{i}] filters", filters, 1)
            if resample not in (-1, 0, 1) or not is_int(resample):
                raise ValueError(
                    f"autoencoder.blocks[{i}] resampling must be -1, 0 or 1, got {resample!r}"
                )
            blocks.append((int(filters), int(resample)))
        if not blocks:
            raise ValueError("autoencoder.blocks must list at least one block")
        object.__setattr__(self, "blocks", tuple(blocks))
        int_field("autoencoder.in_channels", self.in_channels, 1)
        n = int_field("autoencoder.n_feature_layers", self.n_feature_layers, 1)
        if n > len(blocks):
            raise ValueError(f"autoencoder.n_feature_layers must be <= {len(blocks)}, got {n}")
        object.__setattr__(self, "slope", float_field("autoencoder.slope", self.slope))

    @property
    def feature_channels(self) -> tuple[int, ...]:
        return tuple(f for f, _ in self.blocks[: self.n_feature_layers])

    def build(self) -> Autoencoder:
        return Autoencoder(self.in_channels, self.blocks, self.n_feature_layers, self.slope)

    @classmethod
    def from_module(cls, ae: Autoencoder) -> AutoencoderConfig:
        blocks = []
        for b in ae.blocks:
            resample = 1 if b.upsample else (-1 if b.conv.stride[0] == 2 else 0)
            blocks.append((b.conv.out_channels, resample))
        slope = float(ae.blocks[0].act.negative_slope) if len(ae.blocks) else 0.2
        return cls(ae.in_channels, tuple(blocks), ae.n_feature_layers, slope)

    def to_dict(self) -> dict:
        return {
            "in_channels": self.in_channels,
            "blocks": [list(b) for b in self.blocks],
            "n_feature_layers": self.n_feature_layers,
            "slope": self.slope,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> AutoencoderConfig:
        d = check_keys(
            "autoencoder", data, {"in_channels", "blocks", "n_feature_layers"}, {"slope"}
        )
        return cls(**d)


def block_geometry(blocks: Sequence[tuple[int, int]]) -> tuple[tuple[float, float], ...]:
    """Where each block's cells sit in the image: ``(stride, offset)`` per block, cell ``j``
    centred on image voxel ``stride * j + offset`` (along every axis).

    A 3x3x3 stride-2 convolution with padding 1 centres output ``i`` on input ``2 i``; a x2
    trilinear upsampling (``align_corners=False``) puts output ``j`` at input ``j / 2 - 0.25``.
    So the coarse layers are *not* the blocks ``[f i, f (i + 1))`` one would assume: at the
    default blocks the centres lie 0.4 to 1.75 cells before them (an impulse test in
    ``tests/nn/test_network.py`` checks these numbers on the real module).
    """
    stride, offset, out = 1.0, 0.0, []
    for _, resample in blocks:
        if resample < 0:
            stride *= 2.0
        elif resample > 0:
            offset -= stride / 4.0
            stride /= 2.0
        out.append((stride, offset))
    return tuple(out)


def dilate_box(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Max over the ``(2 radius + 1)^3`` box around each voxel of ``(N, C, X, Y, Z)``.

    One 1-D max pool per axis: the same result as a cubic ``max_pool3d``, 10x faster at the
    radii of the coarse PatchNCE layers (the refinement maps its masks every step)."""
    for axis in range(3) if radius > 0 else ():
        kernel, padding = [1, 1, 1], [0, 0, 0]
        kernel[axis], padding[axis] = 2 * radius + 1, radius
        mask = F.max_pool3d(mask, tuple(kernel), stride=1, padding=tuple(padding))
    return mask


def mask_to_feature_grid(
    mask: torch.Tensor, feature_shape: Sequence[int], stride: float = 1.0, offset: float = 0.0
) -> torch.Tensor:
    """A foreground mask ``(N, 1, X, Y, Z)`` on a feature map's grid, with the real geometry.

    Cell ``j`` (centred on image voxel ``stride * j + offset``, :func:`block_geometry`) is
    foreground when any image voxel within ``ceil(stride / 2)`` of its centre is: thin
    structures survive at coarse layers, and a cell whose centre falls outside the image (the
    autoencoder's padding, the border shift of the upsampled layers) is background.
    Returns float32 {0, 1} ``(N, 1, *feature_shape)``.
    """
    m = dilate_box(
        (mask.detach().float() > 0.5).float(), math.ceil(stride / 2.0) if stride > 1 else 0
    )
    out = m
    for axis, n in enumerate(feature_shape):
        centres = torch.round(stride * torch.arange(int(n), dtype=torch.float64) + offset).long()
        size = m.shape[2 + axis]
        inside = (centres >= 0) & (centres < size)
        out = out.index_select(2 + axis, centres.clamp(0, size - 1).to(m.device))
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = int(n)
        out = out * inside.to(m.device, m.dtype).reshape(shape)
    return out
