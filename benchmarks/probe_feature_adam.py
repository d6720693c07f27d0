"""ConvexAdam's Adam stage driven by ContraReg's learned features, finer than the model grid.

ConvexAdam (Siebert, Hansen, Heinrich) computes MIND features once at native resolution and
optimises a displacement by warping those feature maps (dense SSD plus a diffusion penalty).
This probe does the same with the bundle's own modality-invariant features: the frozen
autoencoders' layers projected by the trained heads onto the shared hypersphere, where the
contrastive training made corresponding T1w/T2w locations close. The features keep the scale
they were trained at because the images are point-sampled on the model grid, as in training,
at ``phases**3`` sub-voxel offsets whose outputs are interleaved (the "a trous" idea): a dense
map ``phases`` times finer than the model grid. A joint PCA keeps ``--pca`` channels.

The velocity starts from the network's prediction (optionally after the app's PatchNCE
refinement) and is optimised on the model grid (diffeomorphic, as in the app); its
displacement is resampled onto the fine grid to warp the moving features. Scored exactly as
the app scores a registration (``probe_refine_grid.score``).

    python benchmarks/probe_feature_adam.py --work-dir /tmp/cpu-recipe --model cpu-recipe-3000 \\
        --subjects c31s0 c35s0 --variants 2:100:0.1:3:0 2:100:0.1:3:100
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe_refine_grid import grid_at, run_probe, score


def sample_cells(feat, locations, stride: float, offset: float):
    """Sample a feature map whose cell ``j`` is centred on image voxel ``stride * j + offset``
    at image-voxel ``locations`` ``(1, 3, X, Y, Z)`` (trilinear, border)."""
    import torch.nn.functional as F

    from contrareg_bids.nn.integrate import voxel_to_sample_grid

    cells = (locations - offset) / stride
    # voxel_to_sample_grid normalises by the locations' own shape: rescale to the map's
    ratio = [
        (s - 1) / max(f - 1, 1) for s, f in zip(locations.shape[2:], feat.shape[2:], strict=True)
    ]
    cells = cells * cells.new_tensor(ratio).view(1, 3, 1, 1, 1)
    grid = voxel_to_sample_grid(cells)
    return F.grid_sample(feat, grid, padding_mode="border", align_corners=True)


def phase_features(ae, heads, layers, fine, shape, phases: int):
    """Head-projected features ``(1, C, *dense)`` on a grid ``phases`` times finer than the
    model grid ``shape`` (same extent), from the fine image ``fine`` ``(1, 1, ...)``."""
    import torch

    from contrareg_bids.nn.integrate import identity_grid
    from contrareg_bids.nn.refine import sample_at

    ident = identity_grid(shape)
    dense_shape = [(s - 1) * phases + 1 for s in shape]
    out = None
    with torch.no_grad():
        for o in itertools.product(range(phases), repeat=3):
            off = torch.tensor(o, dtype=torch.float32).view(1, 3, 1, 1, 1) / phases
            img = sample_at(fine, ident + off)
            feats = ae.features(img)
            maps = []
            for k in layers:
                stride, offset = ae.feature_geometry[k]
                f = sample_cells(feats[k], ident, stride, offset)
                maps.append(heads[k].forward_map(f))
            m = torch.cat(maps, 1)
            if out is None:
                out = torch.zeros(1, m.shape[1], *(s * phases for s in shape))
            out[:, :, o[0] :: phases, o[1] :: phases, o[2] :: phases] = m
    return out[:, :, : dense_shape[0], : dense_shape[1], : dense_shape[2]].contiguous()


def joint_pca(a, b, mask, q: int, seed: int = 0):
    """Project both ``(1, C, ...)`` maps onto the top ``q`` principal axes of their pooled
    foreground vectors (one basis: the heads share one embedding space)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    idx = torch.nonzero(mask.flatten() > 0.5).flatten()
    idx = idx[torch.randperm(idx.numel(), generator=g)[:20000]]
    x = torch.cat([a.flatten(2)[0, :, idx].T, b.flatten(2)[0, :, idx].T])
    mean = x.mean(0)
    _, _, v = torch.linalg.svd(x - mean, full_matrices=False)
    basis = v[:q].T  # (C, q)

    def proj(t):
        flat = (t.flatten(2)[0].T - mean) @ basis
        return flat.T.reshape(1, q, *t.shape[2:]).contiguous()

    return proj(a), proj(b)


