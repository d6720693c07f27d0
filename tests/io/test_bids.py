"""contrareg_bids.io.bids: real pybids layouts built on disk by tests/bids_factory.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from contrareg_bids.io.bids import (
    BIDSError,
    InvalidDatasetError,
    NoMatchError,
    collect_anatomicals,
    collect_sessions,
    get_age_weeks,
    make_layout,
    require_age,
    select_participants,
    subject_session_id,
)
from tests.bids_factory import make_bids_dataset, make_volume

VOL = make_volume((6, 7, 5))


@pytest.fixture
def flat_dataset(tmp_path) -> Path:
    """Three subjects, no sessions, ages in participants.tsv (weeks)."""
    return make_bids_dataset(
        tmp_path / "bids",
        {
            "01": {"T1w": VOL, "T2w": VOL, "age": 40.5},
            "02": {"T2w": VOL, "run-1_T1w": VOL, "run-2_T1w": VOL, "age": 38},
            "pt10": {"T1w": VOL, "acq-fast_T2w": VOL, "acq-slow_T2w": VOL, "age": "n/a"},
        },
    )


@pytest.fixture
def session_dataset(tmp_path) -> Path:
    return make_bids_dataset(
        tmp_path / "bids_sessions",
        {
            "01": {"1": {"T2w": VOL, "age": 35.0}, "2": {"T1w": VOL, "T2w": VOL, "age": 43.0}},
            "02": {"a": {"T2w": VOL, "age": 37.0}},
        },
        sessions=True,
        age_source="sessions",
    )


def test_subject_session_id():
    assert subject_session_id("01") == "sub-01"
    assert subject_session_id("sub-01", "ses-2") == "sub-01_ses-2"
    assert subject_session_id("01", "2") == "sub-01_ses-2"
    assert subject_session_id("01", None) == "sub-01"


def test_make_layout_needs_dataset_description(tmp_path, flat_dataset):
    layout = make_layout(flat_dataset)
    assert sorted(layout.get_subjects()) == ["01", "02", "pt10"]
    assert make_layout(flat_dataset, validate=True).get_subjects()

    (flat_dataset / "dataset_description.json").unlink()
    with pytest.raises(InvalidDatasetError, match=r"dataset_description\.json: missing") as err:
        make_layout(flat_dataset)
    assert err.value.exit_code == 16
    assert isinstance(err.value, BIDSError) and isinstance(err.value, ValueError)

    (flat_dataset / "dataset_description.json").write_text("{not json")
    with pytest.raises(InvalidDatasetError, match="not valid JSON"):
        make_layout(flat_dataset)
    with pytest.raises(InvalidDatasetError, match="not found"):
        make_layout(tmp_path / "nowhere")


def test_make_layout_database_dir(tmp_path, flat_dataset):
    db = tmp_path / "db"
    assert make_layout(flat_dataset, database_dir=db).get_subjects()
    assert any(db.iterdir())
    assert sorted(make_layout(flat_dataset, database_dir=db).get_subjects()) == [
        "01",
        "02",
        "pt10",
    ]


def test_select_participants(flat_dataset):
    layout = make_layout(flat_dataset)
    assert select_participants(layout, None) == ["01", "02", "pt10"]
    assert select_participants(layout, []) == ["01", "02", "pt10"]
    assert select_participants(layout, ["sub-02", "01", "02"]) == ["01", "02"]
    with pytest.raises(NoMatchError, match="not found: 03, x") as err:
        select_participants(layout, ["01", "sub-03", "x"])
    assert err.value.exit_code == 18
    assert "Available: 01, 02, pt10" in str(err.value)


def test_sessions(flat_dataset, session_dataset):
    flat = make_layout(flat_dataset)
    assert collect_sessions(flat, "01") == [None]
    with pytest.raises(NoMatchError, match="has no sessions"):
        collect_sessions(flat, "01", ["1"])

    layout = make_layout(session_dataset)
    assert collect_sessions(layout, "sub-01") == ["1", "2"]
    assert collect_sessions(layout, "01", ["ses-2"]) == ["2"]
    assert collect_sessions(layout, "02") == ["a"]
    with pytest.raises(NoMatchError, match="no session\\(s\\) 3"):
        collect_sessions(layout, "01", ["3"])


def test_collect_anatomicals(flat_dataset, session_dataset):
    layout = make_layout(flat_dataset)
    one = collect_anatomicals(layout, "01")
    assert [Path(p).name for p in one["T1w"]] == ["sub-01_T1w.nii.gz"]
    assert [Path(p).name for p in one["T2w"]] == ["sub-01_T2w.nii.gz"]
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in one["T1w"] + one["T2w"])

    two = collect_anatomicals(layout, "sub-02")  # several runs kept, sorted
    assert [Path(p).name for p in two["T1w"]] == [
        "sub-02_run-1_T1w.nii.gz",
        "sub-02_run-2_T1w.nii.gz",
    ]

    sessions = make_layout(session_dataset)
    ses1 = collect_anatomicals(sessions, "01", "1")
    assert ses1["T1w"] == [] and [Path(p).name for p in ses1["T2w"]] == ["sub-01_ses-1_T2w.nii.gz"]
    both = collect_anatomicals(sessions, "01")  # no session: no filter
    assert len(both["T2w"]) == 2


def test_bids_filters(flat_dataset):
    layout = make_layout(flat_dataset)
    default = collect_anatomicals(layout, "pt10")
    assert len(default["T2w"]) == 2

    fast = collect_anatomicals(layout, "pt10", bids_filters={"t2w": {"acquisition": "fast"}})
    assert [Path(p).name for p in fast["T2w"]] == ["sub-pt10_acq-fast_T2w.nii.gz"]
    assert len(fast["T1w"]) == 1  # untouched

    # fMRIPrep conventions: null = entity absent, "*" = any value; other keys ignored
    none = collect_anatomicals(
        layout, "pt10", bids_filters={"T2w": {"acquisition": None}, "bold": {"task": "rest"}}
    )
    assert none["T2w"] == []
    anyacq = collect_anatomicals(layout, "pt10", bids_filters={"t2w": {"acquisition": "*"}})
    assert len(anyacq["T2w"]) == 2
    runs = collect_anatomicals(layout, "02", bids_filters={"t1w": {"run": 2}})
    assert [Path(p).name for p in runs["T1w"]] == ["sub-02_run-2_T1w.nii.gz"]

    with pytest.raises(BIDSError, match="BIDS filters for T1w"):
        collect_anatomicals(layout, "01", bids_filters={"t1w": {"nonsense": "x"}})
    with pytest.raises(BIDSError, match="must be an object"):
        collect_anatomicals(layout, "01", bids_filters={"t1w": "mprage"})


# ---------------------------------------------------------------------------------------------
# age
# ---------------------------------------------------------------------------------------------
def test_age_from_participants(flat_dataset):
    layout = make_layout(flat_dataset)
    assert get_age_weeks(layout, "01") == (40.5, "participants.tsv:pma")
    assert get_age_weeks(flat_dataset, "sub-02")[0] == 38.0  # a path works too

    age, why = get_age_weeks(layout, "pt10")  # n/a
    assert age is None
    assert "participants.tsv (no usable age column)" in why
    with pytest.raises(BIDSError, match="sub-pt10: the post-menstrual age") as err:
        require_age(layout, "pt10")
    message = str(err.value)
    assert "participants.tsv" in message and "sub-pt10/sub-pt10_scans.tsv (absent)" in message
    assert "pma, pma_weeks, postmenstrual_age, scan_age, age_weeks" in message


def test_age_from_sessions(session_dataset):
    assert get_age_weeks(session_dataset, "01", "1") == (
        35.0,
        "sub-01/sub-01_sessions.tsv:pma",
    )
    assert get_age_weeks(session_dataset, "01", "ses-2")[0] == 43.0
    age, why = get_age_weeks(session_dataset, "01", "9")
    assert age is None and "no row for this session" in why


def test_age_from_scans_row_of_the_scan(tmp_path):
    root = make_bids_dataset(
        tmp_path / "bids",
        {"01": {"1": {"T1w": VOL, "T2w": VOL, "age": 39.0}}},
        sessions=True,
        age_source="scans",
        age_column="pma",
    )
    scans = root / "sub-01/ses-1/sub-01_ses-1_scans.tsv"
    scans.write_text(
        "filename\tpma\nanat/sub-01_ses-1_T1w.nii.gz\t39.0\nanat/sub-01_ses-1_T2w.nii.gz\t39.5\n"
    )
    t2 = root / "sub-01/ses-1/anat/sub-01_ses-1_T2w.nii.gz"
    assert get_age_weeks(root, "01", "1", scan_path=t2) == (
        39.5,
        "sub-01/ses-1/sub-01_ses-1_scans.tsv:pma",
    )
    assert get_age_weeks(root, "01", "1", scan_path="anat/sub-01_ses-1_T1w.nii.gz")[0] == 39.0
    assert (
        get_age_weeks(root, "01", "1", scan_path="sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz")[0]
        == 39.0
    )
    # rows disagree and no scan given: not used
    age, why = get_age_weeks(root, "01", "1")
    assert age is None and "rows disagree" in why


def test_scans_before_sessions_before_participants(tmp_path):
    root = make_bids_dataset(
        tmp_path / "bids",
        {"01": {"1": {"T2w": VOL, "age": 41.0}}},
        sessions=True,
        age_source="scans",
    )
    (root / "participants.tsv").write_text("participant_id\tpma\nsub-01\t30\n")
    (root / "sub-01/sub-01_sessions.tsv").write_text("session_id\tscan_age\nses-1\t35\n")
    assert get_age_weeks(root, "01", "1")[0] == 41.0
    (root / "sub-01/ses-1/sub-01_ses-1_scans.tsv").unlink()
    assert get_age_weeks(root, "01", "1") == (35.0, "sub-01/sub-01_sessions.tsv:scan_age")
    (root / "sub-01/sub-01_sessions.tsv").unlink()
    assert get_age_weeks(root, "01", "1") == (30.0, "participants.tsv:pma")


@pytest.mark.parametrize(
    ("units", "value", "weeks"),
    [
        ("weeks", "4", 4.0),
        ("days", "28", 4.0),
        ("months", "3", 3 * 52.1775 / 12),
        ("years", "1", 52.1775),
        ("Weeks", "2+3", 2 + 3 / 7),
    ],
)
def test_age_column_is_postnatal_as_nibabies_reads_it(tmp_path, units, value, weeks):
    """Regression: ``age`` (with its Units) was read as the post-menstrual age, so a
    nibabies-style table (age 3, months) picked a 13-week cohort."""
    root = make_bids_dataset(
        tmp_path / "bids", {"01": {"T2w": VOL, "age": value}}, age_column="age", age_units=units
    )
    age, why = get_age_weeks(root, "01")
    assert age == pytest.approx(40.0 + weeks)
    assert why.startswith("participants.tsv:age [") and "term birth (40 weeks) assumed" in why


def test_postnatal_age_columns_named_by_unit_and_birth_age(tmp_path):
    root = tmp_path / "bids"
    make_bids_dataset(root, {"01": {"T2w": VOL}, "02": {"T2w": VOL}}, age_source=None)
    (root / "participants.tsv").write_text(
        "participant_id\tage_months\tbirth_age\nsub-01\t2\t35\nsub-02\t1\tn/a\n"
    )
    age, why = get_age_weeks(root, "01")
    assert age == pytest.approx(35 + 2 * 52.1775 / 12) and why.endswith("+ birth_age")
    age, why = get_age_weeks(root, "02")
    assert age == pytest.approx(40 + 52.1775 / 12) and "term birth" in why
    # an explicit post-menstrual age in the same row wins
    (root / "participants.tsv").write_text(
        "participant_id\tage_weeks\tscan_age\nsub-01\t3\t41.5\nsub-02\t3\tn/a\n"
    )
    assert get_age_weeks(root, "01") == (41.5, "participants.tsv:scan_age")
    assert get_age_weeks(root, "02")[0] == pytest.approx(43.0)


def test_participants_table_with_a_session_column(tmp_path):
    root = make_bids_dataset(
        tmp_path / "bids", {"01": {"1": {"T2w": VOL}, "2": {"T2w": VOL}}}, sessions=True,
        age_source=None,
    )  # fmt: skip
    (root / "participants.tsv").write_text(
        "participant_id\tsession\tpma\nsub-01\tses-1\t38\nsub-01\t2\t44\n"
    )
    assert get_age_weeks(root, "01", "1") == (38.0, "participants.tsv:pma")
    assert get_age_weeks(root, "01", "2")[0] == 44.0
    age, why = get_age_weeks(root, "01", "3")
    assert age is None and "no row for this participant" in why


def test_age_given_on_the_command_line():
    from contrareg_bids.io.bids import age_override

    assert age_override(None, None) is None
    assert age_override(41.0, None) == (41.0, "--pma")
    weeks, why = age_override(None, 3)
    assert weeks == pytest.approx(40 + 3 * 52.1775 / 12) and "postnatal" in why


def test_age_without_units_is_not_guessed(tmp_path):
    root = make_bids_dataset(
        tmp_path / "bids", {"01": {"T2w": VOL, "age": 40}}, age_column="age", age_units=None
    )
    age, why = get_age_weeks(root, "01")
    assert age is None
    assert "column 'age' has no units" in why and "participants.json" in why
    (root / "participants.json").unlink()
    age, why = get_age_weeks(root, "01")
    assert age is None and "no sidecar JSON" in why
    with pytest.raises(BIDSError, match="has no units"):
        require_age(root, "01")

    (root / "participants.json").write_text(json.dumps({"age": {"Units": "fortnights"}}))
    age, why = get_age_weeks(root, "01")
    assert age is None and "'fortnights'" in why


def test_week_columns_respect_sidecar_units(tmp_path):
    root = make_bids_dataset(
        tmp_path / "bids",
        {"01": {"T2w": VOL, "age": 273}},
        age_column="scan_age",
        age_units="days",
    )
    assert get_age_weeks(root, "01") == (39.0, "participants.tsv:scan_age [days]")


def test_bad_age_values(tmp_path):
    root = make_bids_dataset(tmp_path / "bids", {"01": {"T2w": VOL, "age": "forty"}})
    with pytest.raises(BIDSError, match=r"participants.tsv, column 'pma'.*'forty'"):
        get_age_weeks(root, "01")
    root = make_bids_dataset(tmp_path / "bids2", {"01": {"T2w": VOL, "age": -3}})
    with pytest.raises(BIDSError, match="not a positive age"):
        get_age_weeks(root, "01")


def test_no_age_tables(tmp_path):
    root = make_bids_dataset(tmp_path / "bids", {"01": {"T2w": VOL}}, age_source=None)
    age, why = get_age_weeks(root, "01")
    assert age is None and "no age was found" in why


def test_factory_writes_valid_images(flat_dataset):
    import nibabel as nib

    img = nib.load(flat_dataset / "sub-01/anat/sub-01_T1w.nii.gz")
    np.testing.assert_allclose(np.asanyarray(img.dataobj), VOL)
    assert (flat_dataset / "participants.json").is_file()


def test_column_read_as_its_sidecar_describes_it(tmp_path):
    """Regression: ``age_weeks`` described as "Postmenstrual age at scan" in
    participants.json was read as postnatal (40 weeks added: 77-81 weeks, cohort 44)."""
    root = make_bids_dataset(tmp_path / "bids", {"01": {"T2w": VOL}}, age_source=None)
    (root / "participants.tsv").write_text("participant_id\tage_weeks\tga\nsub-01\t38.5\t34\n")
    (root / "participants.json").write_text(
        json.dumps({"age_weeks": {"Description": "Postmenstrual age at scan", "Units": "weeks"}})
    )
    age, why = get_age_weeks(root, "01")
    assert age == 38.5
    assert why == "participants.tsv:age_weeks, post-menstrual per its sidecar"

    # a PMA-named column that its sidecar calls postnatal, with the age at birth described too
    (root / "participants.tsv").write_text("participant_id\tscan_age\tga\nsub-01\t2\t36\n")
    (root / "participants.json").write_text(
        json.dumps(
            {
                "scan_age": {"Description": "Chronological age", "Units": "weeks"},
                "ga": {"Description": "Gestational age at birth", "Units": "weeks"},
            }
        )
    )
    age, why = get_age_weeks(root, "01")
    assert (age, why) == (38.0, "participants.tsv:scan_age [weeks, postnatal] + ga")
    # a column of another name without Units is not guessed: the term birth is assumed
    (root / "participants.json").write_text(
        json.dumps(
            {
                "scan_age": {"Description": "Chronological age", "Units": "weeks"},
                "ga": {"Description": "Gestational age at birth"},
            }
        )
    )
    age, why = get_age_weeks(root, "01")
    assert age == 42.0 and "term birth" in why


def test_birth_age_column_from_its_sidecar(tmp_path):
    root = make_bids_dataset(tmp_path / "bids", {"01": {"T2w": VOL}}, age_source=None)
    (root / "participants.tsv").write_text("participant_id\tage_weeks\tbirth_ga\nsub-01\t3\t33\n")
    (root / "participants.json").write_text(
        json.dumps({"age_weeks": {"Description": "Postnatal age at scan"}})
    )
    assert get_age_weeks(root, "01") == (
        36.0,
        "participants.tsv:age_weeks [weeks, postnatal] + birth_ga",
    )


def test_column_meaning():
    from contrareg_bids.io.bids import column_meaning

    def says(text):
        return column_meaning({"c": {"Description": text}}, "c")

    assert says("Postmenstrual age at scan") == "pma"
    assert says("post-menstrual age (weeks)") == "pma"
    assert says("PMA at MRI") == "pma"
    assert says("Gestational age at scan") == "pma"
    assert says("Gestational age at birth") == "birth"
    assert says("Postnatal age") == "postnatal"
    assert says("age since birth, in days") == "postnatal"
    assert says("Age of the participant") is None
    # a corrected age counts from the due date (PMA - 40 weeks): not a PMA, not guessed
    assert says("Corrected age at scan") is None
    assert column_meaning({"c": "free text"}, "c") is None
    assert column_meaning({}, "c") is None
