"""Spatial transformer and scaling-and-squaring integration of stationary velocity fields.

Conventions (docs/conventions.md): tensors are ``(N, C, X, Y, Z)`` in the voxel order of a RAS
image; a displacement ``u`` is in voxels of its own grid, channel ``k`` along array axis ``k``;
warping samples ``src`` at ``x + u(x)`` (the ITK "fixed -> moving" direction). The conversion
to ``torch.nn.functional.grid_sample`` coordinates happens in :func:`voxel_to_sample_grid`
only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ._checks import check_same_grid, check_volume


def identity_grid(shape: Sequence[int], device=None, dtype=torch.float32) -> torch.Tensor:
    """Voxel coordinates ``(1, 3, X, Y, Z)``: channel k holds the index along axis k."""
    axes = [torch.arange(s, device=device, dtype=dtype) for s in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))[None]


def voxel_to_sample_grid(locations: torch.Tensor) -> torch.Tensor:
    """Voxel locations ``(N, 3, X, Y, Z)`` -> ``grid_sample`` grid ``(N, X, Y, Z, 3)``.

    ``grid_sample`` (with ``align_corners=True``) wants coordinates normalised to [-1, 1]
    with the LAST array axis first, so the channels are rescaled and reversed.
    """
    shape = locations.shape[2:]
    scale = torch.tensor(
        [2.0 / max(s - 1, 1) for s in shape], device=locations.device, dtype=locations.dtype
    )
    norm = locations * scale.view(1, 3, 1, 1, 1) - 1.0
    return norm.permute(0, 2, 3, 4, 1).flip(-1)


def warp(
    src: torch.Tensor,
    disp: torch.Tensor,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Sample ``src`` at ``x + disp(x)``; computed in float32 whatever the autocast state.

    ``mode`` is ``"bilinear"`` (trilinear in 3-D) or ``"nearest"``; ``padding_mode`` is one of
    ``grid_sample``'s (``"zeros"`` for images, ``"border"`` for composing fields).
    """
    if src.shape[0] != disp.shape[0] and src.shape[0] != 1:
        raise ValueError(f"src batch {src.shape[0]} does not match disp batch {disp.shape[0]}")
    if src.shape[2:] != disp.shape[2:]:
        raise ValueError(
            f"src {tuple(src.shape)} and disp {tuple(disp.shape)} must share the spatial shape"
        )
    if disp.shape[1] != 3:
        raise ValueError(f"disp must have 3 channels, got shape {tuple(disp.shape)}")
    with torch.autocast(device_type=src.device.type, enabled=False):
        out_dtype = src.dtype
        disp = disp.float()
        loc = identity_grid(disp.shape[2:], device=disp.device) + disp
        grid = voxel_to_sample_grid(loc)
        srcf = src.float()
        if srcf.shape[0] != grid.shape[0]:
            srcf = srcf.expand(grid.shape[0], *srcf.shape[1:])
        out = F.grid_sample(srcf, grid, mode=mode, padding_mode=padding_mode, align_corners=True)
    return out if out_dtype == torch.float64 else out.to(out_dtype)


def warp_labels(labels: torch.Tensor, disp: torch.Tensor, method: str = "nearest") -> torch.Tensor:
    """Warp an integer label map ``(N, 1, X, Y, Z)``.

    ``"nearest"`` picks the nearest voxel; ``"onehot"`` warps each label's indicator linearly
    and takes the arg-max, which gives smoother boundaries under sub-voxel shifts.
    """
    if method == "nearest":
        return warp(labels.float(), disp, mode="nearest").round().to(labels.dtype)
    if method != "onehot":
        raise ValueError(f"method must be 'nearest' or 'onehot', got {method!r}")
    values = torch.unique(labels)
    out_score = None
    out = torch.zeros_like(labels)
    for value in values:  # one label at a time keeps memory at two volumes
        score = warp((labels == value).float(), disp)
        if out_score is None:
            out_score = score
            out = torch.full_like(labels, value)
        else:
            better = score > out_score
            out = torch.where(better, value.to(labels.dtype), out)
            out_score = torch.maximum(out_score, score)
    return out


def resize_field(disp: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Resample a displacement field onto a grid of ``shape`` spanning the same extent.

    Voxel units change with the grid, so channel k is scaled by ``(n_new - 1) / (n_old - 1)``
    (the ``align_corners=True`` correspondence of corner voxels); exact for affine fields.
    """
    shape = tuple(int(s) for s in shape)
    old = disp.shape[2:]
    if tuple(old) == shape:
        return disp
    factors = torch.tensor(
        [(n - 1) / max(o - 1, 1) for n, o in zip(shape, old, strict=True)],
        device=disp.device,
        dtype=disp.dtype,
    )
    out = F.interpolate(disp, size=shape, mode="trilinear", align_corners=True)
    return out * factors.view(1, 3, 1, 1, 1)


def integrate_velocity(velocity: torch.Tensor, steps: int, downsize: int = 1) -> torch.Tensor:
    """Displacement of ``phi = exp(v)`` by scaling and squaring with ``steps`` squarings.

    ``v`` is scaled by ``2**-steps`` and the map composed with itself ``steps`` times:
    ``u <- u + u o (id + u)``. With ``downsize=2`` the integration runs on a half-resolution
    grid (VoxelMorph's ``int_downsize``) and the result is resampled back.
    """
    check_volume(velocity, "velocity", 3)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if downsize not in (1, 2):
        raise ValueError(f"downsize must be 1 or 2, got {downsize}")
    with torch.autocast(device_type=velocity.device.type, enabled=False):
        full_shape = velocity.shape[2:]
        v = velocity.float()
        if downsize > 1:
            v = resize_field(v, [max((s + 1) // downsize, 2) for s in full_shape])
        disp = v * (1.0 / 2**steps)
        for _ in range(steps):
            disp = disp + warp(disp, disp, padding_mode="border")
        if downsize > 1:
            disp = resize_field(disp, full_shape)
    return disp


def compose(disp_a: torch.Tensor, disp_b: torch.Tensor) -> torch.Tensor:
    """Displacement of ``phi_a o phi_b`` (apply b first, then look up a): ``b + a o (id + b)``."""
    check_same_grid("disp_a", disp_a, "disp_b", disp_b)
    return disp_b + warp(disp_a, disp_b, padding_mode="border")
