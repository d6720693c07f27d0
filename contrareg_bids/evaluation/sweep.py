"""Register labelled pairs with one or more bundles over a lambda sweep (and ANTs SyN).

One lambda-conditioned bundle covers every regularisation weight, so its whole
accuracy/regularity trade-off is measured by re-running inference at each lambda of
:data:`PAPER_LAMBDAS`. Per pair and setting: mean Dice over labels (moving labels warped
with the forward field, one-hot linear), % folding voxels and std log|J| of the forward
field inside the fixed mask (and folding over the whole grid). Over pairs:
:func:`~contrareg_bids.evaluation.table.summarize`; the paper's table:
:func:`~contrareg_bids.evaluation.table.best_lambda_table`.

Pairs are iterated in the outer loop so that only one pair's arrays are in memory at a
time, whatever the number of pairs.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import __version__
from ..io.atomic import write_text_atomic
from ..io.images import read_labels, read_volume
from ..metrics import FOLDING_LIMIT_PERCENT, registration_metrics
from ..processing.register import SYN_ITERATIONS
from .plots import plot_sweep
from .table import (
    ROW_COLUMNS,
    SUMMARY_COLUMNS,
    best_lambda_table,
    format_markdown,
    summarize,
    write_table_tsv,
)

if TYPE_CHECKING:
    from ..io.bundle import ModelBundle

__all__ = [
    "ANTS_METHOD",
    "FOLD_LIMIT",
    "PAPER_LAMBDAS",
    "LabelledPair",
    "SweepResult",
    "evaluate_pair",
    "load_pair",
    "read_pairs_tsv",
    "run_sweep",
]

#: The 17 test-time lambdas (docs/method.md, Evaluation): 8 values
#: in [0, 0.2) at a step of 0.025 and 9 in [0.2, 1] at a step of 0.1. Every optimal lambda
#: of the paper's Table 1 (0, 0.05, 0.125, 0.175, 0.3) lies on this grid.
PAPER_LAMBDAS: tuple[float, ...] = (
    *(round(0.025 * i, 3) for i in range(8)),
    *(round(0.2 + 0.1 * i, 1) for i in range(9)),
)
#: The paper's folding limit (%) for the best-lambda table.
FOLD_LIMIT = FOLDING_LIMIT_PERCENT  # (the evaluation's name for it)
#: Method name of the ANTs SyN rows.
ANTS_METHOD = "ants-syn"

ArrayOrPath = np.ndarray | str | os.PathLike


@dataclass
class LabelledPair:
    """One evaluation pair on one grid: arrays or NIfTI paths.

    ``affine`` (voxel -> RAS mm) is used only to give ANTs the voxel size when the pair is
    given as arrays; for files it is read from ``fixed``.
    """

    moving: ArrayOrPath
    fixed: ArrayOrPath
    moving_labels: ArrayOrPath
    fixed_labels: ArrayOrPath
    fixed_mask: ArrayOrPath | None = None
    name: str | None = None
    affine: np.ndarray | None = None


@dataclass
class _Loaded:
    moving: np.ndarray
    fixed: np.ndarray
    moving_labels: np.ndarray
    fixed_labels: np.ndarray
    fixed_mask: np.ndarray | None
    affine: np.ndarray


@dataclass
class SweepResult:
    """Per-pair rows, the per (method, lambda) summary, the best-lambda table, files."""

    rows: list[dict]
    summary: list[dict]
    best: list[dict]
    files: dict[str, Path] = field(default_factory=dict)


def read_pairs_tsv(path: str | os.PathLike) -> list[LabelledPair]:
    """Pairs from a TSV with columns ``moving``, ``fixed``, ``moving_labels``,
    ``fixed_labels`` and optionally ``fixed_mask`` and ``pair`` (a name); relative paths are
    relative to the TSV."""
    path = Path(path)
    base = path.parent
    required = ("moving", "fixed", "moving_labels", "fixed_labels")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; need {list(required)}")
        pairs = []
        for i, row in enumerate(reader, start=2):

            def resolve(key: str, row=row, i=i) -> Path | None:
                value = (row.get(key) or "").strip()
                if not value or value == "n/a":
                    if key in required:
                        raise ValueError(f"{path}, line {i}: empty {key!r}")
                    return None
                p = Path(value)
                return p if p.is_absolute() else base / p

            name = (row.get("pair") or "").strip() or None
            mov, fix, mov_lab, fix_lab = (resolve(k) for k in required)
            pairs.append(
                LabelledPair(mov, fix, mov_lab, fix_lab, resolve("fixed_mask"), name=name)
            )
    if not pairs:
        raise ValueError(f"{path}: no pairs")
    return pairs


def _read(
    value: ArrayOrPath, what: str, labels: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """A 3-D array (float32 image, or int64 ``labels``) and, for a file, its affine."""
    if isinstance(value, str | os.PathLike):
        arr, img = read_labels(value) if labels else read_volume(value)
        return arr, img.affine
    arr = np.asarray(value)
    if arr.ndim != 3:
        raise ValueError(f"{what} must be a 3-D array, got shape {arr.shape}")
    return arr, None


def load_pair(pair: LabelledPair) -> _Loaded:
    """Read a pair's arrays (images float32, labels int64, mask bool) and check the grid."""
    mov, aff = _read(pair.moving, "moving")
    fix, aff_f = _read(pair.fixed, "fixed")
    ml, _ = _read(pair.moving_labels, "moving_labels", labels=True)
    fl, _ = _read(pair.fixed_labels, "fixed_labels", labels=True)
    mask = None if pair.fixed_mask is None else _read(pair.fixed_mask, "fixed_mask")[0] > 0
    shapes = {"moving": mov.shape, "fixed": fix.shape, "moving_labels": ml.shape}
    shapes["fixed_labels"] = fl.shape
    if mask is not None:
        shapes["fixed_mask"] = mask.shape
    if len(set(shapes.values())) != 1:
        raise ValueError(f"pair {pair.name or ''}: arrays must share one grid, got {shapes}")
    affine = pair.affine if pair.affine is not None else (aff_f if aff_f is not None else aff)
    return _Loaded(
        mov.astype(np.float32),
        fix.astype(np.float32),
        np.rint(ml).astype(np.int64),
        np.rint(fl).astype(np.int64),
        mask,
        np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64),
    )


