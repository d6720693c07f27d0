"""How much Dice can a deformable T2w -> T1w registration gain on the development atlas?

Two measurements with ANTs SyN (antspyx, Mattes MI, no initial transform) on the cached,
affine-aligned cohorts of ``bench_train_atlas.py``:

1. **Same cohort** (the atlas's T2w, T1w and tissue labels share one grid, so the right
   answer is the identity): T2w -> T2w and T2w -> T1w. Any Dice below 1 in the cross-modal
   row is what a cross-modal similarity costs on this atlas even where no warp is needed.
2. **Held-out cohort pairs**: mono-modal T2w(A) -> T2w(B) and cross-modal T2w(A) -> T1w(B),
   against affine-only Dice: the mono-modal row bounds what the anatomy leaves to gain after
   the affine; the cross-modal row is the benchmark's ANTs row.

``--bundles`` adds trained models (``model.safetensors``) on the same-cohort pairs at
``--lam``. Uses the cache and options of ``bench_train_atlas.py``; writes nothing into the
repository.

    python benchmarks/probe_crossmodal_atlas.py
    python benchmarks/probe_crossmodal_atlas.py \
        --bundles /tmp/contrareg-atlas-bench/runs/*/model.safetensors
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_train_atlas as bta


def tissues(labels: np.ndarray) -> np.ndarray:
    labels = np.rint(np.asarray(labels)).astype(np.int64)
    return np.where(np.isin(labels, bta.TISSUES), labels, 0)


def syn(paths_mov: dict, paths_fix: dict, mov_mod: str, fix_mod: str) -> tuple[float, float]:
    """ANTs SyN ``mov_mod`` -> ``fix_mod``: (tissue Dice against the fixed labels, RMS
    displacement in mm inside the fixed brain mask)."""
    import ants

    from contrareg_bids.metrics import mean_dice

    fixed = ants.image_read(str(paths_fix[fix_mod]))
    moving = ants.image_read(str(paths_mov[mov_mod]))
    reg = ants.registration(
        fixed, moving, type_of_transform="SyNOnly", syn_metric="mattes",
        initial_transform="identity",
    )  # fmt: skip
    warped = ants.apply_transforms(
        fixed, ants.image_read(str(paths_mov["labels"])), reg["fwdtransforms"],
        interpolator="genericLabel",
    ).numpy()  # fmt: skip
    fix_labels = ants.image_read(str(paths_fix["labels"])).numpy()
    mask = ants.image_read(str(paths_fix["mask"])).numpy() > 0
    field = ants.image_read(reg["fwdtransforms"][0]).numpy()  # (x, y, z, 3) in mm
    rms = float(np.sqrt((field[mask] ** 2).sum(-1).mean()))
    return mean_dice(tissues(warped), tissues(fix_labels), labels=bta.TISSUES), rms


def bundle_same_cohort(bundle: Path, data: dict, held: list[int], lam: float) -> tuple:
    """Mean tissue Dice and RMS displacement (mm) of a trained model on same-cohort pairs."""
    from contrareg_bids.io.bundle import load_model
    from contrareg_bids.metrics import mean_dice
    from contrareg_bids.nn.inference import register_arrays

    net = load_model(bundle).regnet
    dice, rms = [], []
    for c in held:
        d = data[c]
        out = register_arrays(net, d["T2w"], d["T1w"], lam=lam, device="cpu",
                              moving_labels=d["labels"])  # fmt: skip
        mask = d["mask"] > 0
        dice.append(mean_dice(out.moved_labels, d["labels"], labels=bta.TISSUES))
        rms.append(float(np.sqrt((out.forward_disp[:, mask] ** 2).sum(0).mean())) * d["zoom"])
    return float(np.mean(dice)), float(np.mean(rms))


def main(argv=None) -> int:
    import argparse

    pre_parser = argparse.ArgumentParser(add_help=False)
    pre_parser.add_argument("--bundles", type=Path, nargs="*", default=[])
    pre_parser.add_argument("--lam", type=float, default=1.0)
    extra, rest = pre_parser.parse_known_args(argv)
    args = bta.parse_args(rest)
    root = Path(args.templateflow_home)
    if not bta.atlas_file(root, bta.COHORTS[0], "T1w").exists():
        print(f"error: the development atlas is not under {root}", file=sys.stderr)
        return 2
    import nibabel as nib
    import torch
    from ants import config as ants_config

    ants_config.set_ants_deterministic(True, seed_value=1)
    torch.set_num_threads(max(1, args.threads))
    print("# python benchmarks/probe_crossmodal_atlas.py " + shlex.join(sys.argv[1:]))
    work = Path(args.work_dir)
    pre_dir = work / f"preproc_f{args.factor}"
    aff_dir = work / f"affine_f{args.factor}_ref{args.reference}{args.affine_modality}"
    pre = {c: bta.preprocess_cohort(root, c, args.factor, pre_dir) for c in bta.COHORTS}
    aligned = bta.affine_align(pre, args.reference, args.affine_modality, aff_dir)
    held = sorted(args.held_out)

    print("\n| same cohort (identity is right) | Dice | RMS displacement (mm) |")
    print("|---|---|---|")
    for mov_mod, fix_mod in (("T2w", "T2w"), ("T2w", "T1w")):
        res = np.array([syn(aligned[c], aligned[c], mov_mod, fix_mod) for c in held])
        print(f"| ANTs SyN {mov_mod} -> {fix_mod} | {res[:, 0].mean():.4f} "
              f"(min {res[:, 0].min():.4f}) | {res[:, 1].mean():.2f} |", flush=True)  # fmt: skip
    if extra.bundles:
        data = {c: bta.load_cohort(aligned[c]) for c in held}
        zoom = float(nib.load(aligned[held[0]]["T1w"]).header.get_zooms()[0])
        for d in data.values():
            d["zoom"] = zoom
        for bundle in extra.bundles:
            dice, rms = bundle_same_cohort(bundle, data, held, extra.lam)
            name = bundle.parent.name  # the run: loss, steps, lr, ..., hypernetwork lr
            print(f"| {name} (lambda {extra.lam:g}) T2w -> T1w | {dice:.4f} | {rms:.2f} |")

    from contrareg_bids.metrics import mean_dice

    pairs = [(a, b) for a in held for b in held if a != b]

    def labels(c):
        return tissues(nib.load(aligned[c]["labels"]).dataobj)

    affine = [mean_dice(labels(a), labels(b), labels=bta.TISSUES) for a, b in pairs]
    print(f"\n| held-out cohort pairs ({len(pairs)}) | Dice | vs affine-only | pairs above |")
    print("|---|---|---|---|")
    print(f"| affine only | {np.mean(affine):.4f} | - | - |")
    for mov_mod, fix_mod in (("T2w", "T2w"), ("T2w", "T1w")):
        dice = np.array([syn(aligned[a], aligned[b], mov_mod, fix_mod)[0] for a, b in pairs])
        gain = dice - np.array(affine)
        print(f"| ANTs SyN {mov_mod}(A) -> {fix_mod}(B) | {dice.mean():.4f} | "
              f"{gain.mean():+.4f} | {(gain > 0).sum()}/{len(pairs)} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
