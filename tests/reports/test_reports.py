"""QC reports and the group level, built from a REAL participant run on tiny data.

One participant run (two subjects, T1w + T2w, labels, ContraReg to a template) is made once
for this module and checked by every test: reportlets, the subject pages, ``--reports-only``,
the group level (on a copy of the outputs with one more, fabricated, bad subject) and, when
Chromium is installed, how the pages render (``slow``).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from contrareg_bids.cli import exit_codes
from contrareg_bids.cli.run import main
from contrareg_bids.reports.group import flag_outliers, robust_z
from tests.test_participant_e2e import (
    TPL,
    Run,
    read_metrics,
    run_app,
    run_two_subjects,
)

SVG = "{http://www.w3.org/2000/svg}svg"
FIGURES = {
    "desc-summary_T2w.html",
    "desc-about_T2w.html",
    "desc-brain_mask.svg",
    "desc-coreg_T1w.svg",
    "desc-affine_T2w.svg",
    "desc-registration_T2w.svg",
    "desc-labels_T2w.svg",
    "desc-labels_T1w.svg",
    "desc-jacobian_T2w.svg",
    "desc-lambda_T2w.svg",
}


@pytest.fixture(scope="module")
def run(tmp_path_factory, icbm_small, icbm_subjects, tiny_bundle, tiny_templateflow) -> Run:
    return run_two_subjects(
        tmp_path_factory.mktemp("reports"), icbm_small, icbm_subjects, tiny_bundle,
        tiny_templateflow, ages=(40, 41),
    )  # fmt: skip


def metrics_of(run: Run, sub: str) -> dict[str, str]:
    return read_metrics(
        run.out / f"sub-{sub}" / "anat" / f"sub-{sub}_desc-registration_metrics.tsv"
    )


# ---------------------------------------------------------------------------------------------
# reportlets
# ---------------------------------------------------------------------------------------------
def test_reportlets_are_written_with_bids_names(run):
    assert run.rc == exit_codes.OK
    for sub in ("01", "02"):
        found = {p.name for p in (run.out / f"sub-{sub}" / "figures").iterdir()}
        assert found == {f"sub-{sub}_{name}" for name in FIGURES}
        assert (run.out / f"sub-{sub}.html").is_file()


def test_svg_reportlets_are_valid_small_and_rasterised(run):
    """Every SVG parses as XML, embeds its slices as images (data URIs), stays small."""
    for path in (run.out / "sub-01" / "figures").glob("*.svg"):
        root = ET.parse(path).getroot()
        assert root.tag == SVG, path.name
        text = path.read_text()
        assert re.search(r"data:image/(jpeg|png);base64,", text), path.name
        assert path.stat().st_size < 1_500_000, (path.name, path.stat().st_size)
        assert not re.search(r'(src|href)="(https?:)?//', text)  # no external files


def test_flickers_alternate_two_frames(run):
    """niworkflows' flicker: a background and a foreground frame, the CSS animation."""
    for name in ("affine_T2w", "registration_T2w", "coreg_T1w"):
        text = (run.out / "sub-01" / "figures" / f"sub-01_desc-{name}.svg").read_text()
        assert 'class="background-svg"' in text and 'class="foreground-svg"' in text
        assert "@keyframes" in text


def test_jacobian_and_summary_numbers_equal_the_metrics(run):
    row = metrics_of(run, "01")
    figures = run.out / "sub-01" / "figures"
    jac = (figures / "sub-01_desc-jacobian_T2w.svg").read_text()
    assert f"folding {float(row['folding_percent']):.4g} %" in jac
    assert f"std log|J| {float(row['std_log_jacobian']):.4g}" in jac
    summary = (figures / "sub-01_desc-summary_T2w.html").read_text()
    for key, value in row.items():
        assert f"<th>{key.removeprefix('dice_')}</th><td>{value}</td>" in summary, key
    assert "ICBMTest" in summary and "Training data fingerprint" in summary
    assert "<th>Age at scan (PMA, weeks)</th><td>40</td>" in summary
    assert "bids:raw:sub-01/anat/sub-01_T2w.nii.gz" in summary


def test_lambda_strip_shows_five_lambdas_with_dice_and_folding(run):
    text = (run.out / "sub-01" / "figures" / "sub-01_desc-lambda_T2w.svg").read_text()
    lambdas = re.findall(r"λ = ([0-9.]+)", text)
    assert len(lambdas) == 5
    assert "0.8" in lambdas and "(used)" in text  # the run's lambda (the default) among them
    assert text.count("Dice ") == 5 and text.count("folds ") == 5


