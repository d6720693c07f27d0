"""Input validation shared by the network modules: clear errors naming the argument."""

from __future__ import annotations

import torch


def check_volume(name: str, x: torch.Tensor, channels: int | None = None) -> None:
    """Raise ``ValueError`` unless ``x`` is a finite 5-D tensor ``(N, C, X, Y, Z)``."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 5:
        raise ValueError(
            f"{name} must be a 5-D tensor (N, C, X, Y, Z), got shape {tuple(x.shape)}"
        )
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channel(s), got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")


def check_same_grid(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``a`` and ``b`` share batch size and spatial shape."""
    if a.shape[0] != b.shape[0] or a.shape[2:] != b.shape[2:]:
        raise ValueError(
            f"{name_a} {tuple(a.shape)} and {name_b} {tuple(b.shape)} must share the batch size "
            "and the spatial shape (X, Y, Z)"
        )
