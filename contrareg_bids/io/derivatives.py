"""Precomputed derivatives given with ``--derivatives NAME=PATH``: brain masks, label maps,
and the label tables (``dseg.tsv``) that say what each label value means."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

LOGGER = logging.getLogger("contrareg_bids.derivatives")


class LabelTableError(ValueError):
    """A ``dseg.tsv`` that cannot be read as a BIDS label table."""


def entities(name: str) -> dict[str, str]:
    """BIDS entities of a file name (``sub-01_desc-aseg_dseg.nii.gz`` -> sub, desc)."""
    stem = Path(name).name.split(".")[0]
    return dict(p.split("-", 1) for p in stem.split("_") if "-" in p)


def _matches(name: str, subject: str, session: str | None) -> bool:
    ents = entities(name)
    if ents.get("sub") != subject:
        return False
    if session is not None and ents.get("ses") not in (None, session):
        return False
    return "space" not in ents  # only files in the subject's own (native) space


def read_label_table(path: str | Path) -> dict[int, str]:
    """``{index: name}`` of a BIDS ``dseg.tsv`` (columns ``index`` and ``name``)."""
    path = Path(path)
    try:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelTableError(f"{path}: cannot read the label table ({exc})") from exc
    if not rows or not {"index", "name"} <= set(rows[0]):
        raise LabelTableError(
            f"{path}: a label table needs the tab-separated columns 'index' and 'name' "
            "(BIDS dseg.tsv)"
        )
    table: dict[int, str] = {}
    for i, row in enumerate(rows, start=2):
        try:
            table[int(row["index"])] = (row["name"] or "").strip()
        except (TypeError, ValueError):
            raise LabelTableError(
                f"{path}, line {i}: index {row['index']!r} is not an integer"
            ) from None
    return table


def label_table_for(dseg: str | Path, root: str | Path | None = None) -> Path | None:
    """The ``dseg.tsv`` that describes ``dseg``: its own sidecar (same name, ``.tsv``), else
    the nearest one up to ``root`` under BIDS inheritance (``[tpl-X_][desc-D_]dseg.tsv``
    with no entity that contradicts the image's), e.g. TemplateFlow's
    ``tpl-Serag2012_desc-tissues_dseg.tsv`` at the template's root."""
    dseg = Path(dseg)
    sidecar = dseg.with_name(dseg.name.split(".")[0] + ".tsv")
    if sidecar.is_file():
        return sidecar
    ents = entities(dseg.name)
    folder = dseg.parent
    stop = Path(root).resolve() if root is not None else None
    for _ in range(4):  # anat/ -> ses-/ -> sub- or cohort-/ -> dataset root
        folder = folder.parent
        for f in sorted(folder.glob("*dseg.tsv")):
            theirs = entities(f.name)
            if all(ents.get(k) == v for k, v in theirs.items()):
                return f
        if stop is not None and folder.resolve() == stop:
            break
    return None


def find_subject_derivatives(
    derivatives: dict[str, Path],
    subject: str,
    session: str | None = None,
    labels_desc: str | None = None,
    prefer_desc: str | None = None,
) -> dict[str, Path]:
    """``{"mask": path, "labels": path, "labels_tsv": path}`` (each optional).

    Looks in every ``<deriv>/sub-<l>[/ses-<s>]/anat/`` for ``*_desc-brain_mask.nii[.gz]`` and
    ``*_dseg.nii[.gz]`` in native space (no ``space-`` entity); the first derivatives folder
    given wins. Which label map, when a subject has several: the one with
    ``desc-<labels_desc>`` (``--labels-desc``), else the one whose ``desc`` is the
    reference's (``prefer_desc``), else the only one. Several and no way to choose: none,
    with a warning, because scoring the wrong scheme gives a wrong Dice without a word.
    """
    found: dict[str, Path] = {}
    dsegs: list[tuple[Path, Path]] = []  # (file, its derivatives root)
    for _name, root in derivatives.items():
        folders = [Path(root) / f"sub-{subject}" / "anat"]
        if session is not None:
            folders.insert(0, Path(root) / f"sub-{subject}" / f"ses-{session}" / "anat")
        for folder in folders:
            if not folder.is_dir():
                continue
            for f in sorted(folder.iterdir()):
                if not f.name.endswith((".nii", ".nii.gz")) or not _matches(
                    f.name, subject, session
                ):
                    continue
                stem = f.name.split(".")[0]
                if stem.endswith("_desc-brain_mask"):
                    found.setdefault("mask", f)
                elif stem.endswith("_dseg"):
                    dsegs.append((f, Path(root)))
    chosen = choose_label_map(dsegs, subject, labels_desc, prefer_desc)
    if chosen is not None:
        found["labels"] = chosen[0]
        table = label_table_for(*chosen)
        if table is not None:
            found["labels_tsv"] = table
    return found


def choose_label_map(
    dsegs: list[tuple[Path, Path]],
    subject: str,
    labels_desc: str | None,
    prefer_desc: str | None,
) -> tuple[Path, Path] | None:
    """The subject's label map among ``dsegs`` (see :func:`find_subject_derivatives`)."""
    if not dsegs:
        return None
    by_desc: dict[str | None, list[tuple[Path, Path]]] = {}
    for item in dsegs:
        by_desc.setdefault(entities(item[0].name).get("desc"), []).append(item)
    names = ", ".join(f.name for f, _ in dsegs)
    if labels_desc is not None:
        if labels_desc in by_desc:
            return by_desc[labels_desc][0]
        LOGGER.warning(
            "sub-%s: no label map with desc-%s (--labels-desc) among: %s; no Dice",
            subject,
            labels_desc,
            names,
        )
        return None
    if prefer_desc is not None and prefer_desc in by_desc:
        return by_desc[prefer_desc][0]
    if len(by_desc) == 1:
        return dsegs[0]
    LOGGER.warning(
        "sub-%s: several label maps (%s) and none matches the reference's desc-%s: "
        "choose one with --labels-desc; no Dice for this subject",
        subject,
        names,
        prefer_desc,
    )
    return None
