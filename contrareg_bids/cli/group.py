"""Group level: every participant's metrics in one table and one page
(:mod:`contrareg_bids.reports.group` builds them)."""

from __future__ import annotations

import logging

from ..reports.group import collect_metrics, group_html, group_table, write_group_tsv
from ..reports.html import write_page
from . import exit_codes

LOGGER = logging.getLogger("contrareg_bids.group")


def run_group_level(cfg) -> int:
    """``contrareg-bids BIDS OUT group``: 0, or 18 when no participant has metrics."""
    rows = collect_metrics(cfg.output_dir, cfg.participant_label)
    if not rows:
        LOGGER.error(
            "no *_desc-registration_metrics.tsv under %s: run the participant level first",
            cfg.output_dir,
        )
        return exit_codes.NO_FILES
    header, table = group_table(rows)
    tsv = write_group_tsv(cfg.output_dir / "group_metrics.tsv", header, table)
    text = group_html(cfg.output_dir, header, table)
    page_path = write_page(cfg.output_dir / "group.html", text)
    n_out = sum(r[-2] == "yes" for r in table)
    LOGGER.info("group level: %d rows, %d outlier(s): %s, %s", len(table), n_out, tsv, page_path)
    return exit_codes.OK
