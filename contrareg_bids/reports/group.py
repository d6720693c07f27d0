"""Group level: every participant's metrics in one table (``OUTPUT_DIR/group_metrics.tsv``)
and one page (``OUTPUT_DIR/group.html``): a sortable table, the distribution of each metric
and the outliers flagged, with links to each subject's page."""

from __future__ import annotations

import html
import io
import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..metrics import FOLDING_LIMIT_PERCENT
from .html import page

LOGGER = logging.getLogger("contrareg_bids.group")

#: Folding above this percentage of the model grid flags a subject (docs/method.md: < 0.5 %).
MAX_FOLDING_PERCENT = FOLDING_LIMIT_PERCENT
#: A robust z-score (median/MAD) below this flags a similarity/overlap metric.
MIN_ROBUST_Z = -2.5
#: Fewest subjects for the robust z-score to mean anything.
MIN_SUBJECTS_FOR_Z = 3
#: Columns where higher is better and "far below the group" is suspicious.
HIGHER_IS_BETTER = re.compile(r"^(mean_dice|dice30|.*similarity.*|ncc|lncc|nmi|mi)$")
ID_COLUMNS = ("subject", "session")
FLAG_COLUMNS = ("outlier", "outlier_reasons")

_METRICS_RE = re.compile(
    r"^sub-(?P<sub>[A-Za-z0-9]+)(?:_ses-(?P<ses>[A-Za-z0-9]+))?_desc-registration_metrics\.tsv$"
)


def collect_metrics(output_dir: Path, participants: Sequence[str] | None = None) -> list[dict]:
    """One dict per subject-session: ``subject``, ``session`` and the metrics row as written
    (strings), sorted by subject and session."""
    wanted = {p.removeprefix("sub-") for p in participants or []}
    rows = []
    paths = list(output_dir.glob("sub-*/anat/*_desc-registration_metrics.tsv"))
    paths += list(output_dir.glob("sub-*/ses-*/anat/*_desc-registration_metrics.tsv"))
    for path in paths:
        m = _METRICS_RE.match(path.name)
        if not m or (wanted and m["sub"] not in wanted):
            continue
        lines = path.read_text().strip().splitlines()
        if len(lines) < 2:
            LOGGER.warning("%s: no row, skipped", path)
            continue
        header, values = lines[0].split("\t"), lines[1].split("\t")
        row = {"subject": m["sub"], "session": m["ses"] or "n/a"}
        row.update(zip(header, values, strict=False))
        rows.append(row)
    return sorted(rows, key=lambda r: (r["subject"], r["session"]))


def as_float(value: str | None) -> float:
    try:
        return float(value) if value not in (None, "", "n/a") else math.nan
    except ValueError:
        return math.nan


def robust_z(values: Sequence[float]) -> list[float]:
    """``(x - median) / (1.4826 MAD)`` (NaN stays NaN; a zero MAD falls back to the mean
    absolute deviation, and to 0 when every value is equal)."""
    finite = sorted(v for v in values if math.isfinite(v))
    if not finite:
        return [math.nan] * len(values)
    med = _median(finite)
    dev = [abs(v - med) for v in finite]
    scale = 1.4826 * _median(sorted(dev))
    if scale == 0:
        scale = 1.2533 * sum(dev) / len(dev)
    if scale == 0:
        return [0.0 if math.isfinite(v) else math.nan for v in values]
    return [(v - med) / scale if math.isfinite(v) else math.nan for v in values]


def _median(sorted_values: Sequence[float]) -> float:
    n = len(sorted_values)
    mid = n // 2
    return sorted_values[mid] if n % 2 else 0.5 * (sorted_values[mid - 1] + sorted_values[mid])


def metric_columns(rows: Sequence[Mapping[str, str]]) -> list[str]:
    """Metric columns in first-seen order, per-label Dice last."""
    cols: list[str] = []
    for row in rows:
        cols += [k for k in row if k not in cols and k not in ID_COLUMNS + FLAG_COLUMNS]
    return [c for c in cols if not c.startswith("dice_")] + [
        c for c in cols if c.startswith("dice_")
    ]


def flag_outliers(rows: Sequence[Mapping[str, str]]) -> list[list[str]]:
    """Per row the reasons it is an outlier (empty list: fine): folding above
    :data:`MAX_FOLDING_PERCENT`, or a higher-is-better metric with robust z below
    :data:`MIN_ROBUST_Z` (with at least :data:`MIN_SUBJECTS_FOR_Z` subjects)."""
    reasons: list[list[str]] = [[] for _ in rows]
    for i, row in enumerate(rows):
        fold = as_float(row.get("folding_percent"))
        if fold > MAX_FOLDING_PERCENT:
            reasons[i].append(f"folding {fold:.3g} % > {MAX_FOLDING_PERCENT} %")
    if len(rows) >= MIN_SUBJECTS_FOR_Z:
        for col in metric_columns(rows):
            if not HIGHER_IS_BETTER.match(col):
                continue
            for i, z in enumerate(robust_z([as_float(r.get(col)) for r in rows])):
                if z < MIN_ROBUST_Z:
                    reasons[i].append(f"{col} far below the group (robust z {z:.2g})")
    return reasons


