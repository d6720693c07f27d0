"""Curves of each sweep metric against lambda, one line per method (the paper's Fig. 3).

Figures are built with ``matplotlib.figure.Figure`` (no pyplot state, no display needed).
Methods without lambda (ANTs SyN) are drawn as horizontal dashed lines at their value.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from ..io.atomic import atomic_output
from ..metrics import FOLDING_LIMIT_PERCENT

__all__ = ["PLOT_METRICS", "plot_sweep"]

#: Summary column -> axis label, in panel order.
PLOT_METRICS = {
    "dice": "Dice",
    "dice30": "Dice30",
    "dice_p30": "Dice, 30th percentile",
    "folding_percent": "% folding voxels",
    "std_log_jacobian": "std log|J|",
}


def _draw(ax, summary: Sequence[dict], metric: str, fold_limit: float | None) -> None:
    lams = [r["lambda"] for r in summary if r["lambda"] is not None]
    span = (min(lams), max(lams)) if lams else (0.0, 1.0)
    for method in dict.fromkeys(r["method"] for r in summary):
        rows = [r for r in summary if r["method"] == method]
        with_lam = [r for r in rows if r["lambda"] is not None]
        if with_lam:
            ax.plot(
                [r["lambda"] for r in with_lam],
                [r[metric] for r in with_lam],
                marker="o",
                markersize=3,
                label=method,
            )
        for r in rows:
            if r["lambda"] is None and not math.isnan(r[metric]):
                ax.hlines(r[metric], *span, linestyles="--", colors="0.3", label=method)
    if metric == "folding_percent" and fold_limit is not None:
        ax.axhline(fold_limit, color="red", linewidth=0.8, linestyle=":", label="limit")
    ax.set_xlabel("lambda")
    ax.set_ylabel(PLOT_METRICS[metric])
    ax.grid(alpha=0.3)


def plot_sweep(
    summary: Sequence[dict],
    out_dir: str | os.PathLike,
    *,
    formats: Sequence[str] = ("svg", "png"),
    fold_limit: float | None = FOLDING_LIMIT_PERCENT,
    prefix: str = "sweep",
) -> list[Path]:
    """Write one figure per metric (``<prefix>_<metric>.<fmt>``) and one with all panels
    (``<prefix>.<fmt>``); returns the paths written."""
    from matplotlib.figure import Figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    metrics = list(PLOT_METRICS)
    for metric in metrics:
        fig = Figure(figsize=(4.5, 3.2), layout="constrained")
        ax = fig.add_subplot()
        _draw(ax, summary, metric, fold_limit)
        ax.legend(fontsize="small")
        for fmt in formats:
            written.append(_save(fig, out / f"{prefix}_{metric}.{fmt}", dpi=120))
    fig = Figure(figsize=(4.0 * len(metrics), 3.4), layout="constrained")
    axes = fig.subplots(1, len(metrics))
    for ax, metric in zip(axes, metrics, strict=True):
        _draw(ax, summary, metric, fold_limit)
    handles, labels = axes[0].get_legend_handles_labels()
    uniq = dict(zip(labels, handles, strict=True))
    fig.legend(uniq.values(), uniq.keys(), loc="outside right upper", fontsize="small")
    for fmt in formats:
        written.append(_save(fig, out / f"{prefix}.{fmt}", dpi=110))
    return written


def _save(fig, path: Path, dpi: int) -> Path:
    """``fig`` to ``path`` whole or not at all (the format from the extension)."""
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip("."))
    return path
