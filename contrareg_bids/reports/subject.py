"""The per-subject page ``OUTPUT_DIR/sub-X[_ses-Y].html`` (fMRIPrep-like), assembled from the
reportlets in ``sub-X/figures/``, the metrics table and the logs; ``--reports-only`` calls
this alone, without running any registration."""

from __future__ import annotations

import html
import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .. import __version__
from .boilerplate import methods_html
from .html import inline_svg, page, write_page

LOGGER = logging.getLogger("contrareg_bids.reports")

#: ``(anchor, heading, [(desc, caption)])``: the sections of the page, in order.
SECTIONS: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = (
    ("summary", "Summary", (("summary", ""),)),
    (
        "anatomical",
        "Anatomical preprocessing",
        (
            (
                "brain",
                "The brain mask the registration and the metrics use, outlined on the "
                "subject's bias-corrected image: it should follow the brain's edge, neither "
                "cutting cortex nor taking in skull or scalp.",
            ),
            (
                "coreg",
                "The other modality coregistered onto this one (rigid, mutual information), "
                "the brain mask outlined on both. Hover to flicker: the edges should not move.",
            ),
        ),
    ),
    (
        "registration",
        "Registration to the reference",
        (
            (
                "affine",
                "The reference and the subject after the affine pre-alignment only, on the "
                "reference grid, with the reference labels outlined in red. Hover over the "
                "figure to alternate between the two (flicker).",
            ),
            (
                "registration",
                "The same after the deformable registration: the subject's edges should now "
                "follow the outlines. Hover to flicker.",
            ),
        ),
    ),
    (
        "labels",
        "Reference labels in the subject",
        (
            (
                "labels",
                "The reference labels carried into the subject (the inverse transform) and "
                "outlined on the subject's own images: the outlines should follow its tissue "
                "boundaries.",
            ),
        ),
    ),
    (
        "jacobian",
        "Deformation",
        (
            (
                "jacobian",
                "log det J of the forward warp on the model grid (blue: contraction, red: "
                "expansion); folding voxels (det J <= 0) in green; right: the histogram inside "
                "the brain, with the folding percentage and std log|J| of the metrics table.",
            ),
        ),
    ),
    (
        "lambda",
        "Regularisation (lambda strip)",
        (
            (
                "lambda",
                "The subject registered at several values of lambda of the model (the one "
                "used is framed): larger lambda gives smoother, less folded warps; Dice is "
                "measured on the model grid when the subject's labels were given.",
            ),
        ),
    ),
    ("about", "About", (("about", ""),)),
)


@dataclass(frozen=True)
class Reportlet:
    path: Path
    desc: str
    suffix: str


def prefix_of(subject: str, session: str | None) -> str:
    return f"sub-{subject}" + (f"_ses-{session}" if session else "")


def find_reportlets(output_dir: Path, subject: str, session: str | None) -> list[Reportlet]:
    """Reportlets of one subject-session (``figures/<prefix>_desc-<d>_<suffix>.svg|html``)."""
    prefix = prefix_of(subject, session)
    pattern = re.compile(rf"^{re.escape(prefix)}_desc-([A-Za-z0-9]+)_([A-Za-z0-9]+)\.(svg|html)$")
    found = []
    for path in sorted((output_dir / f"sub-{subject}" / "figures").glob(f"{prefix}_desc-*")):
        m = pattern.match(path.name)
        if m:
            found.append(Reportlet(path, m.group(1), m.group(2)))
    return found


def metrics_path(output_dir: Path, subject: str, session: str | None) -> Path:
    folder = output_dir / f"sub-{subject}" / (f"ses-{session}" if session else "") / "anat"
    return folder / f"{prefix_of(subject, session)}_desc-registration_metrics.tsv"


def read_metrics_row(path: Path) -> dict[str, str] | None:
    """The one row of a metrics TSV as strings, or ``None`` when missing/unreadable."""
    try:
        lines = path.read_text().strip().splitlines()
    except OSError:
        return None
    if len(lines) < 2:
        return None
    header, row = lines[0].split("\t"), lines[1].split("\t")
    return dict(zip(header, row, strict=False))


def _run_dir(output_dir: Path, subject: str, run_uuid: str | None) -> Path | None:
    """The log folder of run ``run_uuid``, or the newest one (``--reports-only``)."""
    from ..io.run_logs import latest_run_log_dir, run_log_dir

    if run_uuid:
        return run_log_dir(output_dir, subject, run_uuid)
    return latest_run_log_dir(output_dir, subject)


def built_description(
    output_dir: Path, subject: str, session: str | None, run_uuid: str | None = None
) -> str:
    """The description of the workflow the run ``run_uuid`` (default: the newest) built for
    this subject-session (``visit_desc()``, written by the participant level), or ``""``."""
    log_dir = _run_dir(output_dir, subject, run_uuid)
    path = None if log_dir is None else log_dir / f"{prefix_of(subject, session)}_desc-methods.txt"
    return path.read_text() if path is not None and path.is_file() else ""


