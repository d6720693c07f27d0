"""Reportlets: one SVG (or HTML fragment) per QC view, written under ``sub-X/figures/``.

Slices are rasterised (PNG inside the SVG) at a modest dpi so that a report stays small;
text stays text (``svg.fonttype = none``) so that the numbers are searchable. Mosaics of
anatomical images use nilearn displays with niworkflows' helpers (``cuts_from_bbox``,
``extract_svg``, ``compose_view``: the flicker is niworkflows' CSS animation, running while
the pointer is over the figure); the Jacobian and lambda-strip figures are plain matplotlib.
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

PathLike = str | os.PathLike

#: Raster resolution of the slices inside the SVGs (dots per inch of the figure).
MOSAIC_DPI = 96
FIGURE_DPI = 90
#: JPEG quality of the slices embedded in the SVGs.
JPEG_QUALITY = 78
#: Above this many labels the flicker outlines the brain mask instead (a parcellation such
#: as CerebrA would hide the image); the tissue classes of a neonatal atlas are fewer.
MAX_FLICKER_LABELS = 16
#: Number of slices per view in the mosaics (fMRIPrep shows 7).
N_CUTS = 7
_SVG_RC = {"svg.fonttype": "none", "font.size": 9}


# ------------------------------------------------------------------------- small helpers
def label_levels(labels: np.ndarray) -> list[float]:
    """Contour levels that draw every boundary between two labels of an integer map once.

    A boundary between labels ``a < b`` crosses the level just above ``a`` (``a + 0.5``), so
    one level per label value but the largest draws all label outlines in one contour call.
    """
    values = np.unique(np.asarray(labels).astype(np.int64))
    return [float(v) + 0.5 for v in values[:-1]]


def mask_from(image: nib.Nifti1Image, mask: PathLike | nib.Nifti1Image | None):
    """The mask image given, else the non-zero voxels of ``image`` (for the cuts)."""
    if mask is not None:
        return _load(mask)
    data = np.asanyarray(image.dataobj)
    return nib.Nifti1Image((data > 0).astype(np.uint8), image.affine)


def _load(img: PathLike | nib.Nifti1Image) -> nib.Nifti1Image:
    if isinstance(img, nib.Nifti1Image):
        return img
    from ..io.images import read_volume

    data, loaded = read_volume(img, dtype=None, finite=False)
    return nib.Nifti1Image(data, loaded.affine)


def _limits(data: np.ndarray, mask: np.ndarray | None) -> tuple[float, float]:
    """Robust display range (2nd-99.8th percentile inside the mask, like niworkflows)."""
    values = data[mask] if mask is not None and mask.any() else data[data != 0]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, (2, 99.8))
    return float(lo), float(hi if hi > lo else lo + 1)


def _resample_like(img: nib.Nifti1Image, like: nib.Nifti1Image, order: int) -> nib.Nifti1Image:
    """``img`` on the grid of ``like`` (identity when already there)."""
    if img.shape[:3] == like.shape[:3] and np.allclose(img.affine, like.affine, atol=1e-3):
        return img
    from nibabel.processing import resample_from_to

    return resample_from_to(img, (like.shape[:3], like.affine), order=order)


# ------------------------------------------------------------------------- mosaics (nilearn)
def _mosaic(
    image: nib.Nifti1Image,
    cuts: Mapping[str, Sequence[float]],
    *,
    title: str | None,
    vlim: tuple[float, float],
    contours: nib.Nifti1Image | None = None,
    levels: Sequence[float] | None = None,
    contour_kwargs: Mapping[str, Any] | None = None,
    div_id: str = "mosaic",
) -> list:
    """Three rows of slices (axial, coronal, sagittal) as svgutils figures."""
    from nilearn.plotting import plot_anat
    from niworkflows.viz.utils import extract_svg
    from svgutils.transform import fromstring

    rows = []
    for i, mode in enumerate(("z", "y", "x")):
        display = plot_anat(
            image,
            display_mode=mode,
            cut_coords=cuts[mode],
            vmin=vlim[0],
            vmax=vlim[1],
            title=title if i == 0 else None,
            colorbar=False,
            annotate=i == 0,
            draw_cross=False,
            black_bg=True,
        )
        if contours is not None and levels:
            kwargs = {"linewidths": 0.6, "colors": "r", **(contour_kwargs or {})}
            display.add_contours(contours, levels=list(levels), **kwargs)
        for cut in display.axes.values():  # one PNG per slice: image and outlines together
            cut.ax.set_rasterized(True)
        import matplotlib

        with matplotlib.rc_context(_SVG_RC):
            svg = extract_svg(display, dpi=MOSAIC_DPI, compress=False)
        display.close()
        rows.append(fromstring(svg.replace("figure_1", f"{div_id}-{mode}", 1)))
    return rows


_PNG_RE = re.compile(r'data:image/png;base64,\s*([A-Za-z0-9+/=\s]+)"')


def compress_rasters(svg: str, quality: int = JPEG_QUALITY) -> str:
    """Re-encode the PNG slices embedded in an SVG as JPEG (a tenth of the size for MR
    slices; every browser shows JPEG inside SVG, unlike niworkflows' optional WebP/cwebp)."""
    from PIL import Image

    def _jpeg(match: re.Match) -> str:
        raw = base64.b64decode(re.sub(r"\s", "", match.group(1)))
        with Image.open(io.BytesIO(raw)) as img:
            rgb = img.convert("RGB")
        buf = io.BytesIO()
        rgb.save(buf, format="JPEG", quality=quality, optimize=True)
        if buf.tell() >= len(raw):  # tiny or flat images: keep the PNG
            return match.group(0)
        return f'data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()}"'

    return _PNG_RE.sub(_jpeg, svg)


def _write(text: str, out_file: PathLike) -> Path:
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(compress_rasters(text))
    return out


def _compose(bg: list, fg: list | None, out_file: PathLike) -> Path:
    """niworkflows' ``compose_view`` (the flicker when ``fg`` is given), then compressed."""
    from niworkflows.viz.utils import compose_view

    out = Path(out_file).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    compose_view(bg, fg, out_file=str(out))
    return _write(out.read_text(), out)


def _cuts(mask: nib.Nifti1Image) -> dict[str, list[float]]:
    from niworkflows.viz.utils import cuts_from_bbox

    return cuts_from_bbox(mask, cuts=N_CUTS)


def plot_flicker(
    reference: PathLike,
    moving: PathLike,
    out_file: PathLike,
    *,
    mask: PathLike | None = None,
    labels: PathLike | None = None,
    titles: tuple[str, str] = ("reference", "subject"),
) -> Path:
    """Before/after view: the reference and the subject on the reference grid, alternating
    (niworkflows' flicker), the reference labels (or mask) outlined on both frames so that
    misaligned edges stand out."""
    ref = _load(reference)
    mov = _resample_like(_load(moving), ref, order=1)
    msk = _resample_like(mask_from(ref, mask), ref, order=0)
    inside = np.asanyarray(msk.dataobj) > 0
    outline = _resample_like(_load(labels), ref, order=0) if labels is not None else msk
    levels = label_levels(np.asanyarray(outline.dataobj))
    if len(levels) > MAX_FLICKER_LABELS:  # a parcellation hides the image: tissue edges only
        outline, levels = msk, [0.5]
    cuts = _cuts(msk)
    frames = []
    for img, title, div in ((ref, titles[0], "reference"), (mov, titles[1], "subject")):
        vlim = _limits(np.asanyarray(img.dataobj, dtype=np.float32), inside)
        frames.append(
            _mosaic(
                img,
                cuts,
                title=title,
                vlim=vlim,
                contours=outline,
                levels=levels,
                contour_kwargs={"linewidths": 1.0 if len(levels) == 1 else 0.6},
                div_id=div,
            )
        )
    return _compose(frames[0], frames[1], out_file)


def plot_label_contours(
    image: PathLike,
    labels: PathLike,
    out_file: PathLike,
    *,
    mask: PathLike | None = None,
    title: str | None = None,
) -> Path:
    """Reference labels carried into the subject, outlined on the subject's own image: the
    outlines should follow the subject's tissue boundaries."""
    img = _load(image)
    lab = _resample_like(_load(labels), img, order=0)
    lab_data = np.asanyarray(lab.dataobj)
    msk = _resample_like(mask_from(lab, mask), img, order=0)
    inside = np.asanyarray(msk.dataobj) > 0
    vlim = _limits(np.asanyarray(img.dataobj, dtype=np.float32), inside)
    levels = label_levels(lab_data)
    kwargs: dict[str, Any] = {"colors": None, "cmap": "gist_rainbow"} if len(levels) > 1 else {}
    if len(levels) > MAX_FLICKER_LABELS:
        kwargs["linewidths"] = 0.35
    rows = _mosaic(
        img,
        _cuts(msk),
        title=title,
        vlim=vlim,
        contours=lab,
        levels=levels,
        contour_kwargs=kwargs,
        div_id="labels",
    )
    return _compose(rows, None, out_file)


# ------------------------------------------------------------------------- matplotlib panels
def _svg_of(fig) -> str:
    """A matplotlib figure as an SVG string without the XML preamble."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context(_SVG_RC):
        fig.savefig(buf, format="svg", dpi=FIGURE_DPI, facecolor="white", bbox_inches="tight")
    text = buf.getvalue()
    return text[text.find("<svg") :]


def _slices(mask: np.ndarray, axis: int, n: int) -> list[int]:
    """``n`` evenly spaced slice indices through the mask's extent along ``axis``."""
    other = tuple(a for a in range(3) if a != axis)
    hits = np.flatnonzero(mask.any(axis=other)) if mask.any() else np.arange(mask.shape[axis])
    lo, hi = int(hits.min()), int(hits.max())
    return [round(float(v)) for v in np.linspace(lo, hi, n + 2)[1:-1]]


def _take(vol: np.ndarray, axis: int, index: int) -> np.ndarray:
    """A slice shown as radiologists' neurological view (superior/anterior up, R right)."""
    return np.rot90(np.take(vol, index, axis=axis))


def display_limit(values: np.ndarray) -> float:
    """Symmetric colour limit of a log-Jacobian map: the 99th percentile of ``|log J|``,
    between 0.02 (a near-identity warp still shows its pattern) and 2."""
    finite = np.abs(values[np.isfinite(values)])
    return float(np.clip(np.percentile(finite, 99), 0.02, 2.0)) if finite.size else 1.0


def plot_jacobian(
    forward_field: PathLike,
    out_file: PathLike,
    *,
    background: PathLike | None = None,
    mask: PathLike | None = None,
    n_slices: int = 5,
) -> tuple[Path, dict[str, float]]:
    """Log-Jacobian determinant of the forward warp on the model grid (blue: contraction,
    red: expansion), folding voxels (det J <= 0) in green, and the histogram inside the
    brain; the numbers are those of the metrics table (same function, same field)."""
    from matplotlib.figure import Figure
    from matplotlib.gridspec import GridSpec

    from ..io.images import read_volume
    from ..io.transforms import read_displacement_nifti
    from ..processing.grid import resample_to_grid
    from ..processing.participant_metrics import mask_on_grid, warp_quality

    disp, grid = read_displacement_nifti(forward_field)
    quality = warp_quality(forward_field, mask)
    from ..processing.lambda_strip import log_jacobian

    logj, folds = log_jacobian(disp)
    shape = logj.shape
    brain = mask_on_grid(mask, grid, shape) if mask is not None else np.ones(shape, bool)
    bg = None
    if background:
        bg = read_volume(background, finite=False)[0]
        if bg.shape != shape:  # a fine-stage field lies on a finer grid than the model's
            bg = resample_to_grid(background, grid, shape)

    fig = Figure(figsize=(2.0 * n_slices + 5.0, 6.3))
    grid = GridSpec(
        3,
        n_slices + 3,
        figure=fig,
        width_ratios=[1] * n_slices + [0.08, 0.55, 1.9],
        wspace=0.05,
        hspace=0.12,
    )
    lim = display_limit(logj[brain])
    image = None
    for row, (axis, name) in enumerate(((2, "axial"), (1, "coronal"), (0, "sagittal"))):
        for col, idx in enumerate(_slices(brain, axis, n_slices)):
            ax = fig.add_subplot(grid[row, col])
            if bg is not None:
                ax.imshow(_take(bg, axis, idx), cmap="gray", interpolation="nearest")
            over = np.ma.masked_where(~_take(brain, axis, idx), _take(logj, axis, idx))
            image = ax.imshow(
                over, cmap="RdBu_r", vmin=-lim, vmax=lim, alpha=0.85, interpolation="nearest"
            )
            fold = _take(folds, axis, idx)
            if fold.any():
                ax.imshow(
                    np.ma.masked_where(~fold, fold.astype(float)),
                    cmap="brg",
                    vmin=0,
                    vmax=2,
                    interpolation="nearest",
                )
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_rasterization_zorder(2.5)
            if col == 0:
                ax.set_ylabel(name)
    cax = fig.add_subplot(grid[:, n_slices])
    fig.colorbar(image, cax=cax, label=f"log det J (colours saturate at ±{lim:.2g})")
    hax = fig.add_subplot(grid[:, n_slices + 2])
    values = logj[brain]
    hax.hist(np.clip(values, -3, 3), bins=60, color="#4477aa")
    hax.set_yscale("log")
    hax.set_xlabel("log det J inside the brain")
    hax.set_ylabel("voxels")
    n_folds = int(folds.sum())
    hax.set_title(
        f"folding {quality['folding_percent']:.4g} % ({n_folds} voxels)\n"
        f"std log|J| {quality['std_log_jacobian']:.4g}",
        fontsize=9,
    )
    hax.axvline(0, color="k", lw=0.6)
    hax.locator_params(axis="x", nbins=4)
    hax.yaxis.set_label_position("right")
    hax.yaxis.tick_right()
    return _write(_svg_of(fig), out_file), quality


# ------------------------------------------------------------------------- lambda strip
def plot_lambda_strip(
    sweep: Sequence[Mapping[str, Any]],
    out_file: PathLike,
    *,
    fixed: np.ndarray,
    fixed_labels: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    chosen: float | None = None,
) -> Path:
    """The subject warped at each lambda side by side (axial and coronal slices with the
    reference outlines, and the log-Jacobian), each titled with its Dice and folding."""
    from matplotlib.figure import Figure

    n = len(sweep)
    brain = mask if mask is not None and mask.any() else fixed > 0
    outline = fixed_labels if fixed_labels is not None else brain.astype(np.int16)
    levels = label_levels(outline)
    if len(levels) > MAX_FLICKER_LABELS:
        outline, levels = brain.astype(np.int16), [0.5]
    jlim = display_limit(np.concatenate([r["log_jacobian"][brain] for r in sweep]))
    z = _slices(brain, 2, 1)[0]
    y = _slices(brain, 1, 1)[0]
    fig = Figure(figsize=(2.3 * (n + 1), 7.4))
    axes = fig.subplots(3, n + 1, squeeze=False, gridspec_kw={"wspace": 0.04, "hspace": 0.06})
    panels = [{"lambda": "reference", "moved": fixed, "log_jacobian": None}, *sweep]
    vmax = float(np.percentile(fixed[brain], 99.5)) if brain.any() else 1.0
    for col, item in enumerate(panels):
        for row, (axis, idx) in enumerate(((2, z), (1, y))):
            ax = axes[row, col]
            ax.imshow(
                _take(item["moved"], axis, idx),
                cmap="gray",
                vmin=0,
                vmax=vmax,
                interpolation="nearest",
            )
            if levels:
                ax.contour(_take(outline, axis, idx), levels=levels, colors="r", linewidths=0.4)
        jax = axes[2, col]
        if item["log_jacobian"] is not None:
            over = np.ma.masked_where(~_take(brain, 2, z), _take(item["log_jacobian"], 2, z))
            jax.imshow(over, cmap="RdBu_r", vmin=-jlim, vmax=jlim, interpolation="nearest")
        for ax in axes[:, col]:
            ax.set_xticks([])
            ax.set_yticks([])
        if col == 0:
            what = "its labels" if len(levels) > 1 else "its brain mask"
            axes[0, 0].set_title(f"reference\n(outlines: {what})", fontsize=9)
            axes[0, 0].set_ylabel("axial")
            axes[1, 0].set_ylabel("coronal")
            jax.text(
                0.5,
                0.5,
                f"log det J\nblue -{jlim:.2g}\nred +{jlim:.2g}",
                ha="center",
                va="center",
                transform=jax.transAxes,
            )
            jax.axis("off")
            continue
        lam = item["lambda"]
        used = chosen is not None and lam is not None and abs(lam - chosen) < 1e-6
        head = "λ = n/a" if lam is None else f"λ = {lam:.3g}" + (" (used)" if used else "")
        lines = [head]
        if "mean_dice" in item:
            lines.append(f"Dice {item['mean_dice']:.3f}")
        lines.append(f"folds {item['folding_percent']:.3g} %")
        lines.append(f"std log|J| {item['std_log_jacobian']:.3g}")
        axes[0, col].set_title(
            "\n".join(lines), fontsize=9, fontweight="bold" if used else "normal"
        )
        if used:
            for ax in axes[:, col]:
                for spine in ax.spines.values():
                    spine.set_edgecolor("#d62728")
                    spine.set_linewidth(2.5)
    for ax in axes.flat:  # one PNG per panel (slices and outlines); titles stay text
        ax.set_rasterization_zorder(2.5)
    return _write(_svg_of(fig), out_file)


# ------------------------------------------------------------------------- summary panel
def fmt_value(value: Any) -> str:
    """The text of one value exactly as the metrics TSV writes it."""
    if isinstance(value, float | np.floating):
        return "n/a" if value != value else f"{float(value):.6g}"
    if value is None:
        return "n/a"
    return str(value)


def _table(rows: Sequence[tuple[str, Any]], cls: str = "summary") -> str:
    body = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(fmt_value(v))}</td></tr>"
        for k, v in rows
    )
    return f'<table class="{cls}">{body}</table>'


