"""Build small, real BIDS datasets on disk for tests (unit and end-to-end).

Example::

    root = make_bids_dataset(
        tmp_path / "bids",
        {"01": {"T1w": t1, "T2w": t2, "age": 40.0}, "02": {"T2w": t2b, "age": 38.5}},
    )

    # with sessions: one more level, keyed by session label
    root = make_bids_dataset(
        tmp_path / "bids",
        {"01": {"1": {"T2w": t2, "age": 36.0}, "2": {"T2w": t2, "age": 44.0}}},
        sessions=True,
        age_source="sessions",
    )

In a subject (or session) entry, every key other than ``age`` names an anatomical file:
``"T1w"`` -> ``sub-01[_ses-1]_T1w.nii.gz``; extra entities go before the suffix, in BIDS
order, e.g. ``"acq-fast_run-2_T2w"``. A value is an array (written with ``affine``, default
1 mm RAS), a ``(array, affine)`` pair, or a nibabel image. ``age`` (a number or ``"n/a"``)
is written to the table chosen by ``age_source`` in column ``age_column``; ``age_units``
adds the matching sidecar entry ``{"<age_column>": {"Units": ...}}`` (leave it ``None`` to
test a missing unit).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np

__all__ = ["default_affine", "make_bids_dataset", "make_volume"]

AgeSource = Literal["participants", "sessions", "scans"] | None


def default_affine(zooms: float = 1.0) -> np.ndarray:
    """RAS, isotropic ``zooms`` mm, origin near the centre of a small grid."""
    affine = np.diag([zooms, zooms, zooms, 1.0])
    affine[:3, 3] = -8.0 * zooms
    return affine


def make_volume(shape: tuple[int, int, int] = (12, 14, 10), seed: int = 0) -> np.ndarray:
    """A small float32 volume: a bright ellipsoid over a dark background plus noise."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    inside = (grid**2).sum(0) < 0.6
    return (inside * 100.0 + rng.normal(0, 5, shape)).astype(np.float32)


def _write_image(value: Any, path: Path, affine: np.ndarray) -> None:
    if isinstance(value, nib.spatialimages.SpatialImage):
        img = value
    elif isinstance(value, tuple):
        img = nib.Nifti1Image(np.asarray(value[0]), np.asarray(value[1], dtype=float))
    else:
        img = nib.Nifti1Image(np.asarray(value), affine)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def _write_tsv(path: Path, columns: list[str], rows: list[Mapping[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(columns)]
    lines += ["\t".join(_cell(row.get(c)) for c in columns) for row in rows]
    path.write_text("\n".join(lines) + "\n")


def _cell(value: Any) -> str:
    return "n/a" if value is None else str(value)


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def make_bids_dataset(
    root: str | Path,
    subjects: Mapping[str, Mapping[str, Any]],
    *,
    sessions: bool = False,
    age_source: AgeSource = "participants",
    age_column: str = "pma",
    age_units: str | None = None,
    affine: np.ndarray | None = None,
    name: str = "contrareg-bids test dataset",
) -> Path:
    """Write a BIDS dataset under ``root`` (created) and return ``root``.

    ``subjects`` maps labels (without ``sub-``) to an entry (see the module docstring), or,
    with ``sessions=True``, to ``{session_label: entry}``. ``age_source`` selects the table
    that carries the ages (``None``: no ages anywhere); participants.tsv is always written.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    affine = default_affine() if affine is None else np.asarray(affine, dtype=float)
    _write_json(
        root / "dataset_description.json",
        {"Name": name, "BIDSVersion": "1.9.0", "DatasetType": "raw"},
    )
    from contrareg_bids.io.bids import PMA_COLUMNS

    meaning = "post-menstrual" if age_column in PMA_COLUMNS else "postnatal"
    sidecar = {age_column: {"Description": f"{meaning} age at scan"}}
    if age_units is not None:
        sidecar[age_column]["Units"] = age_units

    participant_rows = []
    for subject, value in subjects.items():
        sub = f"sub-{subject}"
        entries = dict(value) if sessions else {None: value}
        session_rows = []
        for session, entry in entries.items():
            ses = f"ses-{session}" if session is not None else None
            folder = root / sub / ses if ses else root / sub
            prefix = f"{sub}_{ses}" if ses else sub
            scan_rows = []
            for key, image in entry.items():
                if key == "age":
                    continue
                filename = f"anat/{prefix}_{key}.nii.gz"
                _write_image(image, folder / filename, affine)
                scan_rows.append({"filename": filename, age_column: entry.get("age")})
            if age_source == "scans" and scan_rows:
                _write_tsv(folder / f"{prefix}_scans.tsv", ["filename", age_column], scan_rows)
                _write_json(folder / f"{prefix}_scans.json", sidecar)
            if ses:
                session_rows.append({"session_id": ses, age_column: entry.get("age")})
        if sessions:
            columns = ["session_id"] + ([age_column] if age_source == "sessions" else [])
            _write_tsv(root / sub / f"{sub}_sessions.tsv", columns, session_rows)
            if age_source == "sessions":
                _write_json(root / sub / f"{sub}_sessions.json", sidecar)
        participant_rows.append(
            {"participant_id": sub, age_column: None if sessions else value.get("age")}
        )

    columns = ["participant_id"] + ([age_column] if age_source == "participants" else [])
    _write_tsv(root / "participants.tsv", columns, participant_rows)
    participants_json: dict[str, Any] = {"participant_id": {"Description": "label"}}
    if age_source == "participants":
        participants_json.update(sidecar)
    _write_json(root / "participants.json", participants_json)
    return root
