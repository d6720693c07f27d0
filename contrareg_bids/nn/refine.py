"""Instance optimisation: refine the network's velocity field for one pair at test time.

The network predicts ``v`` in one pass; a few gradient steps on that pair's own objective
then recover what amortised inference leaves (Learn2Reg's best entries do this, e.g.
ConvexAdam's Adam stage). The objective is the bundle's own: the same similarity (frozen
autoencoders and the trained heads for CR/mCR), the same calibrated regulariser, at the
lambda the user chose, so lambda keeps its meaning.

Parameterisation: ``v = v_net + up(delta)`` with ``delta`` on a grid ``coarse`` times
coarser, initialised at zero (trilinear upsampling keeps the update smooth; PatchNCE's
sampled gradient is noisy voxel to voxel), optimised with Adam, its learning rate annealed
on a cosine (the same noise makes a constant rate's last iterate jitter).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..losses.patchnce import more_draws
from ..losses.regularizers import gradient_loss
from ..settings import FineSettings, RefineSettings
from .integrate import identity_grid, integrate_velocity, voxel_to_sample_grid, warp
from .model import RegistrationOutput


def _constant_images(objective: torch.nn.Module) -> contextlib.AbstractContextManager:
    """The objective's cache for features of the unwarped images, when it has one."""
    cache = getattr(objective, "constant_images", None)
    return cache() if callable(cache) else contextlib.nullcontext()


def sample_at(src: torch.Tensor, locations: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    """Sample ``src`` (any grid spanning the model grid's extent) at model-voxel
    ``locations`` ``(1, 3, X, Y, Z)``: the corner voxels of both grids coincide."""
    grid = voxel_to_sample_grid(locations)
    return F.grid_sample(src.float(), grid, padding_mode=padding, align_corners=True)


def phase_view(
    fine_moving: torch.Tensor,
    fine_fixed: torch.Tensor,
    fwd: torch.Tensor,
    inv: torch.Tensor,
    v: torch.Tensor,
    offset: torch.Tensor,
) -> tuple[dict[str, torch.Tensor], RegistrationOutput]:
    """The pair and its warps on the model grid shifted by ``offset`` (model voxels), sampled
    from images finer than the model grid.

    The features were learned on images point-sampled at the model spacing; sampling the
    native images at a random sub-voxel phase each step keeps that scale while letting the
    similarity see what lies between the model grid's points.
    """
    pts = identity_grid(fwd.shape[2:], device=fwd.device) + offset.view(1, 3, 1, 1, 1)
    fwd_o = sample_at(fwd, pts, "border")
    inv_o = sample_at(inv, pts, "border")
    batch = {"moving": sample_at(fine_moving, pts), "fixed": sample_at(fine_fixed, pts)}
    out = RegistrationOutput(
        sample_at(fine_moving, pts + fwd_o), sample_at(fine_fixed, pts + inv_o), fwd_o, inv_o, v
    )
    return batch, out


def lr_factor(settings: RefineSettings, step: int) -> float:
    """The learning rate of ``step`` (0-based) as a fraction of ``settings.lr``: 1 for the
    constant schedule; half a cosine from 1 at the first step to nearly 0 at the last for the
    cosine one."""
    if settings.schedule == "constant":
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * step / settings.steps))


