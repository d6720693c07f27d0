"""Classical peers for the benchmark tables: ConvexAdam (MIND features) and FireANTs on arrays.

ConvexAdam (Siebert, Hansen & Heinrich, Learn2Reg; PyPI ``convexadam``, optional extra
``bench``) is a discrete convex search over MIND-SSC displacements followed by Adam
instance optimisation with a diffusion penalty. It is the bar the issue tracker set for
T2w -> T1w registration, next to ANTs SyN (:func:`.sweep.ants_forward_field`).

FireANTs (Jena et al., "FireANTs: Adaptive Riemannian optimization for multi-scale
diffeomorphic registration"; PyPI ``fireants``) is a GPU-first greedy/SyN re-implementation
of ANTs; :func:`fireants_forward_field` runs its ``GreedyRegistration`` on the CPU. It is not
in the ``bench`` extra: every ``fireants`` release pins ``simpleitk==2.2.1`` while this
package needs ``SimpleITK>=2.3``, so pip refuses the pair; install it on its own
(``pip install fireants``, then put SimpleITK back, it runs fine on 2.5).
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ConvexAdamSettings:
    """ConvexAdam's own defaults (``convex_adam_pt``), tuned by its authors at ~1-2 mm."""

    mind_r: int = 1
    mind_d: int = 2
    lambda_weight: float = 1.25
    grid_sp: int = 6
    disp_hw: int = 4
    selected_niter: int = 80
    grid_sp_adam: int = 2


def convexadam_forward_field(
    moving: np.ndarray, fixed: np.ndarray, settings: ConvexAdamSettings | None = None
) -> tuple[np.ndarray, float]:
    """ConvexAdam ``moving -> fixed`` on one grid (CPU, float32).

    Returns the forward field ``(3, X, Y, Z)`` in voxels with this package's convention
    (``moved(x) = moving(x + u(x))``, channel k along array axis k) and the seconds it took.
    """
    try:
        # the module switches every warning off on import: keep that inside this block
        with warnings.catch_warnings():
            from convexAdam.convex_adam_MIND import convex_adam_pt
    except ImportError as err:
        raise ImportError(
            "ConvexAdam is not installed: pip install 'contrareg-bids[bench]' (or convexadam)"
        ) from err
    import torch

    s = settings or ConvexAdamSettings()
    t0 = time.perf_counter()
    with warnings.catch_warnings():  # its grid_sample calls warn about align_corners
        warnings.simplefilter("ignore", UserWarning)
        disp = convex_adam_pt(
            np.ascontiguousarray(fixed, dtype=np.float32),
            np.ascontiguousarray(moving, dtype=np.float32),
            mind_r=s.mind_r,
            mind_d=s.mind_d,
            lambda_weight=s.lambda_weight,
            grid_sp=s.grid_sp,
            disp_hw=s.disp_hw,
            selected_niter=s.selected_niter,
            grid_sp_adam=s.grid_sp_adam,
            ic=True,
            dtype=torch.float32,
            device=torch.device("cpu"),
        )
    seconds = time.perf_counter() - t0
    return np.ascontiguousarray(np.moveaxis(disp, -1, 0), dtype=np.float32), seconds


@dataclass(frozen=True)
class FireANTsSettings:
    """FireANTs' ``GreedyRegistration`` defaults (fireants 1.5.0), compositive warp, Adam.

    ``optimizer_lr``, ``cc_kernel_size``, ``smooth_warp_sigma`` and ``smooth_grad_sigma`` are
    the constructor's own defaults (its docstring says ``cc_kernel_size=3``; the signature,
    which is what runs, says 7). The class has no default schedule; ``scales`` / ``iterations``
    are the ``[4, 2, 1]`` / ``[200, 100, 50]`` of its brain-MRI scripts (LPBA40, MGH10).
    The sigmas are in voxels of the current scale; ``loss`` is ``"cc"`` (LNCC) or ``"mi"``.
    """

    loss: str = "cc"
    scales: tuple[int, ...] = (4, 2, 1)
    iterations: tuple[int, ...] = (200, 100, 50)
    optimizer_lr: float = 0.5
    cc_kernel_size: int = 7
    smooth_warp_sigma: float = 0.5
    smooth_grad_sigma: float = 1.0


