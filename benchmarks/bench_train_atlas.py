"""Train mCR and MI on the development atlas (Serag 2012, T2w -> T1w) and score held-out pairs.

A reduced-size, CPU-only version of the paper's Table 1 protocol on real neonatal data:

1. preprocess every cohort (28-44 weeks): RAS, block-average downsampling by ``--factor``
   (default 3: 40x56x48 at 2.58 mm; see ``FACTOR_NOTE`` for why not 2), pad to a multiple
   of 8, intensities to [0, 1] inside the brain mask (0.5-99.5 percentiles: the package's
   :func:`~contrareg_bids.processing.normalize.percentile_normalize`);
2. affine pre-alignment of every cohort to one central cohort with the package's affine
   step (:func:`~contrareg_bids.processing.affine.affine_register`: ANTs, Mattes MI, seeded,
   one ITK thread); T2w, T1w, mask and tissue labels share the cohort's transform;
3. train ``mcr`` and ``mi`` with the package's ``train()`` on the training cohorts (moving =
   T2w of cohort A, fixed = T1w of cohort B, A != B);
4. evaluate all ordered pairs of the held-out cohorts over a lambda sweep: mean Dice over the
   tissues {1,2,3,5,6,7,8}, % folding voxels and std log|J| inside the fixed brain mask.

The atlas is for academic use only: everything derived from it (resampled volumes, ANTs
transforms, trained weights, logs) is written under ``--work-dir`` (default
``/tmp/contrareg-atlas-bench``), never into the repository. Every stage is cached there;
rerunning the same command only redoes what is missing.

    TEMPLATEFLOW_HOME=../shared/templateflow python benchmarks/bench_train_atlas.py
    python benchmarks/bench_train_atlas.py --steps 20 --ae-steps 10   # quick smoke run
    python benchmarks/bench_train_atlas.py --factor 2 --steps 150     # 64x80x64, ~35 min
    python benchmarks/bench_train_atlas.py --write-docs docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from benchlib import (
    REPO,
    command_line,
    fmt_table,
    load_volumes,
    log,
    paired_difference,
    register,
    write_docs,
)

if TYPE_CHECKING:
    from contrareg_bids.evaluation import SweepResult

TEMPLATE = "tpl-Serag2012"
COHORTS = list(range(28, 45))
TISSUES = [1, 2, 3, 5, 6, 7, 8]
N_LABELS = 10
LAMBDAS = [0.0, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0]
FOLD_LIMIT = 0.5
HEADING = "## Training on the development atlas (CPU, reduced size)"
METHOD_NAMES = {
    "mcr": "mCR",
    "mcr+suppretrain": "mCR+SupPretrain",
    "cr+suppretrain": "CR+SupPretrain",
    "cr": "CR",
    "mi": "MI",
    "localmi": "LocalMI",
    "mind": "MIND",
    "ngf": "NGF",
}
#: Why the defaults are what they are (measured on the 2-core development machine, shared
#: with other jobs, one torch thread, while writing this benchmark).
FACTOR_NOTE = (
    "Size: at factor 2 (64x80x64 at 1.72 mm) one training step took about 3.5 s (mCR) and "
    "6.3 s (MI: global Parzen MI over 330k voxels, both directions) and an autoencoder step "
    "at crop 48 about 0.5 s, so only ~150 steps per method fit in the ~35 min budget; factor "
    "3 (40x56x48 at 2.58 mm, about 1.3-1.4 s per step for either loss) allows ~500."
)
THREADS_NOTE = (
    "Threads: one torch thread by default; with the machine shared, two threads made steps "
    "2-7x slower (OpenMP threads competing with other jobs for the two cores)."
)


# ----------------------------------------------------------------------------- preprocessing


def atlas_file(root: Path, cohort: int, suffix: str) -> Path:
    return root / TEMPLATE / f"cohort-{cohort}" / f"{TEMPLATE}_cohort-{cohort}_{suffix}.nii.gz"


def block_view(arr: np.ndarray, f: int) -> np.ndarray:
    """``(X, Y, Z)`` cropped to multiples of ``f`` -> ``(X/f, Y/f, Z/f, f**3)`` blocks."""
    x, y, z = (s // f * f for s in arr.shape)
    a = arr[:x, :y, :z].reshape(x // f, f, y // f, f, z // f, f)
    return a.transpose(0, 2, 4, 1, 3, 5).reshape(x // f, y // f, z // f, f**3)


def downsample_labels(lab: np.ndarray, f: int) -> np.ndarray:
    """Mode of each ``f**3`` block (ties: the smaller label)."""
    blocks = block_view(lab.astype(np.int64), f)
    counts = np.stack([(blocks == k).sum(-1) for k in range(N_LABELS)])
    return counts.argmax(0).astype(np.int16)


def pad_to(arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    before = [(t - s) // 2 for s, t in zip(arr.shape, shape, strict=True)]
    pads = [(b, t - s - b) for b, s, t in zip(before, arr.shape, shape, strict=True)]
    return np.pad(arr, pads)


def preprocess_cohort(root: Path, cohort: int, factor: int, out: Path) -> dict[str, Path]:
    """RAS, downsample, pad to a multiple of 8, normalise: NIfTI files under ``out``."""
    import nibabel as nib

    from contrareg_bids.processing.normalize import percentile_normalize
    from contrareg_bids.simulate import block_mean

    names = {
        "T1w": "T1w",
        "T2w": "T2w",
        "mask": "desc-brain_mask",
        "labels": "desc-tissues_dseg",
    }
    paths = {k: out / f"cohort-{cohort}_{k}.nii.gz" for k in names}
    if all(p.exists() for p in paths.values()):
        return paths
    out.mkdir(parents=True, exist_ok=True)
    imgs = {
        k: nib.as_closest_canonical(nib.load(atlas_file(root, cohort, v)))
        for k, v in names.items()
    }
    affine = imgs["T1w"].affine
    for k, img in imgs.items():
        if not np.allclose(img.affine, affine, atol=1e-4):
            raise ValueError(f"cohort {cohort}: {k} is not on the grid of the T1w")
    f = factor
    mask = np.asarray(imgs["mask"].dataobj) > 0
    labels = np.rint(np.asarray(imgs["labels"].dataobj)).astype(np.int64)
    if f > 1:
        mask_d = block_mean(mask.astype(np.float32), f) >= 0.5
        labels_d = downsample_labels(labels, f)
    else:
        mask_d, labels_d = mask, labels.astype(np.int16)
    shape = tuple(-(-s // 8) * 8 for s in mask_d.shape)
    before = np.array([(t - s) // 2 for s, t in zip(mask_d.shape, shape, strict=True)])
    # voxel i of the new grid is the centre of block i (old index f*i + (f-1)/2), shifted by
    # the padding placed before the data
    scale = np.diag([f, f, f, 1.0])
    scale[:3, 3] = (f - 1) / 2.0 - f * before
    new_affine = affine @ scale
    mask_p = pad_to(mask_d, shape)
    arrays: dict[str, np.ndarray] = {
        "mask": mask_p.astype(np.uint8),
        "labels": pad_to(labels_d, shape).astype(np.int16),
    }
    for mod in ("T1w", "T2w"):
        img = np.asarray(imgs[mod].dataobj, dtype=np.float32)
        img_p = pad_to(block_mean(img, f) if f > 1 else img, shape)
        # The package's recipe, the same as this script's own copy before (0.5-99.5
        # percentiles inside the mask, clipped, 0 outside), and the package's block mean;
        # NOT bit-identical to that copy: the package computes in float64 where it computed
        # in float32, and averages the blocks in another order. The stored values differ by
        # round-off (at most 4e-7 on cohorts 31/36/43 at factor 3), but ANTs' sampled Mattes
        # MI is sensitive to it: the affine of cohort 31 (43) to 36 changed, moving 261 (2278)
        # label voxels, and the affine-only Dice of 31 -> 43 went 0.68396 -> 0.68429. A work
        # dir preprocessed before keeps its files (cached), so its figures are unchanged; a
        # fresh one differs from the documented figures at about the 4th decimal.
        arrays[mod] = percentile_normalize(img_p, mask_p, 0.5, 99.5)[0]
    for k, arr in arrays.items():
        img = nib.Nifti1Image(arr, new_affine)
        img.header.set_zooms(tuple(float(z) * f for z in imgs["T1w"].header.get_zooms()[:3]))
        img.set_qform(new_affine, code=1)
        img.set_sform(new_affine, code=1)
        nib.save(img, paths[k])
    return paths


#: How each map is carried by a cohort's affine
#: (:func:`contrareg_bids.io.transforms.apply_transform`).
INTERPOLATION = {"T1w": "linear", "T2w": "linear", "mask": "nearest", "labels": "label"}


def affine_align(
    pre: dict[int, dict[str, Path]], reference: int, modality: str, out: Path
) -> dict[int, dict[str, Path]]:
    """The package's affine step (:func:`~contrareg_bids.processing.affine.affine_register`:
    ANTs, Mattes MI, antspyx's schedule, seed 0, one ITK thread) of every cohort's
    ``modality`` to the reference cohort's; the transform is applied to both images
    (linear), mask (nearest) and labels (one-hot linear), all on the reference grid.

    Before it was the package's, this script ran the same registration through antspyx
    itself (``ants.set_ants_deterministic(True, seed_value=1)``: ANTs' ``--random-seed 1``,
    as the package's seed 0 gives) and resampled with ``ants.apply_transforms`` (labels with
    ``genericLabel``); the package resamples with SimpleITK (labels one-hot linear, the
    same rule). On the same preprocessed cohorts (31 and 43 to 36, factor 3) both wrote
    bitwise-identical transforms and volumes. Caches written by either are read alike."""
    import nibabel as nib

    from contrareg_bids.io.transforms import apply_transform
    from contrareg_bids.processing.affine import affine_register

    aligned: dict[int, dict[str, Path]] = {}
    ref_img = nib.load(pre[reference]["T1w"])
    for cohort, paths in pre.items():
        dst = {k: out / f"cohort-{cohort}_{k}.nii.gz" for k in paths}
        aligned[cohort] = dst
        if all(p.exists() for p in dst.values()):
            continue
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        if cohort == reference:
            arrays = {k: np.asanyarray(nib.load(p).dataobj) for k, p in paths.items()}
        else:
            res = affine_register(
                pre[reference][modality], paths[modality],
                out / f"cohort-{cohort}_to-{reference}_", seed=0,
            )  # fmt: skip
            arrays = {}
            for k, p in paths.items():
                tmp = out / f"_cohort-{cohort}_{k}_moved.nii.gz"
                apply_transform(
                    p, pre[reference]["T1w"], res.transform_path, tmp, INTERPOLATION[k]
                )
                arrays[k] = np.asanyarray(nib.load(tmp).dataobj)
                tmp.unlink()
            res.moved_path.unlink(missing_ok=True)
        for k, arr in arrays.items():
            if k in ("T1w", "T2w"):
                data = np.clip(arr, 0.0, 1.0).astype(np.float32)
            elif k == "mask":
                data = (np.asarray(arr) > 0.5).astype(np.uint8)
            else:
                data = np.rint(arr).astype(np.int16)
            nib.save(nib.Nifti1Image(data, ref_img.affine, ref_img.header), dst[k])
        if cohort != reference:
            log(f"  affine cohort {cohort} -> {reference}: {time.perf_counter() - t0:.1f} s")
    return aligned


# ----------------------------------------------------------------------------- training


def make_config(args: argparse.Namespace, loss: str):
    from contrareg_bids.training.config import sloppy_config

    return sloppy_config(
        loss=loss,
        steps=args.steps,
        lr=args.lr,
        hypernet_lr=args.hypernet_lr,
        device="cpu",
        seed=args.seed,
        num_negatives=args.num_negatives,
        tau=args.tau,
        deform_augment=args.deform_augment,
        val_every=max(1, args.steps // 4),
        val_pairs=8,
        checkpoint_every=max(1, min(500, args.steps)),
        log_every=max(1, min(10, args.steps)),
        num_workers=args.num_workers,
        regnet={"ch": args.ch, "depth": args.depth, "ts": 5},
        autoencoder={"steps": args.ae_steps, "crop": args.ae_crop, "lr": args.ae_lr},
    )


def run_name(args: argparse.Namespace, loss: str) -> str:
    return (
        f"{loss}_s{args.steps}_lr{args.lr:g}_ch{args.ch}d{args.depth}_neg{args.num_negatives}"
        f"_ae{args.ae_steps}c{args.ae_crop}_seed{args.seed}"
        + (f"_hlr{args.hypernet_lr:g}" if args.hypernet_lr is not None else "")
        + (f"_tau{args.tau:g}" if args.tau != 0.007 else "")
        + (f"_def{args.deform_augment:g}" if args.deform_augment else "")
    )


def train_method(args, loss: str, aligned: dict[int, dict[str, Path]], train_ids, runs: Path):
    from contrareg_bids.training.data import VolumeRecord
    from contrareg_bids.training.pipeline import train

    def records(mod: str) -> list[VolumeRecord]:
        return [
            VolumeRecord(
                image=aligned[c][mod],
                subject=str(c),
                mask=aligned[c]["mask"],
                labels=aligned[c]["labels"],
            )
            for c in train_ids
        ]

    out_dir = runs / run_name(args, loss)
    bundle = out_dir / "model.safetensors"
    if bundle.exists():
        log(f"{loss}: bundle exists, reusing {bundle}")
        return bundle, 0.0
    cfg = make_config(args, loss)
    log(f"{loss}: training {cfg.steps} steps (lr {cfg.lr:g}) -> {out_dir}")
    t0 = time.perf_counter()
    res = train(
        records("T2w"), records("T1w"), cfg, out_dir, modalities=("T2w", "T1w"),
        progress=args.progress,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    log(f"{loss}: done in {wall / 60:.1f} min; last validation {res.last_val}")
    return res.bundle, wall


def step_times(run_dir: Path) -> dict[str, float]:
    """Median seconds per registration step from ``train.csv`` (first logged row, which
    includes the loader start, left out) and the autoencoder pretraining time."""
    rows = list(csv.DictReader((run_dir / "train.csv").open()))
    rates = [float(r["it_per_s"]) for r in rows[1:]] or [float(r["it_per_s"]) for r in rows]
    out = {
        "step_s": statistics.median(1.0 / r for r in rates),
        "train_s": float(rows[-1]["time_s"]),
    }
    ae_s = 0.0
    for role in ("moving", "fixed", "suppretrain"):
        p = run_dir / "autoencoders" / role / "loss.csv"
        if p.exists():
            ae_rows = list(csv.DictReader(p.open()))
            if ae_rows and ae_rows[-1].get("time_s"):
                ae_s += float(ae_rows[-1]["time_s"])
    out["ae_s"] = ae_s
    val = run_dir / "val.csv"
    if val.exists():
        vrows = [r for r in csv.DictReader(val.open()) if r.get("val_dice")]
        if vrows:
            out["val_dice_last"] = float(vrows[-1]["val_dice"])
    return out


def interleaved_step_times(args, methods, mov: dict, fix: dict, repeats: int = 8) -> dict:
    """Median seconds of one training step (forward, objective, backward) per method, the
    methods timed alternately on one real pair so that both see the same machine load (the
    ``train.csv`` rates come from separate runs at different times)."""
    import torch

    from contrareg_bids.nn.autoencoder import Autoencoder
    from contrareg_bids.nn.model import ContraRegNet
    from contrareg_bids.training.objective import RegistrationObjective

    def tensor(a):
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]

    batch = {
        "moving": tensor(mov["T2w"]),
        "fixed": tensor(fix["T1w"]),
        "moving_mask": tensor(mov["mask"] > 0),
        "fixed_mask": tensor(fix["mask"] > 0),
    }
    steps = {}
    for loss in methods:
        cfg = make_config(args, loss)
        torch.manual_seed(0)
        net = ContraRegNet(cfg.regnet)
        contrastive = cfg.base_loss in ("mcr", "cr")  # also their variants (mcr+mi, ...)
        aes = {"moving": Autoencoder(), "fixed": Autoencoder()} if contrastive else None
        objective = RegistrationObjective(cfg, aes)
        gen = torch.Generator().manual_seed(0)

        def step(net=net, objective=objective, gen=gen):
            lam = torch.full((1, 1), 0.5)
            out = net(batch["moving"], batch["fixed"], lam)
            objective(batch, out, lam, gen)["loss"].backward()

        step()  # warm-up
        steps[loss] = step
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):
        for k, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


# ----------------------------------------------------------------------------- evaluation


def evaluate(bundle_path: Path, data, pairs, lambdas) -> tuple[SweepResult, list[float]]:
    """The package's lambda sweep (:func:`contrareg_bids.evaluation.run_sweep`: Dice over
    the tissues, folding % in the fixed brain mask and over the grid, std log|J| in the mask)
    of every pair, and the wall times of one plain inference call per pair."""
    from contrareg_bids.evaluation import LabelledPair, run_sweep
    from contrareg_bids.io.bundle import load_model

    bundle = load_model(bundle_path)
    times = []
    for a, b in pairs:
        t0 = time.perf_counter()
        register(bundle.regnet, data[a]["T2w"], data[b]["T1w"], lam=0.1, device="cpu")
        times.append(time.perf_counter() - t0)
    labelled = [
        LabelledPair(
            data[a]["T2w"], data[b]["T1w"], data[a]["labels"], data[b]["labels"], data[b]["mask"]
        )
        for a, b in pairs
    ]
    result = run_sweep(
        [bundle],
        labelled,
        lambdas=lambdas,
        names=["method"],
        device="cpu",
        labels=TISSUES,
        fold_limit=FOLD_LIMIT,
        progress=False,
        plots=False,
    )
    return result, times


def _bench_row(summary: dict, rows: list[dict]) -> dict:
    """A summary row of evaluation.table in this benchmark's report keys, with the per-pair
    Dice (in pair order) that the paired comparisons need."""
    lam = summary["lambda"]
    return {
        "lambda": lam,
        "dice": summary["dice"],
        "dice_sd": summary["dice_sd"],
        "fold": summary["folding_percent"],
        "fold_grid": summary["folding_percent_grid"],
        "sdlogj": summary["std_log_jacobian"],
        "pair_dice": [float(r["dice"]) for r in rows if r["lambda"] == lam],
    }


def summarise(result: SweepResult) -> list[dict]:
    """Per lambda: means over pairs (:func:`contrareg_bids.evaluation.summarize`)."""
    return [_bench_row(s, result.rows) for s in result.summary]


def best_row(result: SweepResult) -> dict | None:
    """The best Dice among the lambdas with < FOLD_LIMIT % folding in the brain mask
    (:func:`contrareg_bids.evaluation.best_lambda_table`); None when no lambda is under it."""
    (best,) = result.best
    return _bench_row(best, result.rows) if best["meets_limit"] else None


# ----------------------------------------------------------------------------- reporting


def _paired(a: list[float], b: list[float]) -> str:
    d = paired_difference(a, b)  # SD with ddof 1 (this script used ddof 0 before)
    p = "n/a" if np.isnan(d.p) else f"{d.p:.3g}"
    return (
        f"higher on {d.better} of {d.n} pairs, paired difference {d.mean:+.3f} ± {d.sd:.3f} "
        f"(ddof 1, Wilcoxon p {p})"
    )


def comparison_text(affine: dict, best: dict, rows: dict) -> str:
    """Plain statements of how the methods compare (the numbers decide the wording)."""
    parts = []
    m, i = best.get("mcr"), best.get("mi")
    if m and i:
        diff = m["dice"] - i["dice"]
        if abs(diff) < 0.005:
            verdict = "ties with"
        else:
            verdict = "is above" if diff > 0 else "is below"
        parts.append(
            f"At its best lambda with < {FOLD_LIMIT} % folding, mCR ({m['dice']:.3f} at "
            f"lambda {m['lambda']:g}) {verdict} MI ({i['dice']:.3f} at lambda "
            f"{i['lambda']:g}): {diff:+.3f} Dice, {_paired(m['pair_dice'], i['pair_dice'])}."
        )
    for key, r in best.items():
        if r is None:
            continue
        gain = r["dice"] - affine["dice"]
        word = "improves on" if gain > 0.005 else ("matches" if gain > -0.005 else "is below")
        parts.append(
            f"{METHOD_NAMES.get(key, key)} {word} affine-only alignment "
            f"({affine['dice']:.3f}; {gain:+.3f} Dice, "
            f"{_paired(r['pair_dice'], affine['pair_dice'])})."
        )
    for key, rs in rows.items():
        dice = [r["dice"] for r in rs]
        sd = [r["sdlogj"] for r in rs]
        # flat in Dice AND in smoothness: a curve whose std log|J| halves does respond
        if max(dice) - min(dice) < 0.01 and max(sd) - min(sd) < 0.2 * max(sd):
            parts.append(
                f"{METHOD_NAMES.get(key, key)} barely responds to lambda: over the sweep its "
                f"Dice spans {min(dice):.3f}-{max(dice):.3f} and std log|J| "
                f"{min(sd):.3f}-{max(sd):.3f}, so at this training length the hypernetwork "
                "conditioning has not been learned (lambda = 1 should give an identity-like "
                "warp)."
            )
        elif dice[-1] > dice[0]:
            parts.append(
                f"{METHOD_NAMES.get(key, key)} responds to lambda: from lambda "
                f"{rs[0]['lambda']:g} to {rs[-1]['lambda']:g} its Dice goes {dice[0]:.3f} -> "
                f"{dice[-1]:.3f} and std log|J| {sd[0]:.3f} -> {sd[-1]:.3f}, so its smoothest "
                "warps are its best here."
            )
        else:
            parts.append(
                f"{METHOD_NAMES.get(key, key)} responds to lambda: from lambda "
                f"{rs[0]['lambda']:g} to {rs[-1]['lambda']:g} its Dice goes {dice[0]:.3f} -> "
                f"{dice[-1]:.3f} and std log|J| {sd[0]:.3f} -> {sd[-1]:.3f}."
            )
    return " ".join(parts)


# ----------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    default_tf = os.environ.get("TEMPLATEFLOW_HOME") or str(
        REPO.parent / "shared" / "templateflow"
    )
    p.add_argument("--templateflow-home", default=default_tf, help="holds tpl-Serag2012/")
    p.add_argument("--work-dir", default="/tmp/contrareg-atlas-bench", help="outside the repo")
    p.add_argument("--factor", type=int, default=3, help="downsampling factor (see FACTOR_NOTE)")
    p.add_argument("--reference", type=int, default=36, help="cohort of the affine space")
    p.add_argument("--affine-modality", choices=("T1w", "T2w"), default="T2w")
    p.add_argument("--held-out", type=int, nargs="+", default=[31, 35, 39, 43])
    p.add_argument("--methods", nargs="+", default=["mcr", "mi"])
    p.add_argument("--steps", type=int, default=500, help="registration training steps")
    p.add_argument("--lr", type=float, default=5e-4, help="registration learning rate")
    p.add_argument(
        "--hypernet-lr",
        type=float,
        default=5e-5,
        help="hypernetwork learning rate (TrainConfig.hypernet_lr; the CPU preset's value)",
    )
    p.add_argument("--ae-steps", type=int, default=300, help="autoencoder pretraining steps")
    p.add_argument("--ae-crop", type=int, default=48)
    p.add_argument("--ae-lr", type=float, default=3e-4)
    p.add_argument("--ch", type=int, default=16)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--num-negatives", type=int, default=256)
    p.add_argument("--tau", type=float, default=0.007, help="PatchNCE temperature (paper 0.007)")
    p.add_argument("--deform-augment", type=float, default=0.0, help="TrainConfig.deform_augment")
    p.add_argument("--num-workers", type=int, default=None, help="DataLoader workers")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (0: torch's default); see THREADS_NOTE",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lambdas", type=float, nargs="+", default=LAMBDAS)
    p.add_argument("--progress", action="store_true", help="tqdm bars")
    p.add_argument("--write-docs", type=Path, default=None, help="update this markdown file")
    args = p.parse_args(argv)
    work = Path(args.work_dir).resolve()
    if work == REPO or REPO in work.parents:
        p.error(f"--work-dir {work} is inside the repository: the atlas terms forbid that")
    unknown = sorted(set(args.held_out) - set(COHORTS))
    if unknown or args.reference not in COHORTS:
        p.error(f"cohorts are {COHORTS[0]}..{COHORTS[-1]}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    root = Path(args.templateflow_home)
    missing = [c for c in COHORTS if not atlas_file(root, c, "T1w").exists()]
    if missing:
        print(
            f"error: the development atlas is not at {root / TEMPLATE} (missing cohorts "
            f"{missing[:3]}...). Set TEMPLATEFLOW_HOME or --templateflow-home to the folder "
            "holding tpl-Serag2012 (../shared/templateflow next to the repository).",
            file=sys.stderr,
        )
        return 2

    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    work = Path(args.work_dir)
    command = command_line("bench_train_atlas.py", argv, env=("TEMPLATEFLOW_HOME",))
    print(f"# {command}")
    print(
        f"# torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} torch threads, work dir {work}"
    )

    # 1-2. preprocessing and affine pre-alignment (cached)
    t0 = time.perf_counter()
    pre_dir = work / f"preproc_f{args.factor}"
    aff_dir = work / f"affine_f{args.factor}_ref{args.reference}{args.affine_modality}"
    prep_time_file = aff_dir / "stage_time.json"
    prep_cached = prep_time_file.exists()
    pre = {c: preprocess_cohort(root, c, args.factor, pre_dir) for c in COHORTS}
    aligned = affine_align(pre, args.reference, args.affine_modality, aff_dir)
    t_prep = time.perf_counter() - t0
    if prep_cached:  # report the time the stage took when it ran
        t_prep = float(json.loads(prep_time_file.read_text())["seconds"])
    else:
        prep_time_file.write_text(json.dumps({"seconds": t_prep}))
    data = {c: load_volumes(p) for c, p in aligned.items()}
    raw = {c: load_volumes(p) for c, p in pre.items()}
    shape = data[args.reference]["T1w"].shape
    import nibabel as nib

    zooms = nib.load(aligned[args.reference]["T1w"]).header.get_zooms()[:3]
    log(f"preprocessing + affine: {t_prep:.0f} s; grid {shape} at {zooms[0]:.3f} mm")

    held = sorted(args.held_out)
    train_ids = [c for c in COHORTS if c not in held]
    pairs = [(a, b) for a in held for b in held if a != b]

    # baselines without learning: the original grid (no alignment) and affine-only
    from contrareg_bids.metrics import mean_dice

    def dice_list(src):
        return [mean_dice(src[a]["labels"], src[b]["labels"], labels=TISSUES) for a, b in pairs]

    d_raw, d_aff = dice_list(raw), dice_list(data)
    affine = {
        "dice": float(np.mean(d_aff)),
        "dice_sd": float(np.std(d_aff)),
        "pair_dice": [float(d) for d in d_aff],
    }
    log(
        f"held-out pairs: {len(pairs)}; Dice without alignment {np.mean(d_raw):.3f}, "
        f"affine-only {affine['dice']:.3f}"
    )

    # 3-4. training
    runs = work / "runs"
    walls, timings, bundles = {}, {}, {}
    for loss in args.methods:
        bundles[loss], walls[loss] = train_method(args, loss, aligned, train_ids, runs)
        timings[loss] = step_times(runs / run_name(args, loss))

    # 5. evaluation
    results, infer = {}, {}
    t_eval0 = time.perf_counter()
    sweeps = {}
    for loss in args.methods:
        sweeps[loss], times = evaluate(bundles[loss], data, pairs, args.lambdas)
        results[loss] = summarise(sweeps[loss])
        infer[loss] = statistics.median(times)
        log(f"{loss}: evaluated, inference {infer[loss]:.2f} s per pair")
    t_eval = time.perf_counter() - t_eval0
    step_iso = interleaved_step_times(args, args.methods, data[train_ids[0]], data[train_ids[-1]])
    log("interleaved step times: " + ", ".join(f"{k} {v:.3f} s" for k, v in step_iso.items()))
    total = time.perf_counter() - t_start
    best = {k: best_row(v) for k, v in sweeps.items()}
    stage_total = t_prep + t_eval + sum(t["ae_s"] + t["train_s"] for t in timings.values())
    stages = [f"preprocessing + affine {t_prep / 60:.1f} min"]
    for k in args.methods:
        t = timings[k]
        ae = f"autoencoders {t['ae_s'] / 60:.1f} min + " if t["ae_s"] else ""
        stages.append(f"{METHOD_NAMES.get(k, k)} {ae}registration {t['train_s'] / 60:.1f} min")
    stages.append(f"evaluation {t_eval / 60:.1f} min")
    total_line = f"Total wall time: {stage_total / 60:.1f} min ({', '.join(stages)})."
    if prep_cached or not all(walls.values()):
        total_line += (
            " Cached stages count with the time they took when they ran (from their logs); "
            f"this invocation reused them and took {total / 60:.1f} min."
        )
    (work / "results.json").write_text(
        json.dumps(
            {
                "command": command,
                "affine": affine,
                "rows": results,
                "best": best,
                "timings": timings,
                "inference_s": infer,
                "interleaved_step_s": step_iso,
                "total_s": total,
                "stage_total_s": stage_total,
            },
            indent=1,
        )
    )

    # 6. report
    cfg = make_config(args, args.methods[0])
    from contrareg_bids.training.data import split_subjects

    _, val_ids = split_subjects([str(c) for c in train_ids], cfg.val_fraction, cfg.seed)
    sizes = (
        f"grid {shape[0]}x{shape[1]}x{shape[2]} at {zooms[0]:.2f} mm (atlas 117x159x126 at "
        f"0.86 mm, block-averaged by {args.factor}); affine reference cohort {args.reference} "
        f"({args.affine_modality}, ANTs Affine, Mattes MI); training cohorts "
        f"{', '.join(map(str, train_ids))} (the package's split keeps cohort(s) "
        f"{', '.join(val_ids) or 'none'} for validation during training); held-out "
        f"cohorts {', '.join(map(str, held))} -> {len(pairs)} ordered test pairs "
        "(moving T2w of A, fixed T1w of B)"
    )
    setup = (
        f"network ch={cfg.regnet.ch}, depth {cfg.regnet.depth}, ts {cfg.regnet.ts}, "
        f"hypernetwork lambda ~ U[0, 1]; {cfg.steps} registration steps, batch 1, Adam lr "
        f"{cfg.lr:g} (the paper's 5e-5 is for 1e5 steps; this short schedule needs a larger "
        f"one), hypernetwork lr {cfg.effective_hypernet_lr:g}; {cfg.num_negatives} negatives, "
        f"tau {cfg.tau}; alpha 0.1 (CR, mCR) / 1 (the others); "
        f"autoencoders: {cfg.autoencoder.steps} steps at crop {cfg.autoencoder.crop}, lr "
        f"{cfg.autoencoder.lr:g} (CR and mCR only); regulariser scale calibrated at a "
        f"reference deformation (after {cfg.effective_head_warmup} heads-only steps for CR, "
        f"mCR); deformation augmentation {cfg.deform_augment:g} voxels; velocity x "
        "(1 - lambda)"
    )
    best_rows = [
        ["affine only", "-", f"{affine['dice']:.3f} ± {affine['dice_sd']:.3f}", "0", "0", "0"]
    ]
    for k, r in best.items():
        if r is None:
            best_rows.append([METHOD_NAMES.get(k, k), "none < 0.5 %", "-", "-", "-", "-"])
            continue
        best_rows.append(
            [
                METHOD_NAMES.get(k, k),
                f"{r['lambda']:g}",
                f"{r['dice']:.3f} ± {r['dice_sd']:.3f}",
                f"{r['fold']:.3f}",
                f"{r['fold_grid']:.3f}",
                f"{r['sdlogj']:.3f}",
            ]
        )
    header = ["method", "lambda", "Dice", "% folding (brain)", "% folding (grid)", "std log|J|"]
    table_best = fmt_table(header, best_rows)
    full_rows = []
    for k, rows in results.items():
        for r in rows:
            full_rows.append(
                [
                    METHOD_NAMES.get(k, k),
                    f"{r['lambda']:g}",
                    f"{r['dice']:.3f} ± {r['dice_sd']:.3f}",
                    f"{r['fold']:.3f}",
                    f"{r['fold_grid']:.3f}",
                    f"{r['sdlogj']:.3f}",
                ]
            )
    table_full = fmt_table(header, full_rows)
    t_rows = []
    for k in args.methods:
        t = timings[k]
        t_rows.append(
            [
                METHOD_NAMES.get(k, k),
                f"{t['step_s']:.3f}",
                f"{t['ae_s'] / 60:.1f}" if t["ae_s"] else "-",
                f"{t['train_s'] / 60:.1f}",
                f"{infer[k]:.2f}",
                f"{t['val_dice_last']:.3f}" if "val_dice_last" in t else "-",
            ]
        )
    table_time = fmt_table(
        [
            "method",
            "median s / training step (log)",
            "AE pretraining (min)",
            "registration training (min)",
            "inference s / pair",
            "last validation Dice (all labels, lambda 0.1)",
        ],
        t_rows,
    )
    ratio = ""
    if "mcr" in timings and "mi" in timings:
        r_log = timings["mcr"]["step_s"] / timings["mi"]["step_s"]
        r_iso = step_iso["mcr"] / step_iso["mi"]
        ratio = (
            f"mCR / MI time per training step (whole step: network, integration, both "
            f"directions of the similarity, backward): {r_iso:.2f} timed alternately on one "
            f"training pair in the same process ({step_iso['mcr']:.3f} s vs "
            f"{step_iso['mi']:.3f} s, median of 8); {r_log:.2f} from the two runs' logs, which "
            "ran at different times on the shared machine, so the load differed."
        )
    sentence = comparison_text(affine, best, results)
    notes = (
        f"Dice: mean ± SD over the {len(pairs)} held-out pairs of the mean Dice over tissues "
        "{1,2,3,5,6,7,8}, moving labels warped with the forward field (one-hot linear), on the "
        "reduced grid. Without alignment (the atlas grid as distributed) the mean Dice is "
        f"{np.mean(d_raw):.3f}. Folding: % voxels with det J <= 0 inside the fixed image's brain "
        "mask (and over the whole grid); std log|J| inside the same mask. Best row: the lambda "
        f"with the best Dice among those with < {FOLD_LIMIT} % folding (brain mask), as in "
        "the paper's Table 1. Inference: one `register_arrays` call (both directions, no "
        "labels) at lambda 0.1, median over pairs."
    )
    report = "\n\n".join(
        [
            f"Command: `{command}`",
            f"Sizes: {sizes}.",
            f"Training: {setup}.",
            "Best lambda per method:\n\n" + table_best,
            "All lambdas:\n\n" + table_full,
            "Timings:\n\n" + table_time + ("\n\n" + ratio if ratio else ""),
            notes,
            FACTOR_NOTE + " " + THREADS_NOTE,
            sentence,
            total_line,
        ]
    )
    print()
    print(report)
    if args.write_docs is not None:
        machine = (
            f"Machine: {os.cpu_count()}-core CPU ({platform.machine()}), no GPU, "
            f"torch {torch.__version__}, {torch.get_num_threads()} torch thread(s); shared "
            "with other jobs, so timings are indicative."
        )
        citation = (
            "Data: the Serag 2012 spatio-temporal neonatal atlas, cohorts 28-44 weeks PMA "
            "(Serag et al., NeuroImage 59(3), 2012; tissue maps from Makropoulos et al., "
            "NeuroImage 125, 2016), Draw-EM edition, from `../shared/templateflow`. Academic "
            "use only: the atlas, its resampled copies and the weights trained here stay in "
            "the benchmark's work directory; no weights are shipped with the package."
        )
        section = "\n\n".join(
            [
                HEADING,
                "`benchmarks/bench_train_atlas.py` trains mCR and MI with the package's "
                "`train()` on the development atlas (moving T2w of cohort A -> fixed T1w of "
                "cohort B, A != B) after ANTs affine pre-alignment, and scores held-out "
                "cohort pairs over a lambda sweep.",
                machine,
                citation,
                report,
            ]
        )
        write_docs(args.write_docs, HEADING, section)
        log(f"wrote {args.write_docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
