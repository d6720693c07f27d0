"""Quality-control reports: reportlets (SVG/HTML fragments under ``sub-X/figures/``), the
per-subject HTML page and the group page.

Plain functions only (no Nipype): the interfaces in :mod:`contrareg_bids.interfaces.reports`
wrap them, and ``--reports-only`` and the group level call them directly.
"""