def feature_adam(v0, mov_feat, fix_feat, mask, steps, lr, weight, coarse, ts):
    """Optimise ``v = v0 + up(delta)`` (model grid) for dense feature SSD on the fine grid
    plus ``weight`` times the app's velocity regulariser (voxel-mean squared gradient)."""
    import torch
    import torch.nn.functional as F

    from contrareg_bids.losses.regularizers import gradient_loss
    from contrareg_bids.nn.integrate import integrate_velocity, resize_field, warp

    shape = v0.shape[2:]
    dense = fix_feat.shape[2:]
    coarse_shape = [max(2, -(-s // coarse)) for s in shape]
    delta = torch.zeros((1, 3, *coarse_shape), requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr)
    m = mask.float()
    denom = m.sum().clamp_min(1)
    for _ in range(steps):
        v = v0 + F.interpolate(delta, size=shape, mode="trilinear", align_corners=True) * coarse
        fwd = resize_field(integrate_velocity(v, ts), dense)
        moved = warp(mov_feat, fwd)
        sim = (((moved - fix_feat) ** 2).sum(1, keepdim=True) * m).sum() / denom
        loss = sim + weight * gradient_loss(v, "l2")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return v0 + F.interpolate(delta, size=shape, mode="trilinear", align_corners=True) * coarse


def run_variant(paths, bundle, objective, variant: str, out: Path, a) -> dict:
    """``phases:steps:lr:weight:refine`` for one subject; the app's metrics row."""
    import torch

    from contrareg_bids.io.images import load_nifti
    from contrareg_bids.nn.integrate import integrate_velocity, resize_field
    from contrareg_bids.nn.refine import RefineSettings, refine_velocity, sample_at
    from contrareg_bids.processing.model_space import prepare_model_pair

    phases, steps, lr, weight, refine = variant.split(":")
    phases, steps, refine = int(phases), int(steps), int(refine)
    lr, weight = float(lr), float(weight)
    grid = bundle.metadata.grid
    shape = tuple(int(s) for s in grid.shape)
    args = (paths["moving"], paths["reference"], paths["affine"])
    nat_shape, nat_spacing = grid_at(grid, a.native_factor)
    native = prepare_model_pair(
        *args, nat_shape, nat_spacing, out / "native", reference_mask=paths["reference_mask"]
    )
    model = prepare_model_pair(*args, shape, tuple(grid.spacing), out / "model")

    def tensor(path):
        return torch.from_numpy(load_nifti(path).get_fdata(dtype=np.float32))[None, None]

    net, cfg = bundle.regnet.eval(), bundle.regnet.config
    roles = bundle.metadata.modalities
    lam = a.lam
    t0 = time.perf_counter()
    mov_m, fix_m = tensor(model.moving), tensor(model.fixed)
    with torch.inference_mode():
        v = net.velocity(mov_m, fix_m, lam).float()
    v = v.clone()
    if refine:
        settings = RefineSettings(steps=refine)
        v = refine_velocity(v, mov_m, fix_m, objective, lam, cfg.ts, settings, cfg.int_downsize)
    if steps:
        mov_n, fix_n = tensor(native.moving), tensor(native.fixed)
        layers = [int(k) for k in a.layers.split(",")]
        feats = {}
        for role, img in (("moving", mov_n), ("fixed", fix_n)):
            mod = roles[role]
            feats[role] = phase_features(
                bundle.autoencoders[mod], bundle.heads[mod], layers, img, shape, phases
            )
        dense = feats["fixed"].shape[2:]
        from contrareg_bids.nn.integrate import identity_grid

        mask = sample_at(tensor(native.fixed_mask), identity_grid(dense)) > 0.5
        mov_f, fix_f = feats["moving"], feats["fixed"]
        if a.pca:
            mov_f, fix_f = joint_pca(mov_f, fix_f, mask, a.pca)
        v = feature_adam(v, mov_f, fix_f, mask, steps, lr, weight, a.coarse, cfg.ts)
    with torch.inference_mode():
        fwd = integrate_velocity(v, cfg.ts)
        inv = integrate_velocity(-v, cfg.ts)
        fwd = resize_field(fwd, nat_shape)[0].numpy()
        inv = resize_field(inv, nat_shape)[0].numpy()
    return score(paths, fwd, inv, native, out, time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work-dir", type=Path, required=True, help="bench_cpu_recipe's work dir")
    p.add_argument("--model", default="cpu-recipe-3000", help="the bundle's name in out-train")
    p.add_argument("--subjects", nargs="+", required=True)
    p.add_argument("--variants", nargs="+", required=True, help="phases:steps:lr:weight:refine")
    p.add_argument("--layers", default="0", help="feature layers, e.g. 0,1,5")
    p.add_argument("--pca", type=int, default=32, help="channels kept (0: all)")
    p.add_argument("--coarse", type=int, default=2, help="update grid: model grid / coarse")
    p.add_argument("--lam", type=float, default=0.8)
    p.add_argument("--native-factor", type=float, default=2.909, help="native / model voxels")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)

    def run(paths, bundle, objective, variant, out):
        return run_variant(paths, bundle, objective, variant, out, a)

    return run_probe(a, "probe_feature_adam.py", run)


if __name__ == "__main__":
    raise SystemExit(main())
