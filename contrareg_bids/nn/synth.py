"""Random smooth velocity fields: training-time deformation augmentation and the reference
deformation of the regulariser calibration (one generator for both)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def gaussian_smooth(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of ``(N, C, X, Y, Z)`` (replicate padding)."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = k.numel()
        pad = [0] * 6
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        x = F.conv3d(
            F.pad(x, pad, mode="replicate"), k.reshape(shape).expand(c, 1, *shape[2:]), groups=c
        )
    return x


def random_velocity(
    shape: Sequence[int],
    sigma: float,
    generator: torch.Generator,
    max_amplitude: float | None = None,
    batch: int = 1,
) -> torch.Tensor:
    """Gaussian-smoothed white noise ``(batch, 3, X, Y, Z)`` on the CPU (the generator's
    device). With ``max_amplitude`` each field is scaled so that its largest component is
    that many voxels (as :func:`contrareg_bids.simulate.simulate_subject` does in NumPy)."""
    noise = torch.randn((batch, 3, *[int(s) for s in shape]), generator=generator)
    v = gaussian_smooth(noise, max(float(sigma), 0.5))
    if max_amplitude is not None:
        peak = v.flatten(1).abs().amax(1).clamp_min(1e-8).reshape(-1, 1, 1, 1, 1)
        v = v / peak * max_amplitude
    return v