def refine_velocity(
    velocity: torch.Tensor,
    moving: torch.Tensor,
    fixed: torch.Tensor,
    objective: torch.nn.Module,
    lam: float,
    ts: int,
    settings: RefineSettings,
    int_downsize: int = 1,
    moving_mask: torch.Tensor | None = None,
    fixed_mask: torch.Tensor | None = None,
    fine_images: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Optimise ``velocity`` ``(1, 3, X, Y, Z)`` for this pair; returns the refined field.

    ``objective`` is a :class:`~contrareg_bids.training.objective.RegistrationObjective`
    (called as ``objective(batch, out, lam, generator)``); its parameters are not changed.
    Masks (``(1, 1, X, Y, Z)``) restrict the similarity like in training; without them the
    image support (> 0) is used. ``fine_images`` (moving, fixed on a finer grid of the same
    extent, e.g. native resolution) make each step see the pair at a random sub-voxel phase
    of the model grid (:func:`phase_view`; masks are then not used).
    """
    if settings.steps == 0:
        return velocity
    v0 = velocity.detach().float()
    shape = v0.shape[2:]
    coarse_shape = [max(2, -(-s // settings.coarse)) for s in shape]
    delta = torch.zeros((1, 3, *coarse_shape), device=v0.device, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=settings.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: lr_factor(settings, i))
    gen = torch.Generator(device=v0.device).manual_seed(settings.seed)
    batch: dict[str, torch.Tensor] = {"moving": moving.float(), "fixed": fixed.float()}
    if moving_mask is not None:
        batch["moving_mask"] = moving_mask.float()
    if fixed_mask is not None:
        batch["fixed_mask"] = fixed_mask.float()
    lam_t = torch.full((1, 1), float(lam), device=v0.device)
    params = list(objective.parameters())
    saved = [p.requires_grad for p in params]
    was_training = objective.training
    objective.train(False)
    try:
        for p in params:
            p.requires_grad_(False)
        cache = contextlib.nullcontext() if fine_images else _constant_images(objective)
        with torch.enable_grad(), cache, more_draws(objective, settings.draws):
            for _ in range(settings.steps):
                up = F.interpolate(delta, size=shape, mode="trilinear", align_corners=True)
                v = v0 + up * settings.coarse  # delta in coarse voxels -> fine voxels
                fwd = integrate_velocity(v, ts, int_downsize)
                inv = integrate_velocity(-v, ts, int_downsize)
                if fine_images:
                    offset = torch.rand(3, generator=gen, device=v0.device) - 0.5
                    step_batch, out = phase_view(*fine_images, fwd, inv, v, offset)
                else:
                    step_batch = batch
                    out = RegistrationOutput(
                        warp(batch["moving"], fwd), warp(batch["fixed"], inv), fwd, inv, v
                    )
                loss = objective(step_batch, out, lam_t, gen)["loss"]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    finally:
        for p, r in zip(params, saved, strict=True):
            p.requires_grad_(r)
        objective.train(was_training)
    with torch.no_grad():
        up = F.interpolate(delta, size=shape, mode="trilinear", align_corners=True)
        return (v0 + up * settings.coarse).detach()


def _grid_scale(src: Sequence[int], dst: Sequence[int], device) -> torch.Tensor:
    """Per-axis factor from voxels of ``src`` to voxels of ``dst`` (same extent, corner
    voxels shared)."""
    return torch.tensor(
        [(d - 1) / max(s - 1, 1) for s, d in zip(src, dst, strict=True)], device=device
    ).view(1, 3, 1, 1, 1)


def _mind_on(img: torch.Tensor, shape: Sequence[int], distance: int) -> torch.Tensor:
    """MIND-SSC of ``img`` at its own resolution, box-smoothed and resampled to ``shape``."""
    from ..losses.mind import mind_ssc

    feat = mind_ssc(img.float(), distance=distance, patch_size=3)
    if tuple(feat.shape[2:]) != tuple(shape):
        feat = F.avg_pool3d(feat, 3, stride=1, padding=1, count_include_pad=False)
        feat = F.interpolate(feat, size=tuple(shape), mode="trilinear", align_corners=True)
    return feat


def _mind_mismatch(
    feat_mov: torch.Tensor, feat_fix: torch.Tensor, fwd: torch.Tensor, inv: torch.Tensor
) -> torch.Tensor:
    """Mean squared descriptor difference, moving onto fixed and fixed onto moving."""
    return 0.5 * (
        (warp(feat_mov, fwd) - feat_fix).pow(2).sum(1).mean()
        + (warp(feat_fix, inv) - feat_mov).pow(2).sum(1).mean()
    )


def refine_fine(
    velocity: torch.Tensor,
    fine_moving: torch.Tensor,
    fine_fixed: torch.Tensor,
    ts: int,
    settings: FineSettings,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimise ``velocity`` (model-grid voxels, ``(1, 3, X, Y, Z)``) on the grid of
    ``fine_moving``/``fine_fixed`` (a finer grid over the same extent); returns the forward
    and inverse displacements ``exp(+-v)`` on the fine grid, in fine voxels."""
    fine_shape = tuple(fine_fixed.shape[2:])
    ctrl = tuple(max(2, -(-(n - 1) // settings.control) + 1) for n in fine_shape)
    dev = velocity.device
    n_full = round(settings.steps * settings.full_resolution) if ctrl != fine_shape else 0
    with torch.no_grad():
        v0 = F.interpolate(velocity.float(), size=ctrl, mode="trilinear", align_corners=True)
        v0 = v0 * _grid_scale(velocity.shape[2:], ctrl, dev)
        feat_mov = _mind_on(fine_moving, ctrl, settings.mind_distance)
        feat_fix = _mind_on(fine_fixed, ctrl, settings.mind_distance)
        if n_full:
            full_mov = _mind_on(fine_moving, fine_shape, settings.mind_distance)
            full_fix = _mind_on(fine_fixed, fine_shape, settings.mind_distance)
    to_fine = _grid_scale(ctrl, fine_shape, dev)

    def on_fine(disp: torch.Tensor) -> torch.Tensor:
        """A control-grid displacement carried onto the fine grid (in fine voxels)."""
        return F.interpolate(disp, size=fine_shape, mode="trilinear", align_corners=True) * to_fine

    delta = torch.zeros_like(v0, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=settings.lr)
    cosine = RefineSettings(steps=max(settings.steps, 1))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: lr_factor(cosine, i))

    def field(d: torch.Tensor) -> torch.Tensor:
        # three box filters: a smooth (B-spline-like) update, as ConvexAdam's Adam stage
        for _ in range(3):
            d = F.avg_pool3d(d, 3, stride=1, padding=1, count_include_pad=False)
        return v0 + d

    with torch.enable_grad():
        for step in range(settings.steps):
            v = field(delta)
            fwd = integrate_velocity(v, ts)
            inv = integrate_velocity(-v, ts)
            if step >= settings.steps - n_full:
                sim = _mind_mismatch(full_mov, full_fix, on_fine(fwd), on_fine(inv))
            else:
                sim = _mind_mismatch(feat_mov, feat_fix, fwd, inv)
            loss = sim + settings.reg * gradient_loss(v)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        v = field(delta)
        return on_fine(integrate_velocity(v, ts)), on_fine(integrate_velocity(-v, ts))
