"""Classical peers for the benchmark tables: ConvexAdam (MIND features) on arrays.

ConvexAdam (Siebert, Hansen & Heinrich, Learn2Reg; PyPI ``convexadam``, optional extra
``bench``) is a discrete convex search over MIND-SSC displacements followed by Adam
instance optimisation with a diffusion penalty. It is the bar the issue tracker set for
T2w -> T1w registration, next to ANTs SyN (:func:`.sweep.ants_forward_field`).
"""

from __future__ import annotations

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
