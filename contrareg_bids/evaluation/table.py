"""Tidy rows of a lambda sweep -> per (method, lambda) summary -> the best-lambda table.

Rows are plain dicts (one per method x lambda x pair) so that they can be written as TSV,
read back and re-summarised without the models. ``lambda`` is ``None`` for methods without
a regularisation weight (ANTs SyN), written ``n/a`` as in BIDS tables.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io.atomic import write_tsv_atomic
from ..metrics import FOLDING_LIMIT_PERCENT, dice30, dice_percentile30

__all__ = [
    "ROW_COLUMNS",
    "SUMMARY_COLUMNS",
    "best_lambda_table",
    "format_markdown",
    "read_rows_tsv",
    "summarize",
    "write_table_tsv",
]

NA = "n/a"
#: Columns of the tidy per-pair table (``sweep.tsv``).
ROW_COLUMNS = (
    "method",
    "lambda",
    "pair",
    "dice",
    "folding_percent",
    "folding_percent_grid",
    "std_log_jacobian",
    "seconds",
)
#: Columns of the per (method, lambda) summary and of the best-lambda table.
SUMMARY_COLUMNS = (
    "method",
    "lambda",
    "n_pairs",
    "dice",
    "dice_sd",
    "dice30",
    "dice_p30",
    "folding_percent",
    "folding_percent_grid",
    "std_log_jacobian",
    "seconds",
)
_INT_COLUMNS = {"n_pairs"}
_STR_COLUMNS = {"method", "pair", "note"}


def _fmt(value: Any) -> str:
    if value is None:
        return NA
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return NA if math.isnan(value) else f"{value:.6g}"
    return str(value)


def _parse(key: str, text: str) -> Any:
    if key in _STR_COLUMNS:
        return text
    if text in (NA, ""):
        return None if key == "lambda" else float("nan")
    if text in ("true", "false"):
        return text == "true"
    return int(text) if key in _INT_COLUMNS else float(text)


def write_table_tsv(rows: Sequence[dict], path: str | os.PathLike, columns: Sequence[str]) -> Path:
    """Write dicts as a TSV with the given column order (missing keys -> ``n/a``), whole or
    not at all (a failed write leaves the previous table)."""
    return write_tsv_atomic(path, columns, ([_fmt(row.get(c)) for c in columns] for row in rows))


def read_rows_tsv(path: str | os.PathLike) -> list[dict]:
    """Read a table written by :func:`write_table_tsv` back into typed dicts."""
    with Path(path).open(newline="") as fh:
        return [
            {k: _parse(k, v) for k, v in row.items()} for row in csv.DictReader(fh, delimiter="\t")
        ]


def _mean(values: Iterable[float]) -> float:
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else float("nan")


def _lam_key(lam: float | None) -> float:
    return -1.0 if lam is None else float(lam)


def summarize(rows: Sequence[dict]) -> list[dict]:
    """Aggregate per-pair rows over pairs, per (method, lambda), in first-seen method order.

    Dice: mean over pairs of the per-pair mean Dice; ``dice30``: mean of the lowest 30 %;
    ``dice_p30``: the 30th percentile; folding and std log|J|: means over pairs;
    ``seconds``: median time of one registration.
    """
    groups: dict[tuple[str, float | None], list[dict]] = {}
    for row in rows:
        lam = row.get("lambda")
        key = (row["method"], None if lam is None else float(lam))
        groups.setdefault(key, []).append(row)
    order = list(dict.fromkeys(m for m, _ in groups))
    out = []
    for method in order:
        keys = sorted((k for k in groups if k[0] == method), key=lambda k: _lam_key(k[1]))
        for key in keys:
            grp = groups[key]
            dice = np.asarray([r["dice"] for r in grp], dtype=np.float64)
            valid = dice[~np.isnan(dice)]
            secs = [r.get("seconds") for r in grp if r.get("seconds") is not None]
            out.append(
                {
                    "method": method,
                    "lambda": key[1],
                    "n_pairs": len(grp),
                    "dice": float(valid.mean()) if valid.size else float("nan"),
                    "dice_sd": float(valid.std()) if valid.size else float("nan"),
                    "dice30": dice30(dice),
                    "dice_p30": dice_percentile30(dice),
                    "folding_percent": _mean(r.get("folding_percent") for r in grp),
                    "folding_percent_grid": _mean(r.get("folding_percent_grid") for r in grp),
                    "std_log_jacobian": _mean(r.get("std_log_jacobian") for r in grp),
                    "seconds": float(np.median(secs)) if secs else float("nan"),
                }
            )
    return out


def best_lambda_table(
    summary: Sequence[dict], fold_limit: float = FOLDING_LIMIT_PERCENT
) -> list[dict]:
    """Per method, the summary row with the best Dice among those with mean folding
    ``< fold_limit`` % (the paper's Table 1 rule; strict, as "< 0.5 %").

    A method with no lambda under the limit gets its lowest-folding row with
    ``meets_limit = False`` (and ``note``), so that it is reported rather than dropped;
    a method without lambda (ANTs) is its single row, flagged the same way.
    """
    out = []
    for method in dict.fromkeys(r["method"] for r in summary):
        rows = [r for r in summary if r["method"] == method]
        ok = [r for r in rows if r["folding_percent"] < fold_limit]
        if ok:
            best = max(ok, key=lambda r: -math.inf if math.isnan(r["dice"]) else r["dice"])
            out.append({**best, "meets_limit": True, "note": ""})
        else:
            least = min(rows, key=lambda r: r["folding_percent"])
            note = f"no lambda with < {fold_limit:g} % folding; least folding shown"
            out.append({**least, "meets_limit": False, "note": note})
    return out


_MD_HEADER = {
    "method": "method",
    "lambda": "opt. lambda",
    "n_pairs": "pairs",
    "dice": "Dice",
    "dice30": "Dice30",
    "dice_p30": "Dice p30",
    "folding_percent": "% folds",
    "std_log_jacobian": "sd log|J|",
    "seconds": "s / pair",
}


def format_markdown(table: Sequence[dict], fold_limit: float = FOLDING_LIMIT_PERCENT) -> str:
    """The best-lambda table as markdown, in the layout of the paper's Table 1."""
    cols = list(_MD_HEADER)
    lines = [
        "| " + " | ".join(_MD_HEADER[c] for c in cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
    ]
    for row in table:
        cells = []
        for c in cols:
            v = row.get(c)
            if c == "lambda":
                cells.append("n/a" if v is None else f"{v:g}")
            elif c in ("method", "n_pairs"):
                cells.append(str(v))
            elif c == "dice":
                cells.append(f"{v:.3f} ± {row['dice_sd']:.3f}")
            else:
                cells.append(f"{float(v):.2f}" if c == "seconds" else f"{float(v):.3f}")
        if not row.get("meets_limit", True):
            cells[0] += " (*)"
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        f"Best Dice among the lambdas with < {fold_limit:g} % folding voxels (mean over "
        "pairs, inside the fixed mask). Dice30: mean of the lowest 30 % of pair Dice; "
        "Dice p30: their 30th percentile."
    ]
    if any(not r.get("meets_limit", True) for r in table):
        notes.append(f"(*) no setting under {fold_limit:g} % folding: least folding shown.")
    return "\n".join(lines) + "\n\n" + " ".join(notes) + "\n"
