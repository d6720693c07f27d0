"""Time-boxed training of a paper-size model on prepared volumes (a GPU check).

Trains ContraReg on the record lists the train level wrote (``<work>/train/<name>/moving.tsv``
and ``fixed.tsv``: volumes already preprocessed onto one model grid) for a wall-clock budget,
then closes the run at the step it reached and writes a bundle the participant level reads.
Prints the training rate (it/s), the peak GPU memory and the network's time per pair.

Example (when the volumes were copied to another machine, rewrite the paths inside the lists
first: they must exist when the lists are read)::

    python benchmarks/bench_gpu_training.py --moving-list prep/moving.tsv \\
        --fixed-list prep/fixed.tsv --like prep/prep125.json --budget-s 360 \\
        --out /tmp/gpu-train --ch 64 --depth 4

The budget is checked between chunks of ``--chunk`` steps, so a run overshoots it by up to
one chunk (plus validation): size the command's own time limit for that.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
from benchlib import command_line

from contrareg_bids.training.checkpoint import load_checkpoint, save_checkpoint
from contrareg_bids.training.config import TRAIN_PRESETS
from contrareg_bids.training.pipeline import read_record_list, train


def close_run_at(out_dir: Path, cfg) -> object:
    """Rewrite the checkpoint so that the run it holds ends at the step it reached.

    The trainer refuses a checkpoint written under another configuration; the learning rate
    is constant, so a run cut at step ``s`` is the run of ``steps = s``.
    """
    path = out_dir / "checkpoints" / "last.pt"
    state = load_checkpoint(path)
    closed = cfg.updated(steps=int(state["step"]))
    state["config"] = closed.to_json()
    save_checkpoint(path, **state)
    return closed


def network_seconds_per_pair(bundle: Path, shape: tuple[int, int, int], repeats: int = 5) -> float:
    """Median time of the network's forward pass (velocity and both fields) on ``shape``."""
    from contrareg_bids.io.bundle import load_model

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = load_model(bundle, dev).regnet.eval()
    x = torch.rand(1, 1, *shape, device=dev)
    lam = torch.tensor([0.8], device=dev)
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            net(x, x, lam)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return sorted(times[1:])[len(times[1:]) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moving-list", type=Path, required=True)
    parser.add_argument("--fixed-list", type=Path, required=True)
    parser.add_argument(
        "--like",
        type=Path,
        required=True,
        help="a train-level bundle sidecar (.json): "
        "its modalities and normalisation are the new bundle's",
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget-s", type=float, default=360.0, help="registration training")
    parser.add_argument("--chunk", type=int, default=250, help="steps between time checks")
    parser.add_argument("--preset", choices=sorted(TRAIN_PRESETS), default="paper")
    parser.add_argument("--ch", type=int, default=64)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--ae-steps", type=int, default=1500)
    parser.add_argument("--ae-crop", type=int, default=80)
    parser.add_argument("--head-warmup", type=int, default=200)
    parser.add_argument("--deform-augment", type=float, default=4.0)
    parser.add_argument("--deform-sigma", type=float, default=8.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--amp", action="store_true", help="bfloat16 autocast (default: float32 with TF32)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    print(f"# {command_line('bench_gpu_training.py', argv)}")

    moving = read_record_list(args.moving_list)
    fixed = read_record_list(args.fixed_list)
    like = json.loads(args.like.read_text())["metadata"]
    modalities = (like["modalities"]["moving"], like["modalities"]["fixed"])
    cfg = TRAIN_PRESETS[args.preset]().updated(
        steps=1_000_000,  # closed at the step the budget reaches (close_run_at)
        lr=args.lr,
        head_warmup=args.head_warmup,
        deform_augment=args.deform_augment,
        deform_sigma=args.deform_sigma,
        device=args.device,
        amp=args.amp,
        val_every=500,
        checkpoint_every=10**9,
        regnet={"ch": args.ch, "depth": args.depth},
        autoencoder={"steps": args.ae_steps, "crop": args.ae_crop},
    )
    bundle = args.out / "model.safetensors"
    t_start = time.perf_counter()
    common = dict(
        modalities=modalities,
        progress=False,
        bundle_path=bundle,
        normalization=like["normalization"],
    )
    train(moving, fixed, cfg, args.out, stop_after=1, **common)  # autoencoders + first step
    t_ae = time.perf_counter() - t_start
    t_reg = time.perf_counter()
    while time.perf_counter() - t_reg < args.budget_s:
        train(moving, fixed, cfg, args.out, stop_after=args.chunk, **common)
    reg_s = time.perf_counter() - t_reg
    closed = close_run_at(args.out, cfg)
    train(moving, fixed, closed, args.out, **common)
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    shape = tuple(like["grid"]["shape"])
    per_pair = network_seconds_per_pair(bundle, shape)
    print(
        f"device {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}; "
        f"grid {shape}; ch {args.ch} depth {args.depth}; autoencoders {args.ae_steps} steps "
        f"in {t_ae:.0f} s; registration {closed.steps} steps in {reg_s:.0f} s "
        f"({closed.steps / reg_s:.2f} it/s incl. chunk restarts); peak GPU memory {peak:.1f} GiB; "
        f"network forward {per_pair * 1000:.0f} ms per pair"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
