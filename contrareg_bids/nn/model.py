"""The bidirectional, lambda-conditioned ContraReg registration network."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_same_grid, check_volume
from .hypernet import LambdaHypernet
from .integrate import integrate_velocity, warp
from .unet import UNet3D


@dataclass(frozen=True)
class RegNetConfig:
    """Architecture of the registration network; every field is stored in model bundles.

    Defaults follow the paper's ch=64 model: ``ts=5`` squarings, hypernetwork of 4x128.
    ``fixed_lambda`` (used only when ``hypernet`` is False) is recorded for provenance: without
    the hypernetwork the network is trained for that single lambda.

    ``lambda_shrink`` (ours, not the paper's) multiplies the predicted velocity by
    ``1 - lambda``. With the calibrated regulariser (``training/calibration.py``) the optimum
    of a quadratic similarity is exactly ``(1 - lambda) v*``, so the network only has to learn
    ``v*`` (and the FiLM hypernetwork the departures from that line): on the development
    atlas, 500 CPU steps did not teach the FiLM layers alone to stop deforming at lambda = 1
    (std log|J| 0.157 at lambda 0, 0.141 at lambda 1 for MI).
    """

    ch: int = 64
    depth: int = 4
    ts: int = 5
    int_downsize: int = 1
    in_channels: int = 2
    hypernet: bool = True
    hyper_width: int = 128
    hyper_depth: int = 4
    hyper_weight_decay: float = 1e-5
    fixed_lambda: float = 0.1
    lambda_shrink: bool = True
    flow_init_std: float = 1e-5
    leaky_slope: float = 0.2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RegNetConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown RegNetConfig field(s): {sorted(unknown)}")
        return cls(**data)


class RegistrationOutput(NamedTuple):
    """Both directions of one registration, displacements in voxels (``x + u(x)``).

    ``moved`` is the moving image resampled on the fixed grid (uses ``forward_disp``);
    ``fixed_moved`` is the fixed image resampled on the moving grid (uses ``inverse_disp``).
    """

    moved: torch.Tensor
    fixed_moved: torch.Tensor
    forward_disp: torch.Tensor
    inverse_disp: torch.Tensor
    velocity: torch.Tensor


def as_lambda(lam: float | torch.Tensor, batch: int, device, dtype=torch.float32) -> torch.Tensor:
    """Normalise a lambda (scalar, ``(N,)`` or ``(N, 1)``) to a ``(N, 1)`` tensor in [0, 1]."""
    t = torch.as_tensor(lam, dtype=dtype, device=device).reshape(-1, 1)
    if t.shape[0] == 1 and batch > 1:
        t = t.expand(batch, 1)
    if t.shape[0] != batch:
        raise ValueError(f"lam must hold 1 or {batch} values, got {t.shape[0]}")
    if not torch.isfinite(t).all() or (t < 0).any() or (t > 1).any():
        raise ValueError(f"lam must be finite and in [0, 1], got {t.flatten().tolist()}")
    return t


class ContraRegNet(nn.Module):
    """U-Net -> stationary velocity v -> ``exp(v)`` and ``exp(-v)`` by scaling and squaring.

    ``forward(moving, fixed, lam)`` returns a :class:`RegistrationOutput`. The network takes
    ``[moving, fixed]`` stacked on the channel axis, on one grid.
    """

    def __init__(self, config: RegNetConfig | None = None, **overrides):
        super().__init__()
        config = config or RegNetConfig()
        if overrides:
            config = RegNetConfig.from_dict({**config.to_dict(), **overrides})
        self.config = config
        self.unet = UNet3D(config.in_channels, config.ch, config.depth, config.leaky_slope)
        self.flow = nn.Conv3d(config.ch, 3, 3, padding=1)
        nn.init.normal_(self.flow.weight, 0.0, config.flow_init_std)
        nn.init.zeros_(self.flow.bias)
        self.hypernet = (
            LambdaHypernet(
                self.unet.film_channels,
                config.hyper_width,
                config.hyper_depth,
                config.hyper_weight_decay,
            )
            if config.hypernet
            else None
        )

    def param_groups(self, weight_decay: float = 0.0) -> list[dict]:
        """Optimizer parameter groups (the FiLM projections get their own weight decay)."""
        groups = [
            {
                "params": list(self.unet.parameters()) + list(self.flow.parameters()),
                "weight_decay": weight_decay,
            }
        ]
        if self.hypernet is not None:
            groups += self.hypernet.param_groups()
        return groups

    def velocity(
        self, moving: torch.Tensor, fixed: torch.Tensor, lam: float | torch.Tensor | None = None
    ) -> torch.Tensor:
        """Predict the stationary velocity field (voxels of the input grid)."""
        check_volume(moving, "moving")
        check_volume(fixed, "fixed")
        check_same_grid("moving", moving, "fixed", fixed)
        if moving.shape[1] + fixed.shape[1] != self.config.in_channels:
            raise ValueError(
                f"moving and fixed must have {self.config.in_channels} channels together, "
                f"got {moving.shape[1]} + {fixed.shape[1]}"
            )
        x = torch.cat([moving, fixed], dim=1)
        shape = x.shape[2:]
        mult = self.unet.multiple
        pads = []
        for s in reversed(shape):
            pads += [0, (-s) % mult]
        if any(pads):
            x = F.pad(x, pads)
        films = None
        if self.hypernet is not None:
            if lam is None:
                raise ValueError("lam is required: this network is lambda-conditioned")
            lam_t = as_lambda(lam, x.shape[0], x.device)
            films = self.hypernet(lam_t)
        v = self.flow(self.unet(x, films))
        if films is not None and self.config.lambda_shrink:
            v = v * (1.0 - lam_t).to(v.dtype).reshape(-1, 1, 1, 1, 1)
        return v[..., : shape[0], : shape[1], : shape[2]]

    def forward(
        self,
        moving: torch.Tensor,
        fixed: torch.Tensor,
        lam: float | torch.Tensor | None = None,
    ) -> RegistrationOutput:
        v = self.velocity(moving, fixed, lam)
        fwd = integrate_velocity(v, self.config.ts, self.config.int_downsize)
        inv = integrate_velocity(-v, self.config.ts, self.config.int_downsize)
        return RegistrationOutput(warp(moving, fwd), warp(fixed, inv), fwd, inv, v)
