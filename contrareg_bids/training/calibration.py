"""Calibrate the regulariser's weight so that lambda spans the whole trade-off.

The objective is ``(1 - lambda) * alpha * L_sim + lambda * s * L_reg``. The paper leaves the
normalisation of both terms open; with a voxel-mean diffusion penalty and PatchNCE summed
over six layers the gradient of ``L_sim`` is ~10^3 times that of ``L_reg`` at a realistic
warp, so the terms balance only at lambda ~ 0.999 and the hypernetwork has almost nothing to
learn. HyperMorph (Hoopes et al. 2021) scales its image term for the same reason
(``1 / sigma^2``).

``s`` is the ratio of the two gradient norms with respect to the velocity field at a
*reference deformation*: a random smooth stationary velocity (Gaussian-smoothed noise,
``sigma = min(grid) / 16`` voxels) scaled so that std log|J| of its exponential is 0.15 (a
realistic inter-subject warp; the paper's optimal models sit at 0.08-0.09). With that ``s``
the two terms pull equally hard at lambda = 0.5; at the paper's optimal lambdas (0.05-0.3)
the similarity dominates by 2-20x, and lambda -> 1 is nearly identity. The ratio is averaged
(median) over a few training pairs, both directions included (the similarity is
bidirectional). Adam is invariant to a constant factor on the whole loss, so once ``s`` is
calibrated, summing or averaging PatchNCE over layers (or changing ``alpha``) no longer
changes what is learned.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from contrareg_bids.nn.integrate import integrate_velocity, warp
from contrareg_bids.nn.model import RegistrationOutput
from contrareg_bids.nn.synth import random_velocity

#: std log|J| of the reference deformation
REFERENCE_STD_LOG_JAC = 0.15


def log_jacobian_std(disp: torch.Tensor) -> float:
    """std of log|det(I + grad u)| over the grid (central differences, det clipped at 1e-9)."""
    grads = [torch.gradient(disp[0, i], dim=(0, 1, 2)) for i in range(3)]
    j = torch.stack([torch.stack(g, 0) for g in grads], 0)  # (3 comp, 3 axes, X, Y, Z)
    j = j + torch.eye(3, dtype=j.dtype, device=j.device)[:, :, None, None, None]
    det = torch.linalg.det(j.permute(2, 3, 4, 0, 1))
    return float(torch.log(det.clamp_min(1e-9)).std())


def reference_velocity(
    shape: tuple[int, int, int],
    ts: int,
    generator: torch.Generator,
    target_std_log_jac: float = REFERENCE_STD_LOG_JAC,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """A random smooth velocity ``(1, 3, X, Y, Z)`` whose exponential has the target
    std log|J| (within a few per cent: the scale is found by two secant steps)."""
    v = random_velocity(shape, max(1.0, min(shape) / 16.0), generator).to(device)
    scale = 1.0
    for _ in range(3):
        got = log_jacobian_std(integrate_velocity(v * scale, ts))
        if got <= 0:
            break
        scale *= target_std_log_jac / got
    return (v * scale).detach()


def _grad_norm(value: torch.Tensor, v: torch.Tensor) -> float:
    (g,) = torch.autograd.grad(value, v, retain_graph=True)
    return float(g.norm())


def gradient_ratio(objective, batch: dict, v_ref: torch.Tensor, ts: int, generator) -> float:
    """``||d(alpha L_sim)/dv|| / ||d L_reg/dv||`` at ``v_ref`` for one batch (first item)."""
    moving, fixed = batch["moving"][:1], batch["fixed"][:1]
    one = {k: (x[:1] if isinstance(x, torch.Tensor) else x) for k, x in batch.items()}
    v = v_ref.clone().requires_grad_(True)
    fwd = integrate_velocity(v, ts)
    inv = integrate_velocity(-v, ts)
    out = RegistrationOutput(warp(moving, fwd), warp(fixed, inv), fwd, inv, v)
    sim = objective.similarity(one, out, generator)
    reg = objective.regularizer(v)
    return _grad_norm(sim, v) / max(_grad_norm(reg, v), 1e-30)


def calibrate_reg_scale(
    objective,
    batches: Iterable[dict],
    ts: int,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict:
    """Median gradient-norm ratio over ``batches`` (each with its own reference velocity).

    Returns ``{"reg_scale": s, "ratios": [...], "reference_std_log_jac": 0.15}``.
    Heads (CR/mCR) are used as they are: call it before training, on the initial heads.
    """
    gen = torch.Generator().manual_seed(seed + 4242)
    sample_gen = torch.Generator(device=torch.device(device)).manual_seed(seed + 4243)
    ratios = []
    was = objective.training
    objective.train(False)
    for batch in batches:
        shape = tuple(int(s) for s in batch["fixed"].shape[2:])
        v_ref = reference_velocity(shape, ts, gen, device=device)
        ratios.append(gradient_ratio(objective, batch, v_ref, ts, sample_gen))
    objective.train(was)
    if not ratios:
        raise ValueError("calibrate_reg_scale needs at least one batch")
    ratios_t = torch.tensor(ratios)
    return {
        "reg_scale": float(ratios_t.median()),
        "ratios": [float(r) for r in ratios],
        "reference_std_log_jac": REFERENCE_STD_LOG_JAC,
    }