# ---------------------------------------------------------------------------------------------
# the subject page
# ---------------------------------------------------------------------------------------------
def test_subject_page_is_self_contained_with_every_section(run):
    text = (run.out / "sub-01.html").read_text()
    for section in ("summary", "anatomical", "registration", "labels", "jacobian", "lambda",
                    "about", "errors", "boilerplate"):  # fmt: skip
        assert f'<section id="{section}">' in text, section
    # every SVG reportlet inlined, none linked
    svgs = sorted((run.out / "sub-01" / "figures").glob("*.svg"))
    for svg in svgs:
        assert f'data-file="figures/{svg.name}"' in text
    assert text.count("<svg") >= len(svgs)
    assert not re.search(r'(src|href)="(https?:)?//', text)  # no network
    assert "No errors to report" in text
    assert "ContraReg: Contrastive Learning of Multi-modality" in text
    for tool in ("Nipype", "NiWorkflows", "ANTsPy", "PyTorch", "TemplateFlow"):
        assert tool in text
    row = metrics_of(run, "01")
    assert f"<th>mean_dice</th><td>{row['mean_dice']}</td>" in text
    assert f"lambda = {row['lambda']}" in text


def test_reports_only_rebuilds_the_page_without_running(run, tiny_bundle, tiny_templateflow):
    """``--reports-only``: the page comes back from the files on disk (an error file added
    meanwhile shows up), and no node of the work dir runs again."""
    page = run.out / "sub-01.html"
    page.unlink()
    result = (
        run.work
        / "sub_01_wf"
        / "pair_wf"
        / "registration_wf"
        / "register"
        / "result_register.pklz"
    )
    before = result.stat().st_mtime_ns
    log = run.out / "sub-01" / "log" / "a-later-run"
    log.mkdir(parents=True)
    (log / "error-sub-01.txt").write_text("sub-01: something went wrong\n\ntraceback")
    try:
        rc = run_app(run.bids, run.out, run.work, "--model", tiny_bundle, "--reference", TPL,
                     "--reports-only", "--participant-label", "01",
                     home=tiny_templateflow)  # fmt: skip
        assert rc == exit_codes.OK
        text = page.read_text()
        assert "sub-01: something went wrong" in text
        assert 'data-file="figures/sub-01_desc-jacobian_T2w.svg"' in text
        assert result.stat().st_mtime_ns == before
    finally:
        shutil.rmtree(log)
        rc = run_app(run.bids, run.out, run.work, "--reports-only", "--participant-label",
                     "01", home=tiny_templateflow)  # fmt: skip
        assert rc == exit_codes.OK
    assert "No errors to report" in page.read_text()


def test_an_old_runs_errors_never_show_on_a_new_runs_report(tmp_path):
    """Regression: error and crash files piled up in one flat ``sub-X/log/`` and a past
    run's error was shown on the report of a run that went well."""
    from contrareg_bids.reports.subject import build_subject_report

    log = tmp_path / "sub-01" / "log"
    (log / "old-run").mkdir(parents=True)
    (log / "error-sub-01.txt").write_text("sub-01: flat, from an old version\n")
    (log / "old-run" / "error-sub-01.txt").write_text("sub-01: from the old run\n")
    page = build_subject_report(tmp_path, "01", None, run_uuid="new-run").read_text()
    assert "No errors to report" in page and "old" not in page.split("Errors")[-1]
    (log / "new-run").mkdir()
    (log / "new-run" / "error-sub-01.txt").write_text("sub-01: from this run\n")
    page = build_subject_report(tmp_path, "01", None, run_uuid="new-run").read_text()
    assert "from this run" in page and "from the old run" not in page


# ---------------------------------------------------------------------------------------------
# group level
# ---------------------------------------------------------------------------------------------
def test_robust_z_and_outlier_rules():
    z = robust_z([0.80, 0.81, 0.79, 0.30, math.nan])
    assert z[3] < -2.5 and all(abs(v) < 1.5 for v in z[:3]) and math.isnan(z[4])
    assert robust_z([1.0, 1.0, 1.0]) == [0.0, 0.0, 0.0]
    rows = [
        {"folding_percent": "0.1", "mean_dice": "0.80"},
        {"folding_percent": "0.2", "mean_dice": "0.81"},
        {"folding_percent": "0.9", "mean_dice": "0.79"},
        {"folding_percent": "0", "mean_dice": "0.30"},
    ]
    reasons = flag_outliers(rows)
    assert reasons[0] == reasons[1] == []
    assert reasons[2] == ["folding 0.9 % > 0.5 %"]
    assert len(reasons[3]) == 1 and reasons[3][0].startswith("mean_dice far below the group")
    # two subjects: no z-score flags, the folding rule still holds
    assert flag_outliers(rows[2:]) == [["folding 0.9 % > 0.5 %"], []]