def _unit_range(a: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1]: FireANTs' Gaussian-Parzen MI clamps intensities to that range."""
    a = np.asarray(a, dtype=np.float32)
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def fireants_forward_field(
    moving: np.ndarray,
    fixed: np.ndarray,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    settings: FireANTsSettings | None = None,
) -> tuple[np.ndarray, float]:
    """FireANTs ``GreedyRegistration`` ``moving -> fixed`` on one grid (CPU, float32).

    ``moving`` and ``fixed`` share one voxel grid of the given spacing (mm, along array axes
    0, 1, 2). Both are rescaled to [0, 1] first (needed by the MI loss, a no-op for LNCC).
    Returns the forward field ``(3, X, Y, Z)`` in voxels with this package's convention
    (``moved(x) = moving(x + u(x))``, channel k along array axis k) and the seconds it took.
    """
    root = logging.getLogger()
    root_state = (root.level, list(root.handlers))
    try:
        # on import its grid-sample dispatcher prints its backend to stdout,
        # fireants.utils.util calls logging.basicConfig(level=INFO) on the root logger and
        # fireants.utils.imageutils calls the deprecated logger.warn
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from fireants.io.image import BatchedImages, Image
            from fireants.registration.greedy import GreedyRegistration
            from fireants.utils.globals import MIN_IMG_SIZE
    except ImportError as err:
        raise ImportError(
            "FireANTs is not installed: pip install fireants (it pins simpleitk==2.2.1, "
            "reinstall SimpleITK>=2.3 afterwards)"
        ) from err
    finally:
        root.setLevel(root_state[0])
        root.handlers[:] = root_state[1]
    import SimpleITK as sitk
    import torch

    if moving.ndim != 3 or moving.shape != fixed.shape:
        raise ValueError(f"need two 3-D arrays on one grid, got {moving.shape} and {fixed.shape}")
    if min(fixed.shape) < MIN_IMG_SIZE:
        # it never shrinks a level below MIN_IMG_SIZE voxels, and at scale 1 that gives a
        # warp larger than the image and a shape error in the loss
        raise ValueError(f"FireANTs needs at least {MIN_IMG_SIZE} voxels a side: {fixed.shape}")
    s = settings or FireANTsSettings()
    t0 = time.perf_counter()

    def batch(a: np.ndarray) -> BatchedImages:
        # SimpleITK's index (i, j, k) is numpy's [k, j, i]: transpose so its index is ours
        itk = sitk.GetImageFromArray(np.ascontiguousarray(_unit_range(a).T))
        itk.SetSpacing([float(v) for v in spacing])  # identity direction, zero origin
        return BatchedImages([Image(itk, device="cpu", dtype=torch.float32)])

    fixed_b, moving_b = batch(fixed), batch(moving)
    reg = GreedyRegistration(
        scales=list(s.scales),
        iterations=list(s.iterations),
        fixed_images=fixed_b,
        moving_images=moving_b,
        loss_type=s.loss,
        deformation_type="compositive",
        optimizer="Adam",
        optimizer_lr=s.optimizer_lr,
        cc_kernel_size=s.cc_kernel_size,
        smooth_warp_sigma=s.smooth_warp_sigma,
        smooth_grad_sigma=s.smooth_grad_sigma,
        dtype=torch.float32,
        progress_bar=False,
    )
    with warnings.catch_warnings():  # logger.warn again, on every downsampling
        warnings.simplefilter("ignore", DeprecationWarning)
        reg.optimize()
    with torch.no_grad():
        # the sampling grid of ``evaluate``: [1, Z, Y, X, 3] over FireANTs' (reversed) array,
        # grid_sample coordinates in [-1, 1] (align_corners=True), component 0 = sitk i = our
        # axis 0; exact, no resampling of an index image involved
        grid = reg.get_warped_coordinates(fixed_b, moving_b)[0].detach().to(torch.float64)
    seconds = time.perf_counter() - t0
    coords = grid.numpy().transpose(2, 1, 0, 3)  # (X, Y, Z, 3), component k along axis k
    half = (np.asarray(fixed.shape, dtype=np.float64) - 1) / 2
    voxels = (coords + 1) * half  # sampled position in voxels of the moving array
    disp = np.moveaxis(voxels, -1, 0) - np.indices(fixed.shape, dtype=np.float64)
    return np.ascontiguousarray(disp, dtype=np.float32), seconds
