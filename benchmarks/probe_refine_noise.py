"""How much of the refinement's gradient is PatchNCE sampling noise.

At the network's velocity for an atlas pair (``bench_train_atlas.py``'s cached, affine-aligned
cohorts), computes the gradient of the bundle's objective w.r.t. the velocity with three
sampling seeds and prints the mean cosine between them, for each number of averaged draws
(``PatchNCELoss.draws``). With noise power r times the signal's the cosine is about
1 / (1 + r / draws).

    python benchmarks/probe_refine_noise.py --bundle <run>/model.safetensors \\
        --cohorts 29 33 37 41 --pairs 0 2 --draws 1 4 16
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_accuracy_atlas import probe_pairs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--work-dir", default="/tmp/atlas3", help="bench_train_atlas's work dir")
    p.add_argument("--cohorts", type=int, nargs="+", default=[29, 33, 37, 41])
    p.add_argument("--pairs", type=int, nargs="+", default=[0, 2], help="indices of atlas pairs")
    p.add_argument("--draws", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--lambda", dest="lam", type=float, default=0.8)
    a = p.parse_args(argv)
    print(f"# python benchmarks/probe_refine_noise.py {shlex.join(sys.argv[1:])}")
    import torch
    import torch.nn.functional as F

    from contrareg_bids.io.bundle import load_model
    from contrareg_bids.losses.patchnce import more_draws
    from contrareg_bids.training.calibration import reference_output
    from contrareg_bids.training.objective import objective_from_bundle

    torch.set_num_threads(1)
    pairs = probe_pairs(a.work_dir, a.cohorts)
    bundle = load_model(a.bundle)
    objective = objective_from_bundle(bundle).train(False)
    for param in objective.parameters():
        param.requires_grad_(False)
    ts = bundle.regnet.config.ts
    lam = torch.full((1, 1), a.lam)

    def grad(batch: dict, v0: torch.Tensor, seed: int, draws: int) -> torch.Tensor:
        v = v0.clone().requires_grad_(True)
        gen = torch.Generator().manual_seed(seed)
        with more_draws(objective, draws):
            loss = objective(batch, reference_output(batch, v, ts), lam, gen)["loss"]
        loss.backward()
        return v.grad.flatten()

    for i in a.pairs:
        name, mov, fix = pairs[i]
        batch = {
            "moving": torch.from_numpy(mov["T2w"])[None, None].float(),
            "fixed": torch.from_numpy(fix["T1w"])[None, None].float(),
            "moving_mask": torch.from_numpy(mov["mask"])[None, None].float(),
            "fixed_mask": torch.from_numpy(fix["mask"])[None, None].float(),
        }
        with torch.no_grad():
            v0 = bundle.regnet.velocity(batch["moving"], batch["fixed"], a.lam).float()
        for draws in a.draws:
            t0 = time.perf_counter()
            g = [grad(batch, v0, s, draws) for s in range(3)]
            dt = (time.perf_counter() - t0) / 3
            cos = [
                float(F.cosine_similarity(g[j], g[k], dim=0)) for j, k in ((0, 1), (0, 2), (1, 2))
            ]
            print(f"{name} draws {draws}: cosine between seeds {np.mean(cos):.3f}, "
                  f"{dt:.2f} s per gradient", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
