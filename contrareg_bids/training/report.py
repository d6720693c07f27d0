"""The training report: one self-contained HTML page with the loss and validation curves.

Curves are drawn with matplotlib into SVG and embedded inline, so that the page opens
anywhere (no network, no files beside it). Inputs are the CSV logs the trainer writes:
``train.csv`` (registration), ``val.csv`` (validation) and ``autoencoders/*/loss.csv``.
"""

from __future__ import annotations

import csv
import html
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..io.atomic import write_text_atomic

__all__ = ["read_log", "svg_curves", "write_training_report"]


def read_log(path: str | os.PathLike) -> dict[str, list[float]]:
    """Columns of a trainer CSV as floats (``nan`` for empty cells); ``{}`` when absent."""
    path = Path(path)
    if not path.is_file():
        return {}
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return {}
    out: dict[str, list[float]] = {k: [] for k in rows[0]}
    for row in rows:
        for k in out:
            try:
                out[k].append(float(row.get(k) or "nan"))
            except ValueError:
                out[k].append(math.nan)
    return out


def svg_curves(
    series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    *,
    title: str,
    ylabel: str,
    log_y: bool = False,
) -> str:
    """An inline ``<svg>`` of ``(label, steps, values)`` curves (empty string when no data)."""
    series = [(lbl, x, y) for lbl, x, y in series if any(math.isfinite(v) for v in y)]
    if not series:
        return ""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.2), dpi=100)
    ax = fig.add_subplot()
    for label, x, y in series:
        ax.plot(x, y, label=label, marker="o" if len(x) < 20 else None, markersize=3)
    positive = all(v > 0 for _, _, y in series for v in y if math.isfinite(v))
    if log_y and positive:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize="small")
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})  # reproducible output
    text = buf.getvalue()
    return text[text.index("<svg") :]  # drop the XML declaration and the DOCTYPE


def _table(rows: Mapping[str, Any]) -> str:
    cells = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in rows.items()
    )
    return f"<table>{cells}</table>"


def write_training_report(
    train_dir: str | os.PathLike,
    out_html: str | os.PathLike,
    *,
    title: str,
    summary: Mapping[str, Any],
) -> Path:
    """Write ``out_html`` (atomically) from the logs in ``train_dir``.

    ``summary`` is shown as a table above the curves (model, data, settings, last
    validation). Sections without a log are left out.
    """
    train_dir = Path(train_dir)
    out_html = Path(out_html)
    train = read_log(train_dir / "train.csv")
    val = read_log(train_dir / "val.csv")
    figures: list[tuple[str, str]] = []
    if train:
        figures.append(
            (
                "Registration loss",
                svg_curves(
                    [(k, train["step"], train[k]) for k in ("loss", "sim", "reg") if k in train],
                    title="registration training",
                    ylabel="value",
                ),
            )
        )
    if val:
        for key, label in (
            ("val_sim", "similarity"),
            ("val_dice", "Dice"),
            ("val_folding_percent", "folding (%)"),
        ):
            if key in val:
                figures.append(
                    (
                        f"Validation {label}",
                        svg_curves(
                            [(key, val["step"], val[key])],
                            title=f"validation {label}",
                            ylabel=label,
                        ),
                    )
                )
    ae = []
    for log in sorted((train_dir / "autoencoders").glob("*/loss.csv")):
        data = read_log(log)
        if data:
            ae.append((log.parent.name, data["step"], data["loss"]))
    if ae:
        figures.append(
            (
                "Autoencoder pretraining",
                svg_curves(
                    ae,
                    title="autoencoders (L1 + local NCC)",
                    ylabel="loss",
                    log_y=True,
                ),
            )
        )
    body = [f"<h1>{html.escape(title)}</h1>", _table(summary)]
    for heading, svg in figures:
        if svg:
            body.append(f"<h2>{html.escape(heading)}</h2>\n<figure>{svg}</figure>")
    if not any(svg for _, svg in figures):
        body.append("<p>No training log was found.</p>")
    page = (
        "<!DOCTYPE html>\n<html lang='en'>\n<head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>\n<style>"
        "body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:.2em .6em;"
        "text-align:left;vertical-align:top}th{background:#f4f4f4}svg{max-width:100%;height:auto}"
        "</style></head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )
    out_html.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_html, page)
    return out_html