def error_files(
    output_dir: Path, subject: str, session: str | None, run_uuid: str | None = None
) -> list[Path]:
    """``error-<id>.txt`` and the Nipype crash files of this subject-session's workflow in
    the run ``run_uuid`` (default: the newest run folder in ``sub-X/log/``)."""
    log_dir = _run_dir(output_dir, subject, run_uuid)
    if log_dir is None or not log_dir.is_dir():
        return []
    sid = prefix_of(subject, session)
    out = sorted(log_dir.glob(f"error-{sid}.txt"))
    wf_name = f"{sid.replace('-', '_')}_wf."
    for crash in sorted(log_dir.glob("crash-*.txt")):
        try:
            text = crash.read_text(errors="replace")
        except OSError:
            continue
        # crash files name the node as <workflow>.<node>; without sessions keep them all
        if session is None or wf_name in text:
            out.append(crash)
    return out


def _figure_html(item: Reportlet, caption: str) -> str:
    text = item.path.read_text(encoding="utf-8", errors="replace")
    body = inline_svg(text) if item.path.suffix == ".svg" else text
    title = f"{item.suffix}" if item.desc in ("labels",) else ""
    cap = f'<p class="caption">{html.escape(caption)}</p>' if caption else ""
    head = f"<h3>{html.escape(title)}</h3>" if title else ""
    return (
        f'<div class="reportlet" id="{item.path.stem}" data-file="figures/{item.path.name}">'
        f"{head}{cap}{body}</div>"
    )


def _errors_html(files: list[Path], output_dir: Path) -> str:
    if not files:
        return '<p class="ok">No errors to report.</p>'
    parts = [f'<p class="bad">{len(files)} error file(s) in the log folder.</p>']
    for path in files:
        text = path.read_text(errors="replace")
        first = next((ln for ln in text.splitlines() if ln.strip()), "")
        rel = path.relative_to(output_dir)
        parts.append(
            f"<details><summary><code>{html.escape(str(rel))}</code>: {html.escape(first[:300])}"
            f"</summary><pre>{html.escape(text[-20000:])}</pre></details>"
        )
    return "".join(parts)


def build_subject_report(
    output_dir: Path,
    subject: str,
    session: str | None,
    moving_modality: str = "T2w",
    run_uuid: str | None = None,
) -> Path:
    """Write ``OUTPUT_DIR/sub-X[_ses-Y].html`` from what is on disk, with the errors of run
    ``run_uuid`` (default: the newest run); returns its path.

    Not (yet) nireports' YAML-driven assembler: the page's sections, captions and the
    run-specific errors are here in a few dozen lines; moving to nireports is worth it when
    the reports grow more sections."""
    output_dir = Path(output_dir)
    items = find_reportlets(output_dir, subject, session)
    by_desc: dict[str, list[Reportlet]] = {}
    for item in items:
        by_desc.setdefault(item.desc, []).append(item)
    for group in by_desc.values():  # the moving modality first
        group.sort(key=lambda r: (r.suffix != moving_modality, r.suffix))
    sections = []
    used: set[str] = set()
    for anchor, heading, entries in SECTIONS:
        body = ""
        for desc, caption in entries:
            for item in by_desc.get(desc, []):
                body += _figure_html(item, caption)
                used.add(desc)
        if body:
            sections.append((anchor, heading, body))
    other = [i for i in items if i.desc not in used]
    if other:
        sections.append(("other", "Other figures", "".join(_figure_html(i, "") for i in other)))
    row = read_metrics_row(metrics_path(output_dir, subject, session))
    sections.append(
        (
            "errors",
            "Errors",
            _errors_html(error_files(output_dir, subject, session, run_uuid), output_dir),
        )
    )
    reference = row.get("reference") if row else None
    desc = built_description(output_dir, subject, session, run_uuid)
    sections.append(
        ("boilerplate", "Methods", methods_html(row, moving_modality, reference, desc))
    )
    out = output_dir / f"{prefix_of(subject, session)}.html"
    return write_page(out, page(f"contrareg-bids: {prefix_of(subject, session)}", sections))


def about_html(
    run_seconds: float | None, status: str, run_uuid: str, device: str, command_line: str = ""
) -> str:
    """The "About" panel: version, the command, when, how long, on what."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")  # noqa: UP017
    rows = [
        ("contrareg-bids version", __version__),
        ("Run", run_uuid),
        ("Command line", command_line or "n/a"),
        ("Report date", stamp),
        ("Status", status),
        ("Device", device),
        ("Run time", "n/a" if run_seconds is None else f"{run_seconds:.1f} s"),
    ]
    body = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows
    )
    return f'<table class="summary">{body}</table>'


def write_subject_report(
    cfg, subject: str, session: str | None, started: float | None = None, status: str = "ok"
) -> Path | None:
    """Write the "About" reportlet (when the subject was just run) and the page; never
    raises (a report problem must not fail a subject)."""
    try:
        if started is not None:
            from ..workflows.reports import report_device

            device = (
                report_device(cfg.device, bool(cfg.n_gpus))
                if cfg.registration.method == "contrareg"
                else "cpu (ANTs)"
            )
            figures = cfg.output_dir / f"sub-{subject}" / "figures"
            figures.mkdir(parents=True, exist_ok=True)
            name = f"{prefix_of(subject, session)}_desc-about_{cfg.moving_modality}.html"
            text = about_html(
                time.monotonic() - started,
                status,
                cfg.run_uuid,
                device,
                getattr(cfg, "command_line", ""),
            )
            (figures / name).write_text(text)
        return build_subject_report(
            cfg.output_dir, subject, session, cfg.moving_modality, cfg.run_uuid
        )
    except Exception as err:  # reports decorate: the outputs are what counts
        LOGGER.warning("%s: could not write the report: %s", prefix_of(subject, session), err)
        return None
