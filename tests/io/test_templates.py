"""contrareg_bids.io.templates: reference parsing, cohorts, TemplateFlow lookup.

Tiny synthetic templates in TemplateFlow layout under tmp_path, read through the real
TemplateFlow client (``TEMPLATEFLOW_HOME`` set per test, ``TEMPLATEFLOW_AUTOUPDATE=0``, no
network); the development atlas (``-m data``) when present.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from contrareg_bids.io import templates as tpl
from contrareg_bids.io.templates import (
    DEFAULT_TEMPLATE,
    ReferenceSpec,
    TemplateError,
    cohort_for_age,
    get_template_files,
    parse_reference,
    template_cohorts,
)

REPO = Path(__file__).resolve().parents[2]


def _nii(path: Path, shape=(4, 5, 6), zooms=1.0, value=1.0, dtype=np.float32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.full(shape, value, dtype), np.diag([zooms] * 3 + [1.0])), path)


def _make_home(root: Path) -> Path:
    """A TemplateFlow home with three tiny templates.

    * ``Tiny``: cohorts 1-3 whose *description* ages are 30/35/40 weeks (not the labels);
      T1w, T2w, brain mask, two dsegs + a dseg.tsv; cohort 3 has no mask, cohort 2's T2w is a
      zero-byte placeholder (listed, not fetched).
    * ``Flat``: no cohorts, two resolutions.
    * ``Kid``: cohorts with postnatal ages in months.
    * ``Unc``: named like UNCInfant, whose brain mask is ``label-brain_mask`` (no desc),
      next to a ``label-BrainCerebellumExtraction_mask``.
    """
    tiny = root / "tpl-Tiny"
    cohorts = {str(c): {"age": [a], "units": "weeks"} for c, a in ((1, 30), (2, 35), (3, 40))}
    tiny.mkdir(parents=True)
    (tiny / "template_description.json").write_text(
        json.dumps({"Name": "Tiny", "Identifier": "Tiny", "cohort": cohorts})
    )
    (tiny / "tpl-Tiny_desc-tissues_dseg.tsv").write_text("index\tname\n1\tCSF\n2\tGM\n")
    for c in (1, 2, 3):
        d = tiny / f"cohort-{c}"
        _nii(d / f"tpl-Tiny_cohort-{c}_T1w.nii.gz")
        _nii(d / f"tpl-Tiny_cohort-{c}_T2w.nii.gz")
        _nii(d / f"tpl-Tiny_cohort-{c}_desc-tissues_dseg.nii.gz", dtype=np.int16)
        _nii(d / f"tpl-Tiny_cohort-{c}_desc-other_dseg.nii.gz", dtype=np.int16)
        if c != 3:
            _nii(d / f"tpl-Tiny_cohort-{c}_desc-brain_mask.nii.gz", dtype=np.uint8)
    (tiny / "cohort-2" / "tpl-Tiny_cohort-2_T2w.nii.gz").write_bytes(b"")

    flat = root / "tpl-Flat"
    flat.mkdir()
    (flat / "template_description.json").write_text(json.dumps({"Name": "Flat"}))
    for res, zooms in ((1, 1.0), (2, 2.0)):
        _nii(flat / f"tpl-Flat_res-{res}_T1w.nii.gz", zooms=zooms)
        _nii(flat / f"tpl-Flat_res-{res}_desc-brain_mask.nii.gz", zooms=zooms, dtype=np.uint8)
    _nii(flat / "tpl-Flat_res-1_desc-brain_T1w.nii.gz")  # a desc-brain image: not "the" T1w

    kid = root / "tpl-Kid"
    kid.mkdir()
    ages = {"1": {"age": [0, 2], "units": "months"}, "2": {"age": [2, 6], "units": "months"}}
    (kid / "template_description.json").write_text(json.dumps({"Name": "Kid", "cohort": ages}))
    for c in (1, 2):
        _nii(kid / f"cohort-{c}" / f"tpl-Kid_cohort-{c}_T1w.nii.gz")
        _nii(kid / f"cohort-{c}" / f"tpl-Kid_cohort-{c}_desc-brain_mask.nii.gz")

    unc = root / "tpl-Unc"
    unc.mkdir()
    (unc / "template_description.json").write_text(
        json.dumps({"Name": "Unc", "cohort": {"1": {"age": [0, 1], "units": "months"}}})
    )
    _nii(unc / "cohort-1" / "tpl-Unc_cohort-1_T1w.nii.gz")
    _nii(unc / "cohort-1" / "tpl-Unc_cohort-1_label-BrainCerebellumExtraction_mask.nii.gz")
    _nii(unc / "cohort-1" / "tpl-Unc_cohort-1_label-brain_mask.nii.gz", dtype=np.uint8)
    return root


@pytest.fixture
def tf_home(tmp_path, monkeypatch) -> Path:
    home = _make_home(tmp_path / "templateflow")
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))
    monkeypatch.setenv("TEMPLATEFLOW_AUTOUPDATE", "0")
    tpl.reset_clients()
    yield home
    tpl.reset_clients()


# ---------------------------------------------------------------------------------------------
# parsing
# ---------------------------------------------------------------------------------------------
def test_parse_reference_templates():
    assert DEFAULT_TEMPLATE == "dhcpVol"
    assert parse_reference("dhcpVol") == ReferenceSpec(kind="template", template="dhcpVol")
    spec = parse_reference("Serag2012:cohort-36")
    assert (spec.kind, spec.template, spec.cohort) == ("template", "Serag2012", 36)
    assert str(spec) == "Serag2012:cohort-36"
    spec = parse_reference(" tpl-MNIInfant:cohort-1:res-2 ")
    assert (spec.template, spec.cohort, spec.resolution) == ("MNIInfant", 1, 2)
    with pytest.raises(TemplateError, match="modifier 'desc-x' is not supported"):
        parse_reference("dhcpVol:desc-x")
    with pytest.raises(TemplateError, match="cohort-N"):
        parse_reference("dhcpVol:cohort-forty")
    with pytest.raises(TemplateError, match="not understood"):
        parse_reference("dhcp Vol")
    with pytest.raises(TemplateError, match="empty reference"):
        parse_reference("  ")


def test_parse_reference_participants_and_paths(tmp_path, monkeypatch):
    assert parse_reference("sub-02") == ReferenceSpec(kind="participant", participant="02")
    spec = parse_reference("sub-02_ses-b")
    assert (spec.participant, spec.session, str(spec)) == ("02", "b", "sub-02_ses-b")

    image = tmp_path / "ref.nii.gz"
    _nii(image)
    spec = parse_reference(str(image))
    assert spec.kind == "path" and spec.path == image
    monkeypatch.chdir(tmp_path)
    assert parse_reference("ref.nii.gz").path == image  # no separator, but a .nii.gz file
    (tmp_path / "atlas").write_bytes(image.read_bytes())
    assert parse_reference("atlas").kind == "path"  # an existing file wins over a name
    with pytest.raises(TemplateError, match=r"missing\.nii: reference image not found"):
        parse_reference("missing.nii")
    with pytest.raises(TemplateError, match="not found"):
        parse_reference(str(tmp_path / "dir" / "x"))


# ---------------------------------------------------------------------------------------------
# cohorts
# ---------------------------------------------------------------------------------------------
def test_template_cohorts(tf_home):
    assert template_cohorts("Tiny") == [1, 2, 3]
    assert template_cohorts("Flat") == []
    assert template_cohorts("Kid") == [1, 2]
    with pytest.raises(TemplateError, match="'Nope' is not in the TemplateFlow cache"):
        template_cohorts("Nope")


def test_cohort_from_description_age_with_clamping(tf_home):
    assert cohort_for_age("Tiny", 34.0) == (2, None)  # description ages 30/35/40, not labels
    assert cohort_for_age("Tiny", 32.5) == (1, None)  # tie: the younger cohort
    assert cohort_for_age("Tiny", 40.4) == (3, None)  # within half a week: no warning
    cohort, warning = cohort_for_age("Tiny", 43.0)
    assert cohort == 3
    assert "outside the cohorts of Tiny" in warning and "cohort-3" in warning
    cohort, warning = cohort_for_age("Tiny", 27.0)
    assert cohort == 1 and "27.0 weeks" in warning
    assert cohort_for_age("Flat", 40.0) == (None, None)
    with pytest.raises(TemplateError, match=r"age at scan is unknown.*Tiny:cohort-2"):
        cohort_for_age("Tiny", None)


def test_age_far_outside_the_cohorts_is_refused(tf_home):
    """Regression: a postnatal age read as a PMA (77-81 weeks) got the oldest cohort with a
    warning; it is refused with the value, where it came from and the fix."""
    cohort_for_age("Tiny", 44.0)  # 4 weeks past the last cohort: clamped, not refused
    with pytest.raises(TemplateError) as err:
        cohort_for_age("Tiny", 79.0, source="participants.tsv:age_weeks")
    message = str(err.value)
    assert "79.0 weeks PMA (from participants.tsv:age_weeks)" in message
    assert "39.0 weeks outside the cohorts of Tiny" in message
    assert "--pma" in message and "Tiny:cohort-3" in message
    with pytest.raises(TemplateError, match="Tiny:cohort-1"):
        cohort_for_age("Tiny", 20.0)


def test_cohort_ages_postnatal_months(tf_home):
    ages = tpl.cohort_ages("Kid")
    assert ages[1] == pytest.approx((40.0, 40.0 + 2 * 52.1775 / 12))
    assert cohort_for_age("Kid", 41.0) == (1, None)
    assert cohort_for_age("Kid", 60.0) == (2, None)  # ~4.6 months postnatal


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------
def test_get_template_files(tf_home):
    files = get_template_files("Tiny", 1)
    assert files["image"] == tf_home / "tpl-Tiny/cohort-1/tpl-Tiny_cohort-1_T1w.nii.gz"
    assert files["mask"].name == "tpl-Tiny_cohort-1_desc-brain_mask.nii.gz"
    assert files["dseg"].name == "tpl-Tiny_cohort-1_desc-tissues_dseg.nii.gz"
    assert files["dseg_tsv"] == tf_home / "tpl-Tiny/tpl-Tiny_desc-tissues_dseg.tsv"
    other = get_template_files("Tiny", 1, modality="T2w", dseg_desc="other")
    assert other["image"].name == "tpl-Tiny_cohort-1_T2w.nii.gz"
    assert other["dseg"].name == "tpl-Tiny_cohort-1_desc-other_dseg.nii.gz"
    assert "dseg_tsv" not in other  # no table for desc-other
    assert get_template_files("Tiny", 1, dseg_desc="absent")["dseg"].name.endswith("_dseg.nii.gz")


def test_resolution_consistent_and_no_cohorts(tf_home):
    files = get_template_files("Flat")
    assert files["image"].name == "tpl-Flat_res-1_T1w.nii.gz"
    assert files["mask"].name == "tpl-Flat_res-1_desc-brain_mask.nii.gz"
    assert "dseg" not in files
    files = get_template_files("Flat", resolution=2)
    assert files["mask"].name == "tpl-Flat_res-2_desc-brain_mask.nii.gz"
    with pytest.raises(TemplateError, match="has no cohorts"):
        get_template_files("Flat", 1)


def test_label_brain_mask_when_no_desc_brain_mask(tf_home):
    # UNCInfant ships ``label-brain_mask``; the extraction mask beside it is not the brain mask
    files = get_template_files("Unc", 1)
    assert files["mask"].name == "tpl-Unc_cohort-1_label-brain_mask.nii.gz"
    # where both exist, desc-brain wins (MNIInfant, dhcpVol)
    (tf_home / "tpl-Tiny/cohort-1/tpl-Tiny_cohort-1_label-brain_mask.nii.gz").write_bytes(
        (tf_home / "tpl-Tiny/cohort-1/tpl-Tiny_cohort-1_desc-brain_mask.nii.gz").read_bytes()
    )
    tpl.reset_clients()
    assert get_template_files("Tiny", 1)["mask"].name == "tpl-Tiny_cohort-1_desc-brain_mask.nii.gz"


def test_cohort_checks(tf_home):
    with pytest.raises(TemplateError, match=r"has cohorts 1\.\.3: choose one"):
        get_template_files("Tiny")
    with pytest.raises(TemplateError, match=r"has no cohort 7 \(cohorts: 1, 2, 3\)"):
        get_template_files("Tiny", 7)


def test_missing_files_explain_how_to_prefetch(tf_home):
    with pytest.raises(TemplateError) as err:
        get_template_files("Tiny", 3)
    message = str(err.value)
    assert "template 'Tiny' cohort-3: no desc-brain mask" in message
    assert f"TEMPLATEFLOW_HOME={tf_home}" in message
    assert "get('Tiny', cohort=3, suffix='mask')" in message
    assert "copy (or bind-mount)" in message

    with pytest.raises(TemplateError, match=r"(?s)no T2w image.*not fetched.*suffix='T2w'"):
        get_template_files("Tiny", 2, modality="T2w", download=False)
    with pytest.raises(TemplateError, match="no PD image"):
        get_template_files("Tiny", 1, modality="PD")


def test_failed_download_is_a_template_error(tf_home, monkeypatch):
    import templateflow.client

    calls = []

    def offline(config, filepath):
        calls.append(filepath)
        raise OSError("network is unreachable")

    monkeypatch.setattr(templateflow.client, "_s3_get", offline)
    with pytest.raises(TemplateError, match="cohort-2: no T2w image"):
        get_template_files("Tiny", 2, modality="T2w")
    assert [p.name for p in calls] == ["tpl-Tiny_cohort-2_T2w.nii.gz"]


def test_home_followed_at_call_time(tmp_path, monkeypatch):
    """Switching TEMPLATEFLOW_HOME after templateflow was imported is honoured."""
    a = _make_home(tmp_path / "a")
    b = tmp_path / "b"
    b.mkdir()
    (a / "tpl-Kid").rename(b / "tpl-Kid")  # b holds Kid only
    monkeypatch.setenv("TEMPLATEFLOW_AUTOUPDATE", "0")
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(a))
    import templateflow.api  # noqa: F401 - the global client is configured now, never used

    assert get_template_files("Flat")["image"].is_relative_to(a)
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(b))
    with pytest.raises(TemplateError, match=f"TEMPLATEFLOW_HOME={b}"):
        get_template_files("Flat")
    assert get_template_files("Kid", 1)["image"].is_relative_to(b)
    tpl.reset_clients()


def test_home_set_before_first_import_subprocess(tmp_path):
    """A fresh process with TEMPLATEFLOW_HOME in its environment (the BIDS-App case)."""
    home = _make_home(tmp_path / "tf")
    code = (
        "from contrareg_bids.io.templates import get_template_files, template_cohorts\n"
        "import templateflow.api as api\n"
        "files = get_template_files('Tiny', 2)\n"
        "print(template_cohorts('Tiny'), files['image'])\n"
        "print(sorted(api.templates()))\n"
    )
    env = {**os.environ, "TEMPLATEFLOW_HOME": str(home), "TEMPLATEFLOW_AUTOUPDATE": "0"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"[1, 2, 3] {home}/tpl-Tiny/cohort-2/tpl-Tiny_cohort-2_T1w.nii.gz"
    assert lines[1] == "['Flat', 'Kid', 'Tiny', 'Unc']"


# ---------------------------------------------------------------------------------------------
# the development atlas
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def atlas(atlas_home, monkeypatch) -> Path:
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(atlas_home))
    monkeypatch.setenv("TEMPLATEFLOW_AUTOUPDATE", "0")
    yield atlas_home
    tpl.reset_clients()


@pytest.mark.data
def test_atlas_cohorts(atlas):
    assert template_cohorts("Serag2012") == list(range(28, 45))
    assert cohort_for_age("Serag2012", 36.4) == (36, None)
    assert cohort_for_age("Serag2012", 44.5) == (44, None)
    cohort, warning = cohort_for_age("Serag2012", 24.0)
    assert cohort == 28 and "outside" in warning


@pytest.mark.data
@pytest.mark.parametrize(("cohort", "modality"), [(28, "T2w"), (40, "T1w"), (44, "T2w")])
def test_atlas_files(atlas, cohort, modality):
    files = get_template_files("Serag2012", cohort, modality=modality, download=False)
    assert set(files) == {"image", "mask", "dseg", "dseg_tsv"}
    assert files["image"].name == f"tpl-Serag2012_cohort-{cohort}_{modality}.nii.gz"
    assert all(p.is_relative_to(atlas) and p.stat().st_size > 0 for p in files.values())
    image, mask, dseg = (nib.load(files[k]) for k in ("image", "mask", "dseg"))
    assert image.shape == mask.shape == dseg.shape
    np.testing.assert_allclose(image.affine, mask.affine, atol=1e-4)
    assert "White matter" in files["dseg_tsv"].read_text()
