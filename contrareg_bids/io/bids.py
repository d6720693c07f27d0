"""BIDS queries (pybids) and post-menstrual age at scan (data flow step 1).

Plain functions; Nipype interfaces and the CLI wrap them. Errors are :class:`BIDSError`
(a ``ValueError``) whose ``exit_code`` tells the CLI which BIDS-Apps exit code to use:
:class:`InvalidDatasetError` (16, not a usable BIDS dataset) and :class:`NoMatchError`
(18, a participant/session/file asked for does not exist). Other :class:`BIDSError`\\ s (a
subject without an age, a malformed table) are per-subject failures (1).

Age (weeks, post-menstrual) is looked up, first hit wins, in

1. ``sub-X[/ses-Y]/sub-X[_ses-Y]_scans.tsv``: the row of the scan file;
2. ``sub-X/sub-X_sessions.tsv``: the row of the session;
3. ``participants.tsv``: the row of the subject (of the session, when the table has a
   ``session``/``session_id`` column);

or given on the command line (``--pma``, ``--age-months``). In a row, an explicit
post-menstrual age (:data:`PMA_COLUMNS`: ``pma``, ``pma_weeks``, ``postmenstrual_age``,
``scan_age``; weeks unless the sidecar gives ``Units``) wins. A column's sidecar entry
(``participants.json``, ``sessions.json``, ``scans.json``: ``Description``/``LongName``) says
what it measures before its name does: ``age_weeks`` described as "Postmenstrual age at scan"
is read as a PMA, and a column of another name counts when its sidecar describes it as an
age (post-menstrual, postnatal, or at birth) and gives its ``Units``. Otherwise the age is read as
nibabies reads it, as the **postnatal** (chronological) age: ``age_weeks``, ``age_months``,
``age_years`` (unit from the name) or ``age`` (unit from the sidecar JSON, never guessed),
and becomes a PMA by adding the gestational age at birth (:data:`BIRTH_GA_COLUMNS`, weeks)
or, without one, a term birth (40 weeks; the provenance says it was assumed). Week values
may be written ``38+2`` (38 weeks 2 days).
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .units import TERM_WEEKS, WEEKS_PER, normalize_unit

if TYPE_CHECKING:
    from bids import BIDSLayout

__all__ = [
    "AGE_COLUMNS",
    "ANAT_SUFFIXES",
    "BIRTH_GA_COLUMNS",
    "PMA_COLUMNS",
    "POSTNATAL_COLUMNS",
    "BIDSError",
    "InvalidDatasetError",
    "NoMatchError",
    "collect_anatomicals",
    "collect_sessions",
    "get_age_weeks",
    "make_layout",
    "require_age",
    "select_participants",
    "select_sessions",
    "subject_session_id",
]

#: Post-menstrual age at scan, weeks unless the sidecar gives ``Units`` (by priority).
PMA_COLUMNS = ("pma", "pma_weeks", "postmenstrual_age", "scan_age")
#: Postnatal (chronological) age as nibabies reads it: the unit from the column's name, or
#: for ``age`` from the sidecar (required).
POSTNATAL_COLUMNS = {
    "age_weeks": "weeks",
    "age_months": "months",
    "age_years": "years",
    "age": None,
}
#: Gestational age at birth (weeks unless the sidecar says), turning a postnatal age into PMA.
BIRTH_GA_COLUMNS = ("birth_age", "gestational_age_at_birth", "ga_at_birth", "birth_ga")
#: All accepted age columns, by priority.
AGE_COLUMNS = (*PMA_COLUMNS, *POSTNATAL_COLUMNS)
#: Anatomical modalities collected by :func:`collect_anatomicals`.
ANAT_SUFFIXES = ("T1w", "T2w")

_MISSING = {"", "n/a", "na", "nan", "none", "null"}
_LABEL_RE = re.compile(r"^[A-Za-z0-9]+$")
_WEEKS_DAYS_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*\+\s*(\d+(?:\.\d+)?)\s*$")


class BIDSError(ValueError):
    """A BIDS input problem; the message names the file/label and what to do."""

    exit_code = 1


class InvalidDatasetError(BIDSError):
    """The folder is not a usable BIDS dataset (BIDS-Apps exit code 16)."""

    exit_code = 16


class NoMatchError(BIDSError):
    """A participant, session or file asked for does not exist (exit code 18)."""

    exit_code = 18


# --------------------------------------------------------------------------------------------
# layout and entities
# --------------------------------------------------------------------------------------------
def _strip(label: str, prefix: str) -> str:
    label = str(label).strip()
    return label[len(prefix) :] if label.startswith(prefix) else label


def subject_session_id(subject: str, session: str | None = None) -> str:
    """``"sub-01"`` or ``"sub-01_ses-1"`` (labels given with or without their prefix)."""
    out = f"sub-{_strip(subject, 'sub-')}"
    if session:
        out += f"_ses-{_strip(session, 'ses-')}"
    return out


def make_layout(
    bids_dir: str | os.PathLike[str],
    *,
    validate: bool = False,
    database_dir: str | os.PathLike[str] | None = None,
    reset_database: bool = False,
) -> BIDSLayout:
    """Index a BIDS dataset with pybids.

    ``validate`` is pybids' filename validation (the CLI's ``--skip-bids-validation`` turns it
    off); ``database_dir`` caches the index (``--bids-database-dir``) so that parallel jobs do
    not re-index a large dataset.
    """
    from bids import BIDSLayout
    from bids.exceptions import BIDSValidationError

    root = Path(bids_dir).absolute()
    if not root.is_dir():
        raise InvalidDatasetError(
            f"{root}: BIDS folder not found (or not a folder). Give the root of the dataset."
        )
    description = root / "dataset_description.json"
    if not description.is_file():
        raise InvalidDatasetError(
            f"{description}: missing. {root} is not a BIDS dataset root; point to the folder "
            'holding dataset_description.json, or add one: {"Name": "...", "BIDSVersion": '
            '"1.9.0"}.'
        )
    try:
        json.loads(description.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidDatasetError(
            f"{description}: not valid JSON ({exc}). Fix the file (a JSON linter shows where)."
        ) from exc
    try:
        return BIDSLayout(
            str(root),
            validate=validate,
            database_path=str(database_dir) if database_dir is not None else None,
            reset_database=reset_database,
        )
    except (BIDSValidationError, ValueError, OSError) as exc:
        raise InvalidDatasetError(
            f"{root}: pybids cannot index this dataset ({exc}). Fix the dataset, or run with "
            "--skip-bids-validation."
        ) from exc


def select_participants(layout: BIDSLayout, labels: Iterable[str] | None = None) -> list[str]:
    """Participant labels (no ``sub-``) to process, sorted.

    ``labels`` may carry the ``sub-`` prefix; ``None``/empty means every subject. Unknown
    labels raise :class:`NoMatchError` listing them (all of them at once, so that a typo in a
    long list is fixed in one go).
    """
    available = sorted(str(s) for s in layout.get_subjects())
    if not available:
        raise NoMatchError(f"{layout.root}: no subjects (no sub-* folders with BIDS files).")
    if not labels:
        return available
    wanted = sorted({_strip(label, "sub-") for label in labels if str(label).strip()})
    unknown = [label for label in wanted if label not in available]
    if unknown:
        shown = ", ".join(available[:20]) + (" ..." if len(available) > 20 else "")
        raise NoMatchError(
            f"{layout.root}: participant label(s) not found: {', '.join(unknown)}. "
            f"Available: {shown}. Check --participant-label (labels without 'sub-' work too)."
        )
    return wanted


def collect_sessions(
    layout: BIDSLayout, subject: str, session_labels: Iterable[str] | None = None
) -> list[str | None]:
    """Session labels of one subject, sorted; ``[None]`` when the subject has no sessions.

    ``session_labels`` (with or without ``ses-``) restricts the list; unknown ones raise
    :class:`NoMatchError`.
    """
    subject = _strip(subject, "sub-")
    available = sorted(str(s) for s in layout.get_sessions(subject=subject))
    wanted = sorted({_strip(s, "ses-") for s in session_labels or () if str(s).strip()})
    if not available:
        if wanted:
            raise NoMatchError(
                f"{layout.root}: sub-{subject} has no sessions, but session(s) "
                f"{', '.join(wanted)} were asked for. Drop the session filter for this dataset."
            )
        return [None]
    if not wanted:
        return list(available)
    unknown = [s for s in wanted if s not in available]
    if unknown:
        raise NoMatchError(
            f"{layout.root}: sub-{subject} has no session(s) {', '.join(unknown)}; "
            f"available: {', '.join(available)}."
        )
    return list(wanted)


def select_sessions(
    layout: BIDSLayout, subjects: Iterable[str], session_labels: Iterable[str] | None = None
) -> dict[str, list[str | None]]:
    """Sessions to process per subject (``[None]`` for a subject without sessions).

    With ``session_labels`` a subject gets those of its sessions that are asked for; a
    subject with none of them is left out. A label that is a session of none of the
    ``subjects`` raises :class:`NoMatchError` (exit code 18 of the BIDS-App) listing the
    sessions that exist, as unknown participant labels do: a typo must not pass as "nothing
    to do".
    """
    subjects = [_strip(s, "sub-") for s in subjects]
    if not session_labels:
        return {s: collect_sessions(layout, s) for s in subjects}
    wanted = sorted({_strip(str(s), "ses-") for s in session_labels if str(s).strip()})
    have = {s: sorted(str(x) for x in layout.get_sessions(subject=s)) for s in subjects}
    existing = sorted({x for sessions in have.values() for x in sessions})
    unknown = [s for s in wanted if s not in existing]
    if unknown:
        shown = ", ".join(existing[:20]) + (" ..." if len(existing) > 20 else "")
        raise NoMatchError(
            f"{layout.root}: session label(s) not found: {', '.join(unknown)}. "
            f"Sessions of the selected participants: {shown or 'none (no ses-* folders)'}. "
            "Check --session-label (labels without 'ses-' work too)."
        )
    return {s: [x for x in wanted if x in have[s]] for s in subjects}


def _filter_value(value: Any) -> Any:
    """fMRIPrep's filter-file conventions: ``null`` -> no such entity, ``"*"`` -> any value."""
    from bids.layout import Query

    if value is None:
        return Query.NONE
    if value == "*":
        return Query.ANY
    if isinstance(value, list | tuple):
        return [_filter_value(v) for v in value]
    return value