@pytest.fixture(scope="module")
def group(run, tmp_path_factory) -> Path:
    """A copy of the outputs plus sub-03, a copy of sub-01 made bad (folding, low Dice);
    then ``contrareg-bids BIDS OUT group``."""
    out = tmp_path_factory.mktemp("group") / "out"
    shutil.copytree(run.out, out)
    anat = out / "sub-03" / "anat"
    anat.mkdir(parents=True)
    row = metrics_of(run, "01")
    row.update(folding_percent="1.25", mean_dice="0.05")
    (anat / "sub-03_desc-registration_metrics.tsv").write_text(
        "\t".join(row) + "\n" + "\t".join(row.values()) + "\n"
    )
    assert main([str(run.bids), str(out), "group"]) == exit_codes.OK
    return out


def test_group_tsv_rows_equal_the_subject_metrics(run, group):
    lines = (group / "group_metrics.tsv").read_text().strip().splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, ln.split("\t"), strict=True)) for ln in lines[1:]]
    assert [r["subject"] for r in rows] == ["01", "02", "03"]
    assert header.index("mean_dice_affine") == header.index("mean_dice") + 1  # the baseline
    for r in rows[:2]:
        mine = metrics_of(run, r["subject"])
        assert {k: r[k] for k in mine} == mine
        assert r["outlier"] == "no" and r["session"] == "n/a"
    assert rows[2]["outlier"] == "yes"
    assert "folding 1.25 % > 0.5 %" in rows[2]["outlier_reasons"]
    assert "mean_dice far below the group" in rows[2]["outlier_reasons"]


def test_group_page(group):
    text = (group / "group.html").read_text()
    assert '<table class="sortable"' in text and "<script>" in text
    assert (
        '<a href="sub-01.html">sub-01</a>' in text and '<a href="sub-02.html">sub-02</a>' in text
    )
    assert "sub-03" in text and '<tr class="outlier" data-subject="sub-03">' in text
    for metric in ("folding_percent", "std_log_jacobian", "mean_dice"):
        assert f'<div class="dist" id="dist-{metric}"><svg' in text
    assert not re.search(r'(src|href)="(https?:)?//', text)


def test_group_without_metrics_is_18(run, tmp_path):
    assert main([str(run.bids), str(tmp_path / "empty"), "group"]) == exit_codes.NO_FILES


# ---------------------------------------------------------------------------------------------
# rendering in a real browser (slow; skipped without Chromium)
# ---------------------------------------------------------------------------------------------
def _chromium() -> str | None:
    return next((c for c in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(c)), None)  # fmt: skip


def screenshot(page: Path, png: Path, height: int = 2000) -> np.ndarray:
    """Render ``page`` headless and return the screenshot as an RGB array."""
    from PIL import Image

    browser = _chromium()
    if browser is None:
        pytest.skip("chromium not installed")
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={png}",
         f"--window-size=1200,{height}", "--hide-scrollbars", page.as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    with Image.open(png) as img:
        return np.asarray(img.convert("RGB"))


def _busy(region: np.ndarray) -> float:
    """Fraction of pixels far from white: figures are dark/colourful, text is sparse."""
    return float((region.astype(int).sum(axis=-1) < 600).mean())


@pytest.mark.slow
def test_pages_render_in_chromium(run, group, tmp_path):
    """Headless Chromium draws the subject page (figures where the reportlets are) and the
    group page (table and plots)."""
    shot = screenshot(run.out / "sub-01.html", tmp_path / "subject.png", height=3000)
    assert shot.shape[1] == 1200
    # the flicker figures sit below the summary: somewhere a band dense with image pixels
    bands = [_busy(shot[y : y + 200]) for y in range(0, shot.shape[0] - 200, 100)]
    assert max(bands) > 0.3, bands
    assert _busy(shot[:24]) > 0.9  # the navigation bar
    shot = screenshot(group / "group.html", tmp_path / "group.png", height=1400)
    assert 0.01 < _busy(shot) < 0.6
    reds = (shot[..., 0] > 200) & (shot[..., 1] < 120) & (shot[..., 2] < 120)
    assert reds.sum() > 20  # the outlier's dot and the 0.5 % line


def test_about_shows_the_command_line(run):
    """The command that made the outputs, as typed, in the About panel and the recorded
    configuration (fMRIPrep's reports show it)."""
    about = (run.out / "sub-01" / "figures" / "sub-01_desc-about_T2w.html").read_text()
    assert "<th>Command line</th><td>contrareg-bids " in about
    assert f"{run.bids} {run.out} participant" in about
    (config,) = (run.out / "logs").glob("config-*.json")
    assert json.loads(config.read_text())["command_line"].startswith("contrareg-bids ")
