"""Forward-pass time and peak memory of the registration network, and the CR/MI loss-time ratio.

Each network width runs in a fresh subprocess so the peak resident memory (``ru_maxrss``) is
that configuration's alone. Prints medians over ``--repeats`` runs after one warm-up.

    python benchmarks/bench_network.py                      # 160x192x160, ch 16 32 64
    python benchmarks/bench_network.py --shape 96 96 96 --channels 16 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_network(ch: int, shape: list[int], repeats: int, device: str) -> dict:
    """Time one inference (velocity, both integrations, both warps) of a ch-wide network."""
    import numpy as np

    from contrareg_bids.nn.inference import register_arrays
    from contrareg_bids.nn.model import ContraRegNet

    torch.manual_seed(0)
    net = ContraRegNet(ch=ch)
    rng = np.random.default_rng(0)
    mov = rng.random(shape, dtype=np.float32)
    fix = rng.random(shape, dtype=np.float32)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    def once():
        register_arrays(net, mov, fix, lam=0.1, device=device)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    median = _time(once, repeats)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    out = {"ch": ch, "shape": shape, "median_s": median, "peak_rss_gb": peak_gb}
    if device.startswith("cuda"):
        out["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 1024**3
    return out


def run_losses(shape: list[int], repeats: int, device: str) -> dict:
    """Forward+backward time of the contrastive loss (both AEs + heads) vs global MI."""
    from contrareg_bids.losses import ContrastiveSimilarity, MutualInformation
    from contrareg_bids.nn.autoencoder import Autoencoder
    from contrareg_bids.nn.heads import ProjectionHeads

    torch.manual_seed(0)
    ae_f, ae_m = Autoencoder().to(device), Autoencoder().to(device)
    heads_f = ProjectionHeads(ae_f.feature_channels).to(device)
    heads_m = ProjectionHeads(ae_m.feature_channels).to(device)
    cr = ContrastiveSimilarity(ae_f, ae_m, heads_f, heads_m).to(device)
    mi = MutualInformation().to(device)
    fixed = torch.rand(1, 1, *shape, device=device)
    moved = torch.rand(1, 1, *shape, device=device, requires_grad=True)
    mask = (fixed > 0.2).float()

    def step(loss_fn, **kw):
        def once():
            loss = loss_fn(fixed, moved, **kw)
            loss.backward()
            moved.grad = None
            if device.startswith("cuda"):
                torch.cuda.synchronize()

        return once

    t_cr = _time(step(cr), repeats)
    t_mcr = _time(step(cr, mask=mask), repeats)
    t_mi = _time(step(mi), repeats)
    return {
        "shape": shape,
        "cr_s": t_cr,
        "mcr_s": t_mcr,
        "mi_s": t_mi,
        "cr_over_mi": t_cr / t_mi,
        "mcr_over_mi": t_mcr / t_mi,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[160, 192, 160])
    parser.add_argument("--channels", type=int, nargs="*", default=[16, 32, 64])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loss-shape", type=int, nargs=3, default=[96, 96, 96])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-losses", action="store_true")
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._child:
        kind, value = args._child.split(":")
        if kind == "net":
            res = run_network(int(value), args.shape, args.repeats, args.device)
        else:
            res = run_losses(args.loss_shape, args.repeats, args.device)
        print(json.dumps(res))
        return

    print(f"# {' '.join(sys.argv)}")
    print(
        f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"threads {torch.get_num_threads()}, device {args.device}"
    )
    jobs = [f"net:{c}" for c in args.channels] + ([] if args.skip_losses else ["loss:0"])
    for job in jobs:
        cmd = [
            sys.executable,
            __file__,
            "--_child",
            job,
            "--shape",
            *map(str, args.shape),
            "--loss-shape",
            *map(str, args.loss_shape),
            "--repeats",
            str(args.repeats),
            "--device",
            args.device,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(f"{job}: FAILED\n{proc.stderr[-2000:]}")
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        if job.startswith("net"):
            extra = f", peak CUDA {res['peak_cuda_gb']:.2f} GB" if "peak_cuda_gb" in res else ""
            print(
                f"network ch={res['ch']:>3} {tuple(res['shape'])}: median {res['median_s']:.2f} s"
                f" per pair (both directions), peak RSS {res['peak_rss_gb']:.2f} GB{extra}"
            )
        else:
            print(
                f"loss fwd+bwd {tuple(res['shape'])}: CR {res['cr_s']:.3f} s, "
                f"mCR {res['mcr_s']:.3f} s, MI {res['mi_s']:.3f} s; CR/MI = "
                f"{res['cr_over_mi']:.2f}, mCR/MI = {res['mcr_over_mi']:.2f}"
            )


if __name__ == "__main__":
    main()
