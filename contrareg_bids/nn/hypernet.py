"""Lambda-conditioning hypernetwork (FiLM), so one network covers every regularisation weight.

A small ReLU MLP maps lambda to a shared embedding; one linear projection per convolution of
the registration U-Net turns ``[embedding, lambda]`` into that layer's per-channel scale and
shift (FiLM, Perez et al. 2018), following the conditional registration set-up that ContraReg
(Dey et al., MICCAI 2022) uses to sweep lambda. Projections carry their own weight decay
(1e-5 in the paper): use :meth:`LambdaHypernet.param_groups`.

Initialisation: the projections start *small but not zero*. With zero weights the embedding
MLP receives exactly zero gradient and only the projection biases (which do not depend on
lambda) move at first, so a short run never learns the conditioning. HyperMorph (Hoopes et
al. 2021) gives its hyper-layers Keras' Glorot init and feeds lambda itself; here the
projections are Glorot-scaled by ``init_gain`` (FiLM scale ``1 + O(init_gain)`` at the start,
so the U-Net begins near its unconditioned behaviour) and lambda is also fed to them directly,
so every FiLM output has a lambda-linear path that is trained from the first step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class LambdaHypernet(nn.Module):
    """lambda ``(N, 1)`` -> per-layer ``(scale, shift)`` pairs, each ``(N, C_l)``."""

    def __init__(
        self,
        layer_channels: Sequence[int],
        width: int = 128,
        depth: int = 4,
        projection_weight_decay: float = 1e-5,
        init_gain: float = 0.1,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        in_features = 1
        for _ in range(depth):
            layers += [nn.Linear(in_features, width), nn.ReLU()]
            in_features = width
        self.embed = nn.Sequential(*layers)
        # projections see [embedding, lambda]: lambda keeps a direct, always-trained path
        self.projections = nn.ModuleList(nn.Linear(width + 1, 2 * c) for c in layer_channels)
        for proj in self.projections:
            nn.init.xavier_uniform_(proj.weight, gain=init_gain)
            nn.init.zeros_(proj.bias)
        self.layer_channels = tuple(int(c) for c in layer_channels)
        self.projection_weight_decay = projection_weight_decay

    def forward(self, lam: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        emb = torch.cat([self.embed(lam), lam], dim=1)
        out = []
        for proj, c in zip(self.projections, self.layer_channels, strict=True):
            gamma, beta = proj(emb).split(c, dim=1)
            out.append((1.0 + gamma, beta))
        return out

    def param_groups(self) -> list[dict]:
        """Optimizer groups: the FiLM projections with their weight decay, the MLP without."""
        return [
            {"params": list(self.embed.parameters()), "weight_decay": 0.0},
            {
                "params": list(self.projections.parameters()),
                "weight_decay": self.projection_weight_decay,
            },
        ]