def evaluate_pair(
    moved_labels: np.ndarray,
    fixed_labels: np.ndarray,
    forward_disp: np.ndarray,
    fixed_mask: np.ndarray | None = None,
    labels: Sequence[int] | None = None,
) -> dict[str, float]:
    """The sweep's row of :func:`~contrareg_bids.metrics.registration_metrics`: Dice (mean
    over ``labels``, default those of the fixed map, so that a structure the warp loses counts
    as 0), % folding and std log|J| of the forward field (voxels) inside ``fixed_mask`` (whole
    grid when None), and % folding over the whole grid."""
    if labels is None:
        labels = [int(v) for v in np.unique(fixed_labels) if v != 0]
    m = registration_metrics(fixed_labels, moved_labels, forward_disp, fixed_mask, labels)
    return {
        "dice": m["mean_dice"],
        "folding_percent": m["folding_percent"],
        "folding_percent_grid": m["folding_percent_grid"],
        "std_log_jacobian": m["std_log_jacobian"],
    }


def _default_name(pair: LabelledPair, index: int) -> str:
    if pair.name:
        return pair.name
    if isinstance(pair.moving, str | os.PathLike) and isinstance(pair.fixed, str | os.PathLike):
        stem = [Path(p).name.split(".")[0] for p in (pair.moving, pair.fixed)]
        return f"{index + 1:03d}_{stem[0]}_to_{stem[1]}"
    return f"pair-{index + 1:03d}"


