"""Calibrate the regulariser's weight so that lambda spans the whole trade-off.

The objective is ``(1 - lambda) * alpha * L_sim + lambda * s * L_reg``. The paper leaves the
normalisation of both terms open; with a voxel-mean diffusion penalty and ``s = 1`` the
similarity outweighs the regulariser at every lambda below ~0.99, so lambda does nothing
and the hypernetwork has nothing to learn. HyperMorph (Hoopes et al. 2021) scales its image
term for the same reason (``1 / sigma^2``).

``s`` balances how hard each term pulls a *reference deformation* back towards the
affine-aligned state: for a random smooth stationary velocity ``v`` (Gaussian-smoothed
noise, ``sigma = min(grid) / 16`` voxels, scaled so that std log|J| of its exponential is
0.15, a realistic inter-subject warp), ``s`` is the ratio of the directional derivatives
``<d(alpha L_sim)/dv, v> / <d L_reg/dv, v>``, median over a few training pairs. With it the
two terms pull equally at lambda = 0.5 along realistic deformations; the similarity
dominates at the paper's optimal lambdas (0.05-0.3) and lambda -> 1 is nearly identity.

Why the directional derivative and not the ratio of gradient norms: most of a similarity's
gradient at a random deformation is voxel-scale noise that a smooth warp cannot follow
(PatchNCE samples patches; MI's Parzen histogram). Measured on the development atlas, the
norm ratio is 10-20x the directional one (MI 90 vs 7.5, MIND 6 vs 0.5, trained mCR 160 vs
8), and a model trained with the norm ratio barely deformed at any lambda (std log|J| 0.018
at lambda 0).

CR/mCR are calibrated after the head warm-up (``TrainConfig.head_warmup``): with random
projection heads PatchNCE does not prefer the aligned state at all (negative directional
ratios) and its gradient is almost all noise (norm ratio 1250 against 160 once trained).
Adam is invariant to a constant factor on the whole loss, so once ``s`` is calibrated,
summing or averaging PatchNCE over layers (or changing ``alpha``) no longer changes what is
learned.
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


def reference_output(batch: dict, v: torch.Tensor, ts: int) -> RegistrationOutput:
    """Both directions of the first item of ``batch`` under the velocity ``v``."""
    moving, fixed = batch["moving"][:1], batch["fixed"][:1]
    fwd = integrate_velocity(v, ts)
    inv = integrate_velocity(-v, ts)
    return RegistrationOutput(warp(moving, fwd), warp(fixed, inv), fwd, inv, v)


def pull_ratio(objective, batch: dict, v_ref: torch.Tensor, ts: int, generator) -> float:
    """``<d(alpha L_sim)/dv, v> / <d L_reg/dv, v>`` at ``v_ref`` for the first item of
    ``batch``: how hard the similarity pulls the deformation back relative to the
    regulariser (<= 0 when the similarity does not prefer the aligned state)."""
    one = {k: (x[:1] if isinstance(x, torch.Tensor) else x) for k, x in batch.items()}
    v = v_ref.clone().requires_grad_(True)
    sim = objective.similarity(one, reference_output(one, v, ts), generator)
    (g_sim,) = torch.autograd.grad(sim, v)
    (g_reg,) = torch.autograd.grad(objective.regularizer(v), v)
    return float((g_sim * v_ref).sum()) / max(float((g_reg * v_ref).sum()), 1e-30)


def calibrate_reg_scale(
    objective,
    batches: Iterable[dict],
    ts: int,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict:
    """Median :func:`pull_ratio` over ``batches`` (each with its own reference velocity).

    Returns ``{"reg_scale": s, "ratios": [...], "reference_std_log_jac": 0.15}``. Pairs whose
    ratio is not positive are left out; raises ``ValueError`` when none is (the similarity
    does not prefer alignment: for CR/mCR, heads that have not been trained yet).
    """
    gen = torch.Generator().manual_seed(seed + 4242)
    sample_gen = torch.Generator(device=torch.device(device)).manual_seed(seed + 4243)
    ratios = []
    was = objective.training
    objective.train(False)
    try:
        for batch in batches:
            shape = tuple(int(s) for s in batch["fixed"].shape[2:])
            v_ref = reference_velocity(shape, ts, gen, device=device)
            ratios.append(pull_ratio(objective, batch, v_ref, ts, sample_gen))
    finally:
        objective.train(was)
    positive = [r for r in ratios if r > 0]
    if not positive:
        raise ValueError(
            f"cannot calibrate the regulariser: the similarity does not pull towards "
            f"alignment on any calibration pair (ratios {ratios}); set reg_scale instead"
        )
    return {
        "reg_scale": float(torch.tensor(positive).median()),
        "ratios": [float(r) for r in ratios],
        "reference_std_log_jac": REFERENCE_STD_LOG_JAC,
    }