def collect_anatomicals(
    layout: BIDSLayout,
    subject: str,
    session: str | None = None,
    bids_filters: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, list[str]]:
    """Paths of the T1w and T2w images of one subject (and session), sorted.

    ``bids_filters`` follows fMRIPrep's ``--bids-filter-file``: ``{"t1w": {...}, "t2w":
    {...}}`` (keys case-insensitive; other keys such as ``bold`` are ignored), entity filters
    merged over the defaults ``datatype=anat, suffix=<modality>, extension=.nii/.nii.gz``;
    ``null`` means "entity absent" and ``"*"`` "any value". ``session=None`` does not filter
    on sessions. Several runs are all returned (the workflow uses the first and warns).

    Why not niworkflows' ``collect_data``: it queries fMRIPrep's set of suffixes (T1w, T2w,
    FLAIR, bold, ...) with their own defaults and no ``"*"``; here only the two anatomical
    modalities are wanted, with the same filter file semantics, and a bad entity in the
    filter file is named as the user wrote it.
    """
    from bids.exceptions import BIDSEntityError

    subject = _strip(subject, "sub-")
    filters = {str(k).lower(): v for k, v in (bids_filters or {}).items()}
    out: dict[str, list[str]] = {}
    for suffix in ANAT_SUFFIXES:
        extra = filters.get(suffix.lower(), {}) or {}
        if not isinstance(extra, Mapping):
            raise BIDSError(
                f"BIDS filters: the value of {suffix.lower()!r} must be an object of entity "
                f'filters (e.g. {{"acquisition": "mprage"}}), not {extra!r}.'
            )
        query: dict[str, Any] = {
            "datatype": "anat",
            "suffix": suffix,
            "extension": [".nii", ".nii.gz"],
        }
        query.update({k: _filter_value(v) for k, v in extra.items()})
        query["subject"] = subject
        if session is not None:
            query["session"] = _strip(session, "ses-")
        try:
            files = layout.get(return_type="file", **query)
        except (BIDSEntityError, ValueError) as exc:
            raise BIDSError(
                f"BIDS filters for {suffix}: {exc}. Use BIDS entity names as pybids knows them "
                "(subject, session, acquisition, reconstruction, run, ...)."
            ) from exc
        out[suffix] = sorted(str(f) for f in files)
    return out