def _method_names(bundles: Sequence[ModelBundle], names: Sequence[str] | None) -> list[str]:
    if names is not None:
        if len(names) != len(bundles):
            raise ValueError(f"{len(names)} names for {len(bundles)} bundles")
        out = list(names)
    else:
        out = [b.metadata.loss for b in bundles]
    seen: dict[str, int] = {}
    unique = []
    for n in out:  # two bundles trained with the same loss stay distinguishable
        seen[n] = seen.get(n, 0) + 1
        unique.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    if ANTS_METHOD in unique:
        raise ValueError(f"{ANTS_METHOD!r} is reserved for the ANTs rows")
    return unique


def _ras_spacing_affine(affine: np.ndarray) -> np.ndarray:
    """A diagonal RAS affine with the voxel size of ``affine`` (what ANTs needs to sample
    physical space correctly; orientation does not matter for voxel displacements)."""
    return np.diag([*np.linalg.norm(np.asarray(affine)[:3, :3], axis=0), 1.0])


def ants_forward_field(
    moving: np.ndarray,
    fixed: np.ndarray,
    affine: np.ndarray,
    work: Path,
    seed: int | None = None,
    iterations: Sequence[int] = SYN_ITERATIONS,
) -> tuple[np.ndarray, float]:
    """ANTs SyN (:func:`~contrareg_bids.processing.register.ants_syn_register`) of two
    arrays on one grid; returns the forward field in voxels and the registration time."""
    from ..io.images import write_nifti
    from ..io.transforms import read_displacement_nifti
    from ..processing.register import ants_syn_register

    affine = _ras_spacing_affine(affine)
    work.mkdir(parents=True, exist_ok=True)
    mov = write_nifti(moving, affine, work / "moving.nii.gz", dtype=np.float32)
    fix = write_nifti(fixed, affine, work / "fixed.nii.gz", dtype=np.float32)
    t0 = time.perf_counter()
    res = ants_syn_register(mov, fix, work / "out", seed=seed, iterations=iterations)
    seconds = time.perf_counter() - t0
    disp, _ = read_displacement_nifti(res.forward_field)
    return disp.astype(np.float32), seconds


def _ants_pair(
    data: _Loaded, work: Path, seed: int | None, iterations: Sequence[int]
) -> tuple[np.ndarray, float]:
    return ants_forward_field(data.moving, data.fixed, data.affine, work, seed, iterations)


def warp_label_map(labels: np.ndarray, disp: np.ndarray) -> np.ndarray:
    """Labels ``(X, Y, Z)`` through a forward field ``(3, X, Y, Z)`` in voxels (one-hot linear)."""
    import torch

    from ..nn.integrate import warp_labels

    lab = torch.from_numpy(labels.astype(np.int64))[None, None]
    d = torch.from_numpy(np.ascontiguousarray(disp, dtype=np.float32))[None]
    return warp_labels(lab, d, "onehot")[0, 0].numpy()


