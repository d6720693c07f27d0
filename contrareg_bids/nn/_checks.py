"""Validation shared by the network modules and their configs: clear errors naming the
argument or field."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

_CHECK_FINITE = True


def set_finite_checks(enabled: bool) -> None:
    """Switch the NaN/Inf checks of :func:`check_finite` on or off globally.

    The check costs one reduction and, on CUDA, one host-device synchronisation per input; a
    training loop that has already validated its data may turn it off.
    """
    global _CHECK_FINITE
    _CHECK_FINITE = bool(enabled)


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def check_finite(x: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or Inf (unless checks are switched off)."""
    if _CHECK_FINITE and not bool(torch.isfinite(x.detach()).all()):
        raise ValueError(f"{name} contains NaN or Inf values")


def check_volume(
    x: object, name: str, channels: int | None = None, finite: bool = True
) -> torch.Tensor:
    """Validate a non-empty ``(N, C, X, Y, Z)`` floating tensor (``channels`` channels, finite
    values); return it. The one tensor check of the network modules and the losses."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 5:
        raise ValueError(f"{name} must be a 5-D tensor (N, C, X, Y, Z), got shape {_shape(x)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {_shape(x)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channel(s), got shape {_shape(x)}")
    if finite:
        check_finite(x, name)
    return x


def check_same_grid(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``a`` and ``b`` share batch size and spatial shape."""
    if a.shape[0] != b.shape[0] or a.shape[2:] != b.shape[2:]:
        raise ValueError(
            f"{name_a} {tuple(a.shape)} and {name_b} {tuple(b.shape)} must share the batch size "
            "and the spatial shape (X, Y, Z)"
        )


# ---------------------------------------------------------------- configuration fields
# Validators of the architecture configs (nn/autoencoder.py, nn/heads.py) and of the
# bundle metadata (io/bundle.py): the metadata is read from files, so a bad value must
# raise a ValueError naming the field, never build a broken module.


def is_int(v: Any) -> bool:
    """An int that is not a bool (JSON ``true`` must not pass as 1)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def int_field(name: str, v: Any, lo: int | None = None) -> int:
    """``v`` as an int (``>= lo`` when given), else ``ValueError`` naming ``name``."""
    if not is_int(v) or (lo is not None and v < lo):
        cond = f" >= {lo}" if lo is not None else ""
        raise ValueError(f"{name} must be an integer{cond}, got {v!r}")
    return int(v)


def float_field(name: str, v: Any) -> float:
    """``v`` as a finite float, else ``ValueError`` naming ``name``."""
    if not is_number(v):
        raise ValueError(f"{name} must be a finite number, got {v!r}")
    return float(v)


def list_field(name: str, v: Any, n: int | None = None) -> list:
    """``v`` (a list or tuple, of ``n`` items when given) as a list."""
    if not isinstance(v, list | tuple) or (n is not None and len(v) != n):
        what = f"a list of {n} values" if n is not None else "a list"
        raise ValueError(f"{name} must be {what}, got {v!r}")
    return list(v)


def check_keys(name: str, data: Any, required: set[str], optional: set[str]) -> dict:
    """``data`` as a dict, refusing missing required and unknown keys (newer files)."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{name} must be a JSON object, got {type(data).__name__}")
    missing = sorted(required - set(data))
    if missing:
        raise ValueError(f"{name}: missing required field(s) {missing}")
    unknown = sorted(set(data) - required - optional)
    if unknown:
        raise ValueError(
            f"{name}: unknown field(s) {unknown} (written by a newer contrareg-bids?)"
        )
    return dict(data)