def summary_html(info: Mapping[str, Any], metrics: Mapping[str, Any]) -> str:
    """The summary panel: inputs, age and cohort, reference, model, metrics (the values
    printed exactly as in ``desc-registration_metrics.tsv``)."""
    parts = ['<div class="summary-panel">']
    subject = [("Subject", info.get("subject"))]
    if info.get("session"):
        subject.append(("Session", info["session"]))
    age = info.get("age_weeks")
    subject.append(("Age at scan (PMA, weeks)", "unknown" if age is None else f"{age:.4g}"))
    if info.get("age_source"):
        subject.append(("Age read from", info["age_source"]))
    for mod, uri in (info.get("inputs") or {}).items():
        subject.append((f"Input {mod}", uri))
    if info.get("moving_modality"):
        subject.append(("Moving modality", info["moving_modality"]))
    parts.append("<h3>Subject and inputs</h3>" + _table(subject))
    reference = [("Reference", info.get("reference"))]
    if info.get("cohort") is not None:
        reference.append(("Cohort", info["cohort"]))
    reference.append(("Registration", info.get("method")))
    if info.get("lambda") is not None:
        reference.append(("Lambda", info["lambda"]))
    if info.get("device"):
        reference.append(("Device", info["device"]))
    parts.append("<h3>Reference and registration</h3>" + _table(reference))
    model = info.get("model") or {}
    if model:
        parts.append(
            "<h3>Model bundle</h3>"
            + _table(
                [
                    ("Name", model.get("name")),
                    ("Training loss", model.get("loss")),
                    ("Trained lambda range", model.get("lambda_range")),
                    ("Training steps", model.get("training_steps")),
                    ("Training data fingerprint", model.get("data_fingerprint") or "n/a"),
                    ("Grid", model.get("grid")),
                    ("Created", model.get("created")),
                    ("Weights SHA-256", model.get("payload_sha256")),
                ]
            )
        )
    scalar = [(k, v) for k, v in metrics.items() if not str(k).startswith("dice_")]
    parts.append('<h3>Metrics</h3><div class="metrics">' + _table(scalar, "metrics") + "</div>")
    dices = [(k[5:], v) for k, v in metrics.items() if str(k).startswith("dice_")]
    if dices:
        parts.append(
            f"<details><summary>Dice of each of the {len(dices)} labels</summary>"
            + _table(dices, "metrics dice")
            + "</details>"
        )
    parts.append("</div>")
    return "\n".join(parts)


def model_info(path: PathLike) -> dict[str, Any]:
    """What the summary shows of a model bundle (header only, no weights)."""
    from ..io.bundle import describe_bundle

    info = describe_bundle(path)
    md = info["metadata"]
    grid = md.get("grid", {})
    return {
        "name": Path(path).name,
        "loss": md.get("loss"),
        "lambda_range": md.get("lambda_range"),
        "training_steps": md.get("training_steps"),
        "data_fingerprint": md.get("data_fingerprint"),
        "grid": f"{grid.get('shape')} voxels of {grid.get('spacing')} mm" if grid else None,
        "created": md.get("created"),
        "payload_sha256": info.get("payload_sha256"),
    }


def lambda_strip_from_sweep(sweep_file: PathLike, out_file: PathLike) -> Path:
    """The lambda strip drawn from what :func:`~contrareg_bids.processing.lambda_strip.
    sweep_lambdas` computed where the registration ran (the report runs no network)."""
    from ..processing.lambda_strip import read_lambda_sweep

    sweep, fixed, fixed_labels, mask, chosen = read_lambda_sweep(sweep_file)
    return plot_lambda_strip(
        sweep, out_file, fixed=fixed, fixed_labels=fixed_labels, mask=mask, chosen=chosen
    )
