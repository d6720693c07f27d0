"""Small shared input validation and numerics helpers for the losses (torch only)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

# the tensor checks live with the network modules (the lower layer); the losses use them
from ..nn._checks import _shape, check_finite, check_volume, set_finite_checks  # noqa: F401


def check_same_shape(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_b} must have the same shape as {name_a}: {_shape(b)} != {_shape(a)}"
        )


def check_pair(
    fixed: object, moved: object, names: tuple[str, str] = ("fixed", "moved")
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate two images of identical shape ``(N, C, X, Y, Z)``."""
    fixed = check_volume(fixed, names[0])
    moved = check_volume(moved, names[1])
    check_same_shape(fixed, moved, *names)
    return fixed, moved


def check_mask(
    mask: object, ref: torch.Tensor, name: str = "mask", ref_name: str = "fixed"
) -> torch.Tensor | None:
    """Validate an optional ``(N or 1, 1, X, Y, Z)`` mask on the grid of ``ref``.

    Returns a float32 mask broadcast to ``ref``'s batch size (values > 0.5 are foreground), or
    None when ``mask`` is None.
    """
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or None, got {type(mask).__name__}")
    if mask.dim() != 5:
        raise ValueError(f"{name} must be a 5-D tensor (N, 1, X, Y, Z), got shape {_shape(mask)}")
    if mask.shape[1] != 1:
        raise ValueError(f"{name} must have 1 channel, got shape {_shape(mask)}")
    if mask.shape[2:] != ref.shape[2:]:
        raise ValueError(
            f"{name} spatial shape {tuple(mask.shape[2:])} does not match {ref_name} "
            f"{tuple(ref.shape[2:])}"
        )
    if mask.shape[0] not in (1, ref.shape[0]):
        raise ValueError(
            f"{name} batch size {mask.shape[0]} must be 1 or match {ref_name} ({ref.shape[0]})"
        )
    if mask.is_floating_point():
        check_finite(mask, name)
    m = (mask.detach().float() > 0.5).float()
    return m.expand(ref.shape[0], -1, -1, -1, -1)


@contextlib.contextmanager
def full_precision(device: torch.device) -> Iterator[None]:
    """Disable autocast on ``device`` so the enclosed maths runs in the inputs' dtype.

    Callers cast to float32 themselves; this only stops autocast from casting matmuls and
    convolutions back down to bf16/fp16.
    """
    try:
        ctx = torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # device type without autocast support
        ctx = contextlib.nullcontext()
    with ctx:
        yield
