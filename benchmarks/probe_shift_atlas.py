"""Where does the similarity peak, and where does Dice peak? Constant sub-voxel shifts on the
development atlas.

For the held-out T2w -> T1w pairs of ``bench_train_atlas.py`` (and the same-cohort pairs,
which are aligned by construction), the moving T2w and its labels are translated by a
constant shift along one axis at a time, and the global Parzen MI of the package
(:class:`contrareg_bids.losses.mi.MutualInformation`) and the tissue Dice are recorded. If
the MI optimum sits away from the Dice optimum, an intensity-driven warp that follows MI
loses Dice even where the anatomy needs no warp: this explains why deformable methods do
not beat affine-only alignment on these pairs (docs/benchmarks.md).

    python benchmarks/probe_shift_atlas.py

Uses the same cache and options as ``bench_train_atlas.py`` (``--work-dir``,
``--factor``, ...); writes nothing into the repository.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_train_atlas as bta

SHIFTS = np.round(np.arange(-0.5, 0.51, 0.1), 2)


def shifted(image, labels, shift):
    """``image`` (linear) and ``labels`` (one-hot linear, then arg-max) moved by the constant
    ``shift`` (three voxel components)."""
    import torch

    from contrareg_bids.nn.integrate import warp, warp_labels

    disp = torch.zeros(1, 3, *image.shape[2:])
    for axis, value in enumerate(shift):
        disp[:, axis] = float(value)
    return warp(image, disp), warp_labels(labels, disp, method="onehot")


def probe_pair(mov: dict, fix: dict, mi) -> dict:
    """MI over ``SHIFTS`` along each axis (``(3, len(SHIFTS))``), the per-axis MI peaks
    combined into one 3-D shift, and the tissue Dice at no shift and at that shift."""
    import torch

    from contrareg_bids.metrics import mean_dice

    def tensor(a, dtype=torch.float32):
        return torch.as_tensor(np.asarray(a), dtype=dtype)[None, None]

    image, labels = tensor(mov["T2w"]), tensor(mov["labels"], torch.int64)
    fixed = tensor(fix["T1w"])
    curves = np.zeros((3, len(SHIFTS)))
    with torch.no_grad():
        for axis in range(3):
            for k, s in enumerate(SHIFTS):
                shift = [0.0, 0.0, 0.0]
                shift[axis] = float(s)
                curves[axis, k] = -float(mi(fixed, shifted(image, labels, shift)[0]))
        peak = SHIFTS[curves.argmax(-1)]
        moved, moved_labels = shifted(image, labels, peak)
        mi_peak = -float(mi(fixed, moved))
    dice_at = {
        "dice_zero": mean_dice(np.asarray(mov["labels"]), fix["labels"], labels=bta.TISSUES),
        "dice_peak": mean_dice(moved_labels[0, 0].numpy(), fix["labels"], labels=bta.TISSUES),
    }
    zero = int(np.flatnonzero(SHIFTS == 0)[0])
    return {"curves": curves, "peak": peak, "mi_gain": mi_peak - curves[0, zero], **dice_at}


def summarise(name: str, probes: list[dict]) -> list[str]:
    peaks = np.stack([p["peak"] for p in probes])
    zero = np.array([p["dice_zero"] for p in probes])
    at_peak = np.array([p["dice_peak"] for p in probes])
    gain = np.array([p["mi_gain"] for p in probes])
    return [
        f"{name} ({len(probes)} pairs)",
        "  MI peak (per-axis search), mean shift in voxels: "
        + ", ".join(f"{v:+.2f}" for v in peaks.mean(0))
        + f"; MI gained over no shift: median {np.median(gain):.4f} nats",
        f"  Dice at no shift {zero.mean():.4f}, at the MI peak {at_peak.mean():.4f} "
        f"({(at_peak - zero).mean():+.4f}; lower on {(at_peak < zero - 1e-9).sum()} of "
        f"{len(probes)} pairs)",
    ]


def main(argv=None) -> int:
    args = bta.parse_args(argv)
    root = Path(args.templateflow_home)
    if not bta.atlas_file(root, bta.COHORTS[0], "T1w").exists():
        print(f"error: the development atlas is not under {root}", file=sys.stderr)
        return 2
    import torch

    from contrareg_bids.losses.mi import MutualInformation

    torch.set_num_threads(max(1, args.threads))
    print("# python benchmarks/probe_shift_atlas.py " + shlex.join(sys.argv[1:]))
    work = Path(args.work_dir)
    pre_dir = work / f"preproc_f{args.factor}"
    aff_dir = work / f"affine_f{args.factor}_ref{args.reference}{args.affine_modality}"
    pre = {c: bta.preprocess_cohort(root, c, args.factor, pre_dir) for c in bta.COHORTS}
    aligned = bta.affine_align(pre, args.reference, args.affine_modality, aff_dir)
    held = sorted(args.held_out)
    data = {c: bta.load_cohort(aligned[c]) for c in held}
    mi = MutualInformation()
    print(f"# shifts {SHIFTS.tolist()} voxels, one axis at a time; MI in nats (higher = better)")
    for name, pairs in (
        ("same cohort, T2w -> T1w (aligned)", [(c, c) for c in held]),
        (
            "held-out cohort pairs, T2w(A) -> T1w(B)",
            [(a, b) for a in held for b in held if a != b],
        ),
    ):
        probes = [probe_pair(data[a], data[b], mi) for a, b in pairs]
        print("\n".join(summarise(name, probes)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