def run_sweep(
    bundles: Sequence[str | os.PathLike | ModelBundle],
    pairs: Sequence[LabelledPair],
    out_dir: str | os.PathLike | None = None,
    *,
    lambdas: Sequence[float] = PAPER_LAMBDAS,
    names: Sequence[str] | None = None,
    ants: bool = False,
    ants_iterations: Sequence[int] = SYN_ITERATIONS,
    device: str | None = None,
    labels: Sequence[int] | None = None,
    fold_limit: float = FOLD_LIMIT,
    seed: int | None = 0,
    amp: bool = False,
    progress: bool = True,
    plots: bool = True,
    log: Callable[[str], None] | None = None,
) -> SweepResult:
    """Register every pair with every bundle at every lambda (and ANTs SyN when ``ants``).

    ``device``: ``None``/``"auto"`` picks CUDA when available. ``labels``: the labels Dice
    averages over (default: the non-zero labels of each fixed map). With ``out_dir`` the
    results are written there: ``sweep.tsv`` (one row per method x lambda x pair),
    ``summary.tsv``, ``best_lambda.tsv`` + ``.md``, ``sweep.json`` (provenance) and, with
    ``plots``, ``sweep*.svg``/``.png``.
    """
    from tqdm.auto import tqdm

    from ..io.bundle import ModelBundle, file_sha256, load_model
    from ..nn.inference import register_arrays, resolve_device

    if not pairs:
        raise ValueError("no pairs to evaluate")
    lambdas = [float(v) for v in lambdas]
    if any(not 0.0 <= v <= 1.0 for v in lambdas):
        raise ValueError(f"lambdas must be in [0, 1], got {lambdas}")
    dev = resolve_device(device)
    loaded = [b if isinstance(b, ModelBundle) else load_model(b) for b in bundles]
    methods = _method_names(loaded, names)
    if not loaded and not ants:
        raise ValueError("nothing to evaluate: give bundles and/or ants=True")
    per_pair = len(loaded) * len(lambdas) + int(ants)
    rows: list[dict] = []
    bar = tqdm(total=per_pair * len(pairs), disable=not progress, desc="sweep", unit="reg")
    try:
        for i, pair in enumerate(pairs):
            pname = _default_name(pair, i)
            data = load_pair(pair)
            for method, bundle in zip(methods, loaded, strict=True):
                hyper = bundle.regnet.hypernet is not None
                for lam in lambdas if hyper else lambdas[:1]:
                    t0 = time.perf_counter()
                    res = register_arrays(
                        bundle.regnet,
                        data.moving,
                        data.fixed,
                        lam,
                        dev,
                        moving_labels=data.moving_labels,
                        amp=amp,
                    )
                    seconds = time.perf_counter() - t0
                    scores = evaluate_pair(
                        res.moved_labels,
                        data.fixed_labels,
                        res.forward_disp,
                        data.fixed_mask,
                        labels,
                    )
                    rows.append(
                        {
                            "method": method,
                            "lambda": lam if hyper else None,
                            "pair": pname,
                            **scores,
                            "seconds": seconds,
                        }
                    )
                    bar.update(1 if hyper else len(lambdas))
            if ants:
                with tempfile.TemporaryDirectory(prefix="contrareg-eval-") as tmp:
                    disp, seconds = _ants_pair(data, Path(tmp), seed, ants_iterations)
                moved = warp_label_map(data.moving_labels, disp)
                scores = evaluate_pair(moved, data.fixed_labels, disp, data.fixed_mask, labels)
                rows.append(
                    {
                        "method": ANTS_METHOD,
                        "lambda": None,
                        "pair": pname,
                        **scores,
                        "seconds": seconds,
                    }
                )
                bar.update(1)
            if log is not None:
                log(f"pair {pname} done ({i + 1}/{len(pairs)})")
    finally:
        bar.close()
    summary = summarize(rows)
    best = best_lambda_table(summary, fold_limit)
    result = SweepResult(rows, summary, best)
    if out_dir is not None:
        out = Path(out_dir)
        files = result.files
        files["rows"] = write_table_tsv(rows, out / "sweep.tsv", ROW_COLUMNS)
        files["summary"] = write_table_tsv(summary, out / "summary.tsv", SUMMARY_COLUMNS)
        files["best"] = write_table_tsv(
            best, out / "best_lambda.tsv", (*SUMMARY_COLUMNS, "meets_limit", "note")
        )
        files["best_md"] = write_text_atomic(
            out / "best_lambda.md", format_markdown(best, fold_limit)
        )
        prov: dict[str, Any] = {
            "package_version": __version__,
            "lambdas": lambdas,
            "fold_limit_percent": fold_limit,
            "device": str(dev),
            "amp": amp,
            "labels": None if labels is None else [int(v) for v in labels],
            "methods": [],
            "ants": {"iterations": list(ants_iterations), "seed": seed} if ants else None,
            "n_pairs": len(pairs),
            "machine": platform.platform(),
        }
        for method, bundle, src in zip(methods, loaded, bundles, strict=True):
            entry = {"name": method, "loss": bundle.metadata.loss}
            if not isinstance(src, ModelBundle):
                entry.update(path=str(src), sha256=file_sha256(src))
            prov["methods"].append(entry)
        files["provenance"] = write_text_atomic(out / "sweep.json", json.dumps(prov, indent=2))
        if plots:
            for p in plot_sweep(summary, out, fold_limit=fold_limit):
                files[p.name] = p
    return result