def group_table(rows: Sequence[Mapping[str, str]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of ``group_metrics.tsv`` (values as in the per-subject files)."""
    cols = metric_columns(rows)
    flags = flag_outliers(rows)
    header = [*ID_COLUMNS, *cols, *FLAG_COLUMNS]
    table = []
    for row, why in zip(rows, flags, strict=True):
        values = [row.get(c, "n/a") for c in (*ID_COLUMNS, *cols)]
        table.append([*values, "yes" if why else "no", "; ".join(why) or "n/a"])
    return header, table


def write_group_tsv(path: Path, header: Sequence[str], table: Sequence[Sequence[str]]) -> Path:
    from ..io.atomic import write_tsv_atomic

    return write_tsv_atomic(path, header, table)


def distribution_svg(
    name: str, values: Sequence[float], flagged: Sequence[bool], labels: Sequence[str]
) -> str:
    """A strip plot of one metric (one dot per subject-session, outliers in red), vector
    SVG with text kept as text (hover a dot for its subject)."""
    import matplotlib
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.6, 2.3))
    ax = fig.add_subplot()
    finite = [
        (v, f, lab) for v, f, lab in zip(values, flagged, labels, strict=True) if math.isfinite(v)
    ]
    for k, (v, f, lab) in enumerate(finite):
        jitter = ((k * 0.618) % 1 - 0.5) * 0.5
        dot = ax.scatter([v], [jitter], s=28, color="#d62728" if f else "#1f77b4", zorder=3)
        dot.set_gid(f"pt-{lab}")
    if finite:
        vals = [v for v, _, _ in finite]
        med = _median(sorted(vals))
        ax.axvline(med, color="#555", lw=1, ls="--", label="median")
    if name == "folding_percent":
        ax.axvline(
            MAX_FOLDING_PERCENT, color="#d62728", lw=1, label=f"{MAX_FOLDING_PERCENT} % limit"
        )
    ax.locator_params(axis="x", nbins=4)
    ax.ticklabel_format(axis="x", useOffset=False, style="sci", scilimits=(-3, 4))
    ax.set_ylim(-1, 1)
    ax.set_yticks([])
    ax.set_title(name, fontsize=10)
    ax.legend(fontsize=7, loc="upper right", frameon=False)
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "font.size": 8}):
        fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    return text[text.find("<svg") :]


SORT_JS = """
document.querySelectorAll('table.sortable th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0];
    var asc = th.dataset.order !== 'asc';
    table.querySelectorAll('th').forEach(function (h) { delete h.dataset.order; });
    th.dataset.order = asc ? 'asc' : 'desc';
    var rows = Array.from(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.v || a.cells[col].textContent;
      var y = b.cells[col].dataset.v || b.cells[col].textContent;
      var nx = parseFloat(x), ny = parseFloat(y);
      var r = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return asc ? r : -r;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


def group_html(output_dir: Path, header: Sequence[str], table: Sequence[Sequence[str]]) -> str:
    """The group page: the table (click a column to sort), distributions, outliers."""
    shown = [c for c in header if not c.startswith("dice_")]
    idx = [header.index(c) for c in shown]
    n_out = sum(r[header.index("outlier")] == "yes" for r in table)
    head = "".join(f'<th title="click to sort">{html.escape(c)}</th>' for c in shown)
    head = "<th>report</th>" + head
    body = []
    for r in table:
        sub, ses = r[0], r[1]
        stem = f"sub-{sub}" + (f"_ses-{ses}" if ses != "n/a" else "")
        link = (
            f'<a href="{stem}.html">{stem}</a>'
            if (output_dir / f"{stem}.html").exists()
            else html.escape(stem)
        )
        cls = ' class="outlier"' if r[header.index("outlier")] == "yes" else ""
        cells = "".join(f"<td>{html.escape(r[i])}</td>" for i in idx)
        body.append(
            f'<tr{cls} data-subject="{html.escape(stem)}"><td data-v="{stem}">{link}'
            f"</td>{cells}</tr>"
        )
    summary = (
        f"<p>{len(table)} subject-session(s); "
        f'<span class="{"bad" if n_out else "ok"}">{n_out} flagged as outlier(s)</span> '
        f"(folding above {MAX_FOLDING_PERCENT} %, or Dice/similarity with a robust z-score "
        f"(median/MAD) below {MIN_ROBUST_Z} when there are at least {MIN_SUBJECTS_FOR_Z} "
        "subjects). The full table, per-label Dice included, is "
        '<a href="group_metrics.tsv">group_metrics.tsv</a>. Click a column to sort.</p>'
    )
    table_html = (
        f'<table class="sortable" id="group-table"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )
    flagged = [r[header.index("outlier")] == "yes" for r in table]
    labels = [f"{r[0]}-{r[1]}" for r in table]
    plots = []
    skip = {"seed", "lambda"}
    for c in shown:
        if c in ID_COLUMNS + FLAG_COLUMNS or c in skip:
            continue
        values = [as_float(r[header.index(c)]) for r in table]
        if any(math.isfinite(v) for v in values):
            svg = distribution_svg(c, values, flagged, labels)
            plots.append(f'<div class="dist" id="dist-{c}">{svg}</div>')
    dists = (
        '<div style="display:flex;flex-wrap:wrap;gap:12px">' + "".join(plots) + "</div>"
        if plots
        else "<p>No numeric metric.</p>"
    )
    outliers = [
        f"<li><b>{html.escape(lab)}</b>: {html.escape(r[header.index('outlier_reasons')])}</li>"
        for r, lab in zip(table, (f"sub-{r[0]}" for r in table), strict=True)
        if r[header.index("outlier")] == "yes"
    ]
    out_html = f"<ul>{''.join(outliers)}</ul>" if outliers else '<p class="ok">None.</p>'
    sections = [
        ("table", "Metrics", summary + table_html),
        ("distributions", "Distributions", dists),
        ("outliers", "Outliers", out_html),
    ]
    return page("contrareg-bids: group report", sections, script=SORT_JS)
