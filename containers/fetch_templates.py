#!/usr/bin/env python3
"""Prefetch TemplateFlow templates into ``TEMPLATEFLOW_HOME`` (container build time).

The app runs without network, so the image carries the files a registration needs: for each
template (and cohort) the T1w, T2w, brain masks and discrete segmentations, at every
resolution the template has. TemplateFlow's skeleton (installed on first import) lists the
files; ``templateflow.api.get`` downloads them. ``--check`` downloads nothing and exits 1
when a wanted file is still an empty placeholder, so a build with a failed download fails.

    TEMPLATEFLOW_HOME=/opt/templateflow python containers/fetch_templates.py \
        dhcpVol MNIInfant:cohort-1 UNCInfant:cohort-1
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

#: Neonatal and infant templates baked into the image (``TEMPLATE[:cohort-N[,M]]``).
DEFAULT_TEMPLATES = ("dhcpVol", "MNIInfant:cohort-1", "UNCInfant:cohort-1")
#: What a registration can use: reference images, brain masks, label maps.
SUFFIXES = ("T1w", "T2w", "mask", "dseg")

Spec = tuple[str, tuple[int, ...] | None]


def parse_spec(text: str) -> Spec:
    """``dhcpVol`` (all cohorts) or ``MNIInfant:cohort-1`` / ``dhcpVol:cohort-39,40``."""
    name, _, rest = text.partition(":")
    if not name:
        raise ValueError(f"empty template name in {text!r}")
    if not rest:
        return name, None
    if not rest.startswith("cohort-"):
        raise ValueError(f"{text!r}: expected TEMPLATE or TEMPLATE:cohort-N[,M]")
    try:
        cohorts = tuple(int(c) for c in rest.removeprefix("cohort-").split(","))
    except ValueError as err:
        raise ValueError(f"{text!r}: cohorts must be integers") from err
    return name, cohorts


def _folders(home: Path, template: str, cohorts: tuple[int, ...] | None) -> list[Path]:
    root = home / f"tpl-{template}"
    if cohorts is None:
        found = sorted(p for p in root.glob("cohort-*") if p.is_dir())
        return found or [root]
    return [root / f"cohort-{c}" for c in cohorts]


def wanted_files(home: Path, spec: Spec) -> list[Path]:
    """The NIfTI files of ``spec`` with a suffix of :data:`SUFFIXES`, as listed on disk."""
    template, cohorts = spec
    files: list[Path] = []
    for folder in _folders(home, template, cohorts):
        for suffix in SUFFIXES:
            files.extend(sorted(folder.glob(f"tpl-{template}*_{suffix}.nii.gz")))
    return files


def missing_files(home: Path, specs: Iterable[Spec]) -> list[str]:
    """Problems left: a template or cohort absent, or a wanted file not downloaded."""
    problems = []
    for spec in specs:
        template, cohorts = spec
        for folder in _folders(home, template, cohorts):
            if not folder.is_dir():
                problems.append(f"{folder} does not exist")
        files = wanted_files(home, spec)
        if not files:
            problems.append(f"tpl-{template}: no {'/'.join(SUFFIXES)} image listed")
        problems += [f"{f} was not downloaded" for f in files if f.stat().st_size == 0]
    return problems


def fetch(specs: Iterable[Spec], get: Callable[..., object] | None = None) -> None:
    """Download every wanted file with ``templateflow.api.get`` (or ``get``, for tests)."""
    if get is None:
        from templateflow import api

        get = api.get
    for template, cohorts in specs:
        for cohort in cohorts or (None,):
            for suffix in SUFFIXES:
                query: dict[str, object] = {"suffix": suffix, "extension": ".nii.gz"}
                if cohort is not None:  # None: every cohort of the template
                    query["cohort"] = cohort
                get(template, raise_empty=False, **query)


def prune(home: Path, specs: Iterable[Spec]) -> list[str]:
    """Remove the skeleton folders of other templates: the image cannot download them, and
    TemplateFlow would index their placeholders at every start. Returns the names removed."""
    keep = {f"tpl-{template}" for template, _ in specs}
    removed = []
    for folder in sorted(home.glob("tpl-*")):
        if folder.is_dir() and folder.name not in keep:
            shutil.rmtree(folder)
            removed.append(folder.name)
    return removed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "templates",
        nargs="*",
        default=list(DEFAULT_TEMPLATES),
        help="TEMPLATE or TEMPLATE:cohort-N[,M] (default: %(default)s)",
    )
    p.add_argument("--check", action="store_true", help="download nothing; verify only")
    p.add_argument("--prune", action="store_true", help="remove the other templates' folders")
    args = p.parse_args(argv)
    home = os.environ.get("TEMPLATEFLOW_HOME")
    if not home:
        p.error("set TEMPLATEFLOW_HOME to the folder to fill")
    try:
        specs = [parse_spec(t) for t in args.templates]
    except ValueError as err:
        p.error(str(err))
    if not args.check:
        fetch(specs)
    if args.prune:
        removed = prune(Path(home), specs)
        print(f"fetch_templates: removed {len(removed)} other template folders")
    problems = missing_files(Path(home), specs)
    for problem in problems:
        print(f"fetch_templates: {problem}", file=sys.stderr)
    if not problems:
        n = sum(len(wanted_files(Path(home), s)) for s in specs)
        print(f"fetch_templates: {n} files of {', '.join(args.templates)} in {home}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
