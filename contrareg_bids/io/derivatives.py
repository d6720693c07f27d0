"""Precomputed derivatives given with ``--derivatives NAME=PATH``: brain masks, label maps."""

from __future__ import annotations

from pathlib import Path


def _matches(name: str, subject: str, session: str | None) -> bool:
    ents = dict(p.split("-", 1) for p in name.split("_") if "-" in p)
    if ents.get("sub") != subject:
        return False
    if session is not None and ents.get("ses") not in (None, session):
        return False
    return "space" not in ents  # only files in the subject's own (native) space


def find_subject_derivatives(
    derivatives: dict[str, Path], subject: str, session: str | None = None
) -> dict[str, Path]:
    """``{"mask": path, "labels": path}`` (each optional) for a subject-session.

    Looks in every ``<deriv>/sub-<l>[/ses-<s>]/anat/`` for ``*_desc-brain_mask.nii[.gz]`` and
    ``*_dseg.nii[.gz]`` in native space (no ``space-`` entity). The first derivatives
    folder given wins when several hold a file.
    """
    found: dict[str, Path] = {}
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
                    found.setdefault("labels", f)
    return found
