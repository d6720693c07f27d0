"""Run a trained registration network on two volumes already on one grid.

Memory: inference runs under ``torch.inference_mode`` so no activations are kept for
gradients, and label maps are warped one label at a time. At 160x192x160 the peak of the
ch=64 network on CPU is a few GB (``benchmarks/bench_speed.py`` measures it), well inside a
24 GB machine; ``amp=True`` halves activation memory on CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .device import resolve_device
from .integrate import integrate_velocity, warp, warp_labels
from .model import ContraRegNet
from .refine import FineSettings, RefineSettings, refine_fine, refine_velocity


@dataclass
class InferenceResult:
    """Outputs of :func:`register_arrays` as NumPy arrays on the host.

    ``forward_disp`` maps the fixed grid into the moving image (``moved(x) = moving(x +
    u(x))``); ``inverse_disp`` maps the moving grid into the fixed image. Both ``(3, X, Y, Z)``
    in voxels, channel k along array axis k.
    """

    moved: np.ndarray
    fixed_moved: np.ndarray
    forward_disp: np.ndarray
    inverse_disp: np.ndarray
    moved_labels: np.ndarray | None = None
    #: the fields and images are on the grid of ``fine_images`` (the fine stage ran)
    on_fine_grid: bool = False


def _as_volume(name: str, arr) -> torch.Tensor:
    a = np.asarray(arr)
    if a.ndim != 3:
        raise ValueError(f"{name} must be a 3-D array (X, Y, Z), got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {a.dtype}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]


def register_arrays(
    net: ContraRegNet,
    moving: np.ndarray,
    fixed: np.ndarray,
    lam: float | None = None,
    device: str | torch.device | None = "cpu",
    moving_labels: np.ndarray | None = None,
    amp: bool = False,
    refine: RefineSettings | None = None,
    objective: torch.nn.Module | None = None,
    moving_mask: np.ndarray | None = None,
    fixed_mask: np.ndarray | None = None,
    fine_images: tuple[np.ndarray, np.ndarray] | None = None,
    fine: FineSettings | None = None,
) -> InferenceResult:
    """Register ``moving`` to ``fixed`` (same grid) at regularisation weight ``lam``.

    ``lam`` is required for a lambda-conditioned network and ignored otherwise. Optional
    ``moving_labels`` are warped with the forward field (one-hot linear). ``amp`` runs the
    U-Net under autocast (bf16 on CPU, fp16 on CUDA); integration and warping stay float32.
    ``refine`` with ``steps > 0`` optimises the predicted velocity on this pair with
    ``objective`` (the bundle's, :func:`~contrareg_bids.training.objective.objective_from_bundle`)
    at ``lam`` before integrating (:mod:`.refine`); optional brain masks restrict its
    similarity as in training; ``fine_images`` (moving, fixed on a finer grid of the same
    extent) make each refinement step sample the pair at a random sub-voxel phase
    (:func:`~contrareg_bids.nn.refine.phase_view`). ``fine`` with ``steps > 0`` then
    optimises the velocity again on the grid of ``fine_images`` (the model grid's images when
    none are given) with MIND-SSC (:func:`~contrareg_bids.nn.refine.refine_fine`): the fields
    and images returned are then on that grid (``on_fine_grid``).
    """
    mov = _as_volume("moving", moving)
    fix = _as_volume("fixed", fixed)
    if mov.shape != fix.shape:
        raise ValueError(
            f"moving {tuple(mov.shape[2:])} and fixed {tuple(fix.shape[2:])} must share a grid"
        )
    if moving_labels is not None:
        lab = np.asarray(moving_labels)
        if lab.shape != tuple(mov.shape[2:]):
            raise ValueError(f"moving_labels shape {lab.shape} differs from moving")
    if net.hypernet is not None and lam is None:
        raise ValueError("lam is required: this network is lambda-conditioned")
    dev = resolve_device(device)
    was_training = net.training
    net.eval()
    param = next(net.parameters())
    if param.device != dev:
        net.to(dev)
    refining = refine is not None and refine.steps > 0
    fine_stage = fine is not None and fine.steps > 0
    if fine_stage and moving_labels is not None:
        raise ValueError("moving_labels are warped on the model grid: not with the fine stage")
    if refining and objective is None:
        raise ValueError("refine needs the objective to optimise (objective_from_bundle)")
    mov, fix = mov.to(dev), fix.to(dev)
    try:
        with torch.inference_mode():
            amp_dtype = torch.float16 if dev.type == "cuda" else torch.bfloat16
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp):
                v = net.velocity(mov, fix, lam)
            v = v.float()
        fine_t = None
        if fine_images is not None:
            fine_t = tuple(
                _as_volume(name, a).to(dev)
                for name, a in zip(("fine moving", "fine fixed"), fine_images, strict=True)
            )
        if refining:
            masks = [
                None if m is None else _as_volume(name, m).gt(0.5).float().to(dev)
                for name, m in (("moving_mask", moving_mask), ("fixed_mask", fixed_mask))
            ]
            v = refine_velocity(
                v.clone(),
                mov,
                fix,
                objective,
                0.0 if lam is None else float(lam),
                net.config.ts,
                refine,
                net.config.int_downsize,
                *masks,
                fine_images=fine_t,
            )
        if fine_stage:
            fine_mov, fine_fix = fine_t if fine_t is not None else (mov, fix)
            fwd, inv = refine_fine(v.clone(), fine_mov, fine_fix, net.config.ts, fine)
            with torch.inference_mode():
                return InferenceResult(
                    warp(fine_mov, fwd)[0, 0].cpu().numpy(),
                    warp(fine_fix, inv)[0, 0].cpu().numpy(),
                    fwd[0].cpu().numpy(),
                    inv[0].cpu().numpy(),
                    on_fine_grid=fine_t is not None,
                )
        with torch.inference_mode():
            fwd = integrate_velocity(v, net.config.ts, net.config.int_downsize)
            inv = integrate_velocity(-v, net.config.ts, net.config.int_downsize)
            del v
            moved = warp(mov, fwd)
            fixed_moved = warp(fix, inv)
            labels_out = None
            if moving_labels is not None:
                lab_t = torch.from_numpy(np.asarray(moving_labels).astype(np.int64))[None, None]
                labels_out = warp_labels(lab_t.to(dev), fwd, "onehot")[0, 0].cpu().numpy()
            return InferenceResult(
                moved[0, 0].cpu().numpy(),
                fixed_moved[0, 0].cpu().numpy(),
                fwd[0].cpu().numpy(),
                inv[0].cpu().numpy(),
                labels_out,
            )
    finally:
        net.train(was_training)