# --------------------------------------------------------------------------------------------
# age
# --------------------------------------------------------------------------------------------
def _read_tsv(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fobj:
            reader = csv.DictReader(fobj, delimiter="\t")
            rows = [
                {
                    str(k).strip(): (v or "").strip()
                    for k, v in row.items()
                    if k is not None and isinstance(v, str | type(None))
                }
                for row in reader
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise BIDSError(f"{path}: cannot be read as a TSV table ({exc}); fix the file.") from exc
    return rows


def _read_sidecar(candidates: Iterable[Path]) -> tuple[dict[str, Any], Path | None]:
    for path in candidates:
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8-sig"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise BIDSError(f"{path}: not valid JSON ({exc}); fix the file.") from exc
            if isinstance(data, dict):
                return data, path
    return {}, None


def _column_units(sidecar: Mapping[str, Any], column: str) -> str | None:
    entry = sidecar.get(column)
    if not isinstance(entry, Mapping):
        return None
    for key in ("Units", "units", "Unit", "unit"):
        if isinstance(entry.get(key), str) and entry[key].strip():
            return entry[key].strip()
    return None


#: What a column's sidecar ``Description``/``LongName`` says it measures, first match wins:
#: a column is read as its sidecar describes it, before its name (a lab's ``age_weeks`` that
#: its participants.json calls "Postmenstrual age at scan" is a PMA, not a postnatal age).
_MEANING_PATTERNS = (
    (
        "birth",
        re.compile(r"\bat birth\b|\bbirth (?:age|ga)\b|\bgestation(?:al)? age at birth", re.I),
    ),
    (
        "pma",
        re.compile(
            r"post[- ]?menstrual|\bpma\b|gestational age at (?:scan|mri|imaging)|\bscan age\b",
            re.I,
        ),
    ),
    ("postnatal", re.compile(r"post[- ]?natal|chronological|since birth|after birth", re.I)),
)


def column_meaning(sidecar: Mapping[str, Any], column: str) -> str | None:
    """``"pma"``, ``"postnatal"`` or ``"birth"`` (gestational age at birth) when the column's
    sidecar entry describes it as such, else ``None`` (the column's name decides)."""
    entry = sidecar.get(column)
    if not isinstance(entry, Mapping):
        return None
    text = " ".join(
        str(entry[key]) for key in ("LongName", "Description") if isinstance(entry.get(key), str)
    )
    for meaning, pattern in _MEANING_PATTERNS:
        if pattern.search(text):
            return meaning
    return None


def _parse_age(raw: str, units: str, where: str) -> float | None:
    if raw.strip().lower() in _MISSING:
        return None
    match = _WEEKS_DAYS_RE.match(raw)
    if match and units == "weeks":
        value = float(match.group(1)) + float(match.group(2)) / 7.0
    else:
        try:
            value = float(raw)
        except ValueError:
            raise BIDSError(
                f"{where}: age value {raw!r} is not a number; write a number (or 'n/a')."
            ) from None
    weeks = value * WEEKS_PER[units]
    if not weeks >= 0 or weeks == float("inf"):  # 0: a postnatal age on the day of birth
        raise BIDSError(f"{where}: age {raw!r} ({units}) is not a positive age; fix the value.")
    return weeks


def _column_weeks(
    row: Mapping[str, str],
    sidecar: Mapping[str, Any],
    column: str,
    default_units: str | None,
    where: str,
    sidecar_path: Path | None,
) -> tuple[float | None, str | None, str | None]:
    """(weeks, units, note on why nothing usable) of one column of one row."""
    if column not in row or row[column].strip().lower() in _MISSING:
        return None, None, None
    units_raw = _column_units(sidecar, column) or default_units
    if units_raw is None:
        return (
            None,
            None,
            (
                f"{where}: column {column!r} has no units (no sidecar"
                + (f" entry in {sidecar_path.name}" if sidecar_path else " JSON")
                + f'); add {{"{column}": {{"Units": "months"}}}} (or days/weeks/years) to the '
                "sidecar, or use a pma (post-menstrual weeks) or age_months column"
            ),
        )
    units = normalize_unit(units_raw)
    if units is None:
        return (
            None,
            None,
            (
                f"{where}: column {column!r} has units {units_raw!r}, which are not one of "
                "weeks/days/months/years"
            ),
        )
    return _parse_age(row[column], units, f"{where}, column {column!r}"), units, None


def _columns_by_meaning(
    row: Mapping[str, str], sidecar: Mapping[str, Any]
) -> dict[str, list[tuple[str, str | None]]]:
    """The row's age columns grouped by what they measure, each with the units its name
    implies: the sidecar's description first, the column's name otherwise."""
    named = (
        [(c, "pma", "weeks") for c in PMA_COLUMNS]
        + [(c, "postnatal", u) for c, u in POSTNATAL_COLUMNS.items()]
        + [(c, "birth", "weeks") for c in BIRTH_GA_COLUMNS]
    )
    groups: dict[str, list[tuple[str, str | None]]] = {"pma": [], "postnatal": [], "birth": []}
    for column, by_name, units in named:
        if column in row:
            groups[column_meaning(sidecar, column) or by_name].append((column, units))
    known = {column for column, _, _ in named}
    for column in row:  # other columns count when their sidecar says what they are
        meaning = None if column in known else column_meaning(sidecar, column)
        if meaning is not None:
            groups[meaning].append((column, None))  # units from the sidecar, never guessed
    return groups


def _age_from_row(
    row: Mapping[str, str], sidecar: Mapping[str, Any], where: str, sidecar_path: Path | None
) -> tuple[float | None, str | None, str | None]:
    """(PMA weeks, how it was read, note on why nothing usable) for one table row."""
    groups = _columns_by_meaning(row, sidecar)
    note = None
    for column, units_of_name in groups["pma"]:
        weeks, units, why = _column_weeks(row, sidecar, column, units_of_name, where, sidecar_path)
        if weeks is not None:
            label = column if units == "weeks" else f"{column} [{units}]"
            if column not in PMA_COLUMNS:
                label += ", post-menstrual per its sidecar"
            return weeks, label, None
        note = note or why
    for column, units_of_name in groups["postnatal"]:
        weeks, units, why = _column_weeks(row, sidecar, column, units_of_name, where, sidecar_path)
        note = note or why
        if weeks is None:
            continue
        label = f"{column} [{units}, postnatal]"
        for ga_column, ga_units in groups["birth"]:
            ga, _, ga_why = _column_weeks(row, sidecar, ga_column, ga_units, where, sidecar_path)
            if ga is not None:
                return ga + weeks, f"{label} + {ga_column}", None
            note = note or ga_why
        return TERM_WEEKS + weeks, f"{label} + term birth ({TERM_WEEKS:g} weeks) assumed", None
    return None, None, note


def age_override(pma: float | None, age_months: float | None) -> tuple[float, str] | None:
    """The age given on the command line (``--pma`` weeks, or nibabies' ``--age-months``,
    postnatal, term birth assumed) as (PMA weeks, provenance), or None."""
    if pma is not None:
        return float(pma), "--pma"
    if age_months is not None:
        weeks = TERM_WEEKS + float(age_months) * WEEKS_PER["months"]
        return weeks, f"--age-months (postnatal; term birth, {TERM_WEEKS:g} weeks, assumed)"
    return None


def _age_sources(
    root: Path, subject: str, session: str | None
) -> list[tuple[str, Path, list[Path], str, str]]:
    """(kind, tsv, sidecar candidates, id column, id value) in the order of lookup."""
    sub = f"sub-{subject}"
    ses = f"ses-{session}" if session else None
    sub_dir = root / sub
    scans_dir = sub_dir / ses if ses else sub_dir
    scans = f"{sub}_{ses}_scans" if ses else f"{sub}_scans"
    sources = [
        (
            "scan",
            scans_dir / f"{scans}.tsv",
            [scans_dir / f"{scans}.json", root / "scans.json"],
            "filename",
            "",
        )
    ]
    if ses:
        sessions = [sub_dir / f"{sub}_sessions.json", root / "sessions.json"]
        sources.append(("session", sub_dir / f"{sub}_sessions.tsv", sessions, "session_id", ses))
    participants = [root / "participants.json"]
    sources.append(("participant", root / "participants.tsv", participants, "participant_id", sub))
    return sources


def _rows_of_session(rows: list[dict[str, str]], session: str | None) -> list[dict[str, str]]:
    """participants.tsv rows of one session when the table has a ``session`` (or
    ``session_id``) column: that session's row, else the rows that name no session."""

    def session_of(row: dict[str, str]) -> str:
        value = row.get("session", row.get("session_id", "")) or ""
        return "" if value.strip().lower() in _MISSING else _strip(value.strip(), "ses-")

    if not any(session_of(r) for r in rows):
        return rows
    if session is not None:
        own = [r for r in rows if session_of(r) == session]
        if own:
            return own
    return [r for r in rows if not session_of(r)]


def _scan_names(root: Path, tsv: Path, scan_path: str | os.PathLike[str]) -> set[str]:
    """How ``scan_path`` may be written in the ``filename`` column of ``tsv``."""
    scan = Path(scan_path)
    candidates = [scan] if scan.is_absolute() else [root / scan, tsv.parent / scan]
    names = set() if scan.is_absolute() else {scan.as_posix()}
    for candidate in candidates:
        try:
            names.add(candidate.absolute().relative_to(tsv.parent.absolute()).as_posix())
        except ValueError:
            pass
    return names


def _root_of(layout_or_bids_dir: BIDSLayout | str | os.PathLike[str]) -> Path:
    if isinstance(layout_or_bids_dir, str | os.PathLike):
        return Path(layout_or_bids_dir).absolute()
    return Path(layout_or_bids_dir.root).absolute()


def _find_age(
    layout_or_bids_dir: BIDSLayout | str | os.PathLike[str],
    subject: str,
    session: str | None = None,
    scan_path: str | os.PathLike[str] | None = None,
) -> tuple[float | None, str, list[str]]:
    """Age in weeks, provenance, and the files looked at (for error messages)."""
    root = _root_of(layout_or_bids_dir)
    subject = _strip(subject, "sub-")
    session = _strip(session, "ses-") if session else None
    looked: list[str] = []
    notes: list[str] = []
    for kind, tsv, sidecars, id_column, id_value in _age_sources(root, subject, session):
        rel = tsv.relative_to(root).as_posix()
        if not tsv.is_file():
            looked.append(f"{rel} (absent)")
            continue
        rows = _read_tsv(tsv)
        if kind == "scan":
            if scan_path is not None:
                names = _scan_names(root, tsv, scan_path)
                rows = [r for r in rows if r.get("filename", "").removeprefix("./") in names]
        else:
            prefix = id_value[:4]
            rows = [r for r in rows if _strip(r.get(id_column, ""), prefix) == id_value[4:]]
            if kind == "participant":
                rows = _rows_of_session(rows, session)
        if not rows:
            looked.append(f"{rel} (no row for this {kind})")
            continue
        sidecar, sidecar_path = _read_sidecar(sidecars)
        ages: list[tuple[float, str]] = []
        for row in rows:
            weeks, column, note = _age_from_row(row, sidecar, rel, sidecar_path)
            if weeks is not None and column is not None:
                ages.append((weeks, column))
            elif note:
                notes.append(note)
        if not ages:
            looked.append(f"{rel} (no usable age column)")
            continue
        values = sorted({round(w, 6) for w, _ in ages})
        if len(values) > 1:  # several scans of a session with different ages, no scan_path
            looked.append(f"{rel} (rows disagree: {values}; give the scan file)")
            continue
        return ages[0][0], f"{rel}:{ages[0][1]}", looked
    reason = "; ".join(dict.fromkeys(notes)) if notes else "no age was found"
    return None, f"{reason} (looked at, in {root}: {', '.join(looked)})", looked


def get_age_weeks(
    layout_or_bids_dir: BIDSLayout | str | os.PathLike[str],
    subject: str,
    session: str | None = None,
    scan_path: str | os.PathLike[str] | None = None,
) -> tuple[float | None, str]:
    """Post-menstrual age at scan (weeks) and where it came from, e.g.
    ``(40.3, "participants.tsv:pma")``; ``(None, "<why>")`` when no source has it.

    ``scan_path`` (absolute, or relative to the subject/session folder) picks the row of
    scans.tsv; without it, scans.tsv is used only when its rows agree on one age.
    """
    weeks, provenance, _ = _find_age(layout_or_bids_dir, subject, session, scan_path)
    return weeks, provenance


def require_age(
    layout_or_bids_dir: BIDSLayout | str | os.PathLike[str],
    subject: str,
    session: str | None = None,
    scan_path: str | os.PathLike[str] | None = None,
) -> tuple[float, str]:
    """Like :func:`get_age_weeks`, but a missing age raises :class:`BIDSError` saying where
    it looked and which columns are accepted."""
    weeks, provenance, _looked = _find_age(layout_or_bids_dir, subject, session, scan_path)
    if weeks is None:
        raise BIDSError(
            f"{subject_session_id(subject, session)}: the post-menstrual age at scan is needed "
            f"(to pick the template cohort) but {provenance}. Add one of the columns "
            f"{', '.join(AGE_COLUMNS)} (weeks; 'age' needs Units in its JSON sidecar) to "
            "scans.tsv, sessions.tsv or participants.tsv, or choose the reference cohort "
            "explicitly (e.g. dhcpVol:cohort-40)."
        )
    return weeks, provenance
