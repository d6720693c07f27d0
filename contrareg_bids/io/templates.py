"""Registration references: parsing ``--reference``, age -> cohort, TemplateFlow lookup.

A reference is a TemplateFlow template (``dhcpVol``, ``Serag2012:cohort-36``), another
participant (``sub-02``) or an image path. Template files are found **only** through the
TemplateFlow client, in the user's ``TEMPLATEFLOW_HOME``.

``TEMPLATEFLOW_HOME`` and import time: ``templateflow.api`` reads ``TEMPLATEFLOW_HOME`` (and
``TEMPLATEFLOW_AUTOUPDATE``) once, when ``templateflow.conf`` is first imported; changing the
variable afterwards does not move ``templateflow.api``. The functions here do not use that
global client: they read the variables at each call and keep one
``templateflow.TemplateFlowClient`` per folder, so they follow the environment whenever it
is set (before the first import, as a BIDS-App entry point does, or later, as tests do).
Importing templateflow at all creates a TemplateFlow skeleton in the default cache
(``~/.cache/templateflow``) when ``TEMPLATEFLOW_HOME`` is unset and that cache is empty:
set the variable before anything imports templateflow to avoid it.

Offline use: prefetch on a machine with network access, e.g.::

    TEMPLATEFLOW_HOME=/data/tf python -c "from templateflow.api import get; \
get('dhcpVol', cohort=40, suffix='T1w')"

then copy or bind-mount ``/data/tf`` and set ``TEMPLATEFLOW_HOME`` (and
``TEMPLATEFLOW_AUTOUPDATE=0``) where the app runs. With ``download=False`` a file not yet
fetched is an error at once instead of a network attempt.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .units import TERM_WEEKS, WEEKS_PER, normalize_unit

if TYPE_CHECKING:
    from templateflow import TemplateFlowClient

__all__ = [
    "DEFAULT_TEMPLATE",
    "PMA_COHORT_TEMPLATES",
    "ReferenceSpec",
    "TemplateError",
    "cohort_ages",
    "cohort_for_age",
    "get_client",
    "get_template_files",
    "parse_reference",
    "reset_clients",
    "template_cohorts",
    "templateflow_home",
]

LOGGER = logging.getLogger(__name__)

#: The reference used when the user names none.
DEFAULT_TEMPLATE = "dhcpVol"
#: Templates whose cohort label *is* the post-menstrual age in weeks (the ``units`` of some of
#: their descriptions are wrong: ``dhcpSym``/``dhcpAsym`` say months).
PMA_COHORT_TEMPLATES = frozenset({"dhcpVol", "dhcpSym", "dhcpAsym", "Serag2012"})
#: Ages this far (weeks) outside the span of the cohorts are clamped with a warning.
CLAMP_TOLERANCE_WEEKS = 0.5
#: Ages further than this (weeks) outside the span of the cohorts are refused: an age read
#: with the wrong meaning or units (a postnatal age taken for a PMA, days for weeks) is far
#: outside, and the nearest cohort would register the subject to the wrong anatomy.
REFUSE_BEYOND_WEEKS = 4.0

_TEMPLATE_RE = re.compile(r"^(?:tpl-)?(?P<name>[A-Za-z0-9]+)(?P<mods>(?::[A-Za-z]+-[^:]+)*)$")
_PARTICIPANT_RE = re.compile(r"^sub-(?P<sub>[A-Za-z0-9]+)(?:_ses-(?P<ses>[A-Za-z0-9]+))?$")
_NIFTI_EXT = [".nii.gz", ".nii"]


class TemplateError(ValueError):
    """A reference cannot be used; the message says which file/template and what to do."""


# --------------------------------------------------------------------------------------------
# reference specs
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReferenceSpec:
    """What ``--reference`` names. ``kind`` picks which of the other fields are set."""

    kind: Literal["template", "participant", "path"]
    template: str | None = None
    cohort: int | None = None
    resolution: int | None = None
    participant: str | None = None
    session: str | None = None
    path: Path | None = None

    def __str__(self) -> str:
        if self.kind == "template":
            out = str(self.template)
            if self.cohort is not None:
                out += f":cohort-{self.cohort}"
            if self.resolution is not None:
                out += f":res-{self.resolution}"
            return out
        if self.kind == "participant":
            return f"sub-{self.participant}" + (f"_ses-{self.session}" if self.session else "")
        return str(self.path)


def parse_reference(spec: str | os.PathLike[str]) -> ReferenceSpec:
    """Parse ``TEMPLATE[:cohort-N][:res-N]``, ``sub-XX[_ses-YY]`` or an image path.

    Anything that exists as a file, contains a path separator or ends in ``.nii``/``.nii.gz``
    is a path (which must exist). The template and its cohort are checked later, against the
    TemplateFlow cache (:func:`get_template_files`).
    """
    text = os.fspath(spec).strip()
    if not text:
        raise TemplateError(
            "empty reference: give a template (e.g. dhcpVol, Serag2012:cohort-36), "
            "a participant (sub-XX) or an image path."
        )
    path = Path(text).expanduser()
    lowered = text.lower()
    if (
        path.is_file()
        or "/" in text
        or os.sep in text
        or lowered.endswith(".nii")
        or lowered.endswith(".nii.gz")
    ):
        if not path.is_file():
            raise TemplateError(
                f"{path}: reference image not found. Give an existing .nii/.nii.gz file, or a "
                "template name (e.g. dhcpVol) or a participant (sub-XX)."
            )
        return ReferenceSpec(kind="path", path=path.absolute())
    match = _PARTICIPANT_RE.match(text)
    if match:
        return ReferenceSpec(kind="participant", participant=match["sub"], session=match["ses"])
    match = _TEMPLATE_RE.match(text)
    if not match:
        raise TemplateError(
            f"reference {text!r} is not understood: use TEMPLATE[:cohort-N] (e.g. "
            "Serag2012:cohort-36), sub-XX[_ses-YY], or the path of an image."
        )
    values: dict[str, int] = {}
    for modifier in filter(None, match["mods"].split(":")):
        key, _, value = modifier.partition("-")
        if key not in ("cohort", "res") or not value.isdigit():
            raise TemplateError(
                f"reference {text!r}: modifier {modifier!r} is not supported; use cohort-N "
                "and/or res-N with integer N (e.g. dhcpVol:cohort-40)."
            )
        values[key] = int(value)
    return ReferenceSpec(
        kind="template",
        template=match["name"],
        cohort=values.get("cohort"),
        resolution=values.get("res"),
    )


# --------------------------------------------------------------------------------------------
# the TemplateFlow client
# --------------------------------------------------------------------------------------------
_CLIENTS: dict[tuple[str, bool], TemplateFlowClient] = {}
_LOCK = threading.Lock()


def templateflow_home() -> Path:
    """The TemplateFlow folder in effect now (``TEMPLATEFLOW_HOME``, else TemplateFlow's
    default cache)."""
    home = os.environ.get("TEMPLATEFLOW_HOME")
    if home:
        return Path(home).expanduser().absolute()
    from templateflow.conf.env import get_templateflow_home

    return get_templateflow_home()


def _autoupdate() -> bool:
    value = os.environ.get("TEMPLATEFLOW_AUTOUPDATE", "1").strip().lower()
    return value not in ("0", "false", "off", "no", "n")


def _new_client(root: Path, autoupdate: bool) -> TemplateFlowClient:
    from templateflow import TemplateFlowClient

    return TemplateFlowClient(root=root, autoupdate=autoupdate)


def get_client(home: str | os.PathLike[str] | None = None) -> TemplateFlowClient:
    """A TemplateFlow client for ``home`` (default: :func:`templateflow_home` read now).

    One client (hence one pybids index of the folder) per folder and process; call
    :func:`reset_clients` after adding files to a folder already indexed.
    """
    root = Path(home).expanduser().absolute() if home is not None else templateflow_home()
    key = (str(root), _autoupdate())
    with _LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            client = _new_client(root, key[1])
            _CLIENTS[key] = client
    return client


def reset_clients() -> None:
    """Forget the cached clients (and their indexes of the TemplateFlow folders)."""
    with _LOCK:
        _CLIENTS.clear()


def _home_of(client: TemplateFlowClient) -> Path:
    return Path(client.cache.config.root)


def _prefetch_hint(template: str, cohort: int | None, suffix: str, home: Path) -> str:
    args = [repr(template)]
    if cohort is not None:
        args.append(f"cohort={cohort}")
    args.append(f"suffix={suffix!r}")
    return (
        "Prefetch it on a machine with network access:\n"
        f'    TEMPLATEFLOW_HOME={home} python -c "from templateflow.api import get; '
        f'get({", ".join(args)})"\n'
        "then copy (or bind-mount) that folder where the app runs and set TEMPLATEFLOW_HOME to "
        "it (with TEMPLATEFLOW_AUTOUPDATE=0)."
    )


def _available_templates(client: TemplateFlowClient) -> list[str]:
    try:
        return sorted(client.templates())
    except Exception as exc:  # index failures come as anything pybids raises
        raise TemplateError(
            f"TEMPLATEFLOW_HOME={_home_of(client)}: cannot index the TemplateFlow folder "
            f"({type(exc).__name__}: {exc}). Check the folder and its permissions."
        ) from exc


def _require_template(client: TemplateFlowClient, template: str) -> None:
    available = _available_templates(client)
    if template not in available:
        home = _home_of(client)
        shown = ", ".join(available[:30]) or "none"
        raise TemplateError(
            f"template {template!r} is not in the TemplateFlow cache TEMPLATEFLOW_HOME={home} "
            f"(templates there: {shown}). Check the name (case matters) or fetch it. "
            + _prefetch_hint(template, None, "T1w", home)
        )


# --------------------------------------------------------------------------------------------
# cohorts
# --------------------------------------------------------------------------------------------
def _description(client: TemplateFlowClient, template: str) -> dict[str, Any]:
    path = _home_of(client) / f"tpl-{template}" / "template_description.json"
    if not path.is_file() or path.stat().st_size == 0:
        return {}
    try:
        data = client.get_metadata(template)
    except Exception as exc:  # a broken JSON file, mostly
        raise TemplateError(
            f"{path}: cannot be read ({type(exc).__name__}: {exc}); fix or re-fetch it."
        ) from exc
    return data if isinstance(data, dict) else {}


def template_citation(template: str) -> dict[str, Any]:
    """What a methods text cites for a TemplateFlow template: its ``Name`` and its
    ``ReferencesAndLinks`` (``template_description.json``), empty where the cache lacks the
    description; never downloads."""
    data = _description(get_client(), template)
    refs = data.get("ReferencesAndLinks") or []
    if isinstance(refs, str):
        refs = [refs]
    return {"name": str(data.get("Name") or template), "references": [str(r) for r in refs]}


def _int_cohorts(labels: Any) -> list[int]:
    out = set()
    for label in labels or ():
        try:
            out.add(int(str(label)))
        except ValueError:
            continue  # non-integer cohort labels exist in TemplateFlow; not for us
    return sorted(out)


def template_cohorts(template: str) -> list[int]:
    """Integer cohorts of ``template``, sorted; ``[]`` when it has none.

    From the ``cohort`` mapping of ``template_description.json`` when present (it lists the
    cohorts of the template, fetched or not), else from the ``cohort-*`` files indexed by
    the TemplateFlow client.
    """
    client = get_client()
    _require_template(client, template)
    cohorts = _int_cohorts((_description(client, template).get("cohort") or {}).keys())
    if cohorts:
        return cohorts
    try:
        return _int_cohorts(client.get_cohorts(template=template))
    except Exception:  # no cohort entity indexed at all
        return []


def cohort_ages(template: str) -> dict[int, tuple[float, float]]:
    """Age span ``(low, high)`` of each cohort in post-menstrual weeks.

    The description's ``age`` (a value or ``[low, high]``) with its ``units`` is used when
    present: weeks are taken as PMA, months/years as postnatal (+ :data:`TERM_WEEKS`).
    Otherwise, and always for :data:`PMA_COHORT_TEMPLATES`, the cohort label is the PMA in
    weeks.
    """
    client = get_client()
    cohorts = template_cohorts(template)
    meta = _description(client, template).get("cohort") or {}
    out: dict[int, tuple[float, float]] = {}
    for cohort in cohorts:
        span = (float(cohort), float(cohort))
        entry = meta.get(str(cohort)) if isinstance(meta, dict) else None
        if template not in PMA_COHORT_TEMPLATES and isinstance(entry, dict) and "age" in entry:
            age = entry["age"]
            values = [float(a) for a in (age if isinstance(age, list | tuple) else [age])]
            units = normalize_unit(str(entry.get("units", "weeks")))
            if values and units:
                weeks = [v * WEEKS_PER[units] for v in values]
                if units in ("months", "years"):
                    weeks = [TERM_WEEKS + w for w in weeks]
                span = (min(weeks), max(weeks))
        out[cohort] = span
    return out


def cohort_for_age(
    template: str, age_weeks: float | None, source: str | None = None
) -> tuple[int | None, str | None]:
    """The cohort of ``template`` nearest to ``age_weeks`` (PMA), and a warning or ``None``.

    ``(None, None)`` for a template without cohorts. Distance is 0 inside a cohort's age span;
    ties go to the younger cohort. An age more than :data:`CLAMP_TOLERANCE_WEEKS` outside the
    span of all cohorts is clamped to the first/last cohort and a warning is returned; more
    than :data:`REFUSE_BEYOND_WEEKS` outside, it raises :class:`TemplateError` naming the
    value, where it came from (``source``, e.g. ``participants.tsv:age_weeks``) and the fix.
    A missing age raises :class:`TemplateError` (give the cohort explicitly instead).
    """
    ages = cohort_ages(template)
    if not ages:
        return None, None
    if age_weeks is None:
        raise TemplateError(
            f"template {template!r} has cohorts {_span_text(ages)} and the age at scan is "
            f"unknown: add the age to the BIDS dataset, or name the cohort (e.g. "
            f"{template}:cohort-{_middle(ages)})."
        )
    age = float(age_weeks)

    def distance(cohort: int) -> float:
        low, high = ages[cohort]
        return 0.0 if low <= age <= high else min(abs(age - low), abs(age - high))

    best = min(ages, key=lambda c: (distance(c), ages[c][0], c))
    first = min(ages, key=lambda c: ages[c][0])
    last = max(ages, key=lambda c: ages[c][1])
    outside = max(ages[first][0] - age, age - ages[last][1], 0.0)
    if outside > REFUSE_BEYOND_WEEKS:
        raise TemplateError(
            f"age {age:.1f} weeks PMA"
            + (f" (from {source})" if source else "")
            + f" is {outside:.1f} weeks outside the cohorts of {template} ({_span_text(ages)}). "
            "Check the age's column and units (a postnatal age read as post-menstrual? days "
            "as weeks? the column's Description and Units in its JSON sidecar say which), "
            f"give the age with --pma, or name the cohort (e.g. {template}:cohort-"
            f"{first if age < ages[first][0] else last})."
        )
    warning = None
    if outside > CLAMP_TOLERANCE_WEEKS:
        warning = (
            f"age {age:.1f} weeks is outside the cohorts of {template} "
            f"({_span_text(ages)}); using the nearest, cohort-{best}."
        )
    return best, warning


def _span_text(ages: dict[int, tuple[float, float]]) -> str:
    low = min(a[0] for a in ages.values())
    high = max(a[1] for a in ages.values())
    return f"{min(ages)}..{max(ages)}, {low:g}-{high:g} weeks PMA"


def _middle(ages: dict[int, tuple[float, float]]) -> int:
    cohorts = sorted(ages)
    return cohorts[len(cohorts) // 2]


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------
_RES_RE = re.compile(r"_res-(\d+)_")


def _ls(client: TemplateFlowClient, template: str, **query: Any) -> list[Path]:
    try:
        return sorted(Path(p) for p in client.ls(template, **query))
    except Exception as exc:
        raise TemplateError(
            f"TEMPLATEFLOW_HOME={_home_of(client)}: query {template} {query} failed "
            f"({type(exc).__name__}: {exc})."
        ) from exc


def _fetched(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def _materialise(
    client: TemplateFlowClient,
    template: str,
    path: Path,
    query: dict[str, Any],
    *,
    download: bool,
) -> Path | None:
    """``path`` if its content is in the cache (fetching it when allowed), else ``None``."""
    if _fetched(path):
        return path
    if not download:
        return None
    try:
        client.get(template, **query)
    except Exception as exc:  # offline: requests/OSError/RuntimeError from the client
        LOGGER.warning("TemplateFlow could not fetch %s: %s", path, exc)
        return None
    return path if _fetched(path) else None


def _describe_missing(
    template: str, cohort: int | None, what: str, suffix: str, home: Path, extra: str = ""
) -> str:
    where = f"template {template!r}" + (f" cohort-{cohort}" if cohort is not None else "")
    return (
        f"{where}: no {what} in the TemplateFlow cache TEMPLATEFLOW_HOME={home}{extra}. "
        + _prefetch_hint(template, cohort, suffix, home)
    )


def get_template_files(
    template: str,
    cohort: int | None = None,
    *,
    modality: str = "T1w",
    resolution: int | None = None,
    dseg_desc: str | None = "tissues",
    download: bool = True,
) -> dict[str, Path]:
    """Files of one template (cohort) from the TemplateFlow cache.

    Keys: ``"image"`` (``modality``, no ``desc``), ``"mask"`` (``desc-brain_mask``, else
    ``label-brain_mask`` as UNCInfant names it), and when
    available ``"dseg"`` (``desc-<dseg_desc>_dseg``, else the first dseg) and ``"dseg_tsv"``
    (its label table). Mask and dseg are taken at the resolution of the image (the first
    ``res-*`` unless ``resolution`` is given), so all files share one grid. Files listed but
    not fetched are downloaded by the client when ``download`` (else, or when offline, a
    required one raises :class:`TemplateError` with the command to prefetch it).
    """
    from bids.layout import Query

    client = get_client()
    home = _home_of(client)
    _require_template(client, template)
    cohorts = template_cohorts(template)
    base: dict[str, Any] = {}
    if cohorts:
        if cohort is None:
            raise TemplateError(
                f"template {template!r} has cohorts {cohorts[0]}..{cohorts[-1]}: choose one "
                f"(from the age at scan, or e.g. {template}:cohort-{cohorts[len(cohorts) // 2]})."
            )
        if int(cohort) not in cohorts:
            raise TemplateError(
                f"template {template!r} has no cohort {cohort} (cohorts: "
                f"{', '.join(map(str, cohorts))}); pick one of those."
            )
        base["cohort"] = int(cohort)
    elif cohort is not None:
        raise TemplateError(f"template {template!r} has no cohorts; drop ':cohort-{cohort}'.")
    else:
        base["cohort"] = Query.NONE

    image_query = {**base, "suffix": modality, "desc": None, "extension": _NIFTI_EXT}
    if resolution is not None:
        image_query["resolution"] = int(resolution)
    images = _ls(client, template, **image_query)
    if not images:
        res = f" at res-{resolution}" if resolution is not None else ""
        raise TemplateError(
            _describe_missing(template, cohort, f"{modality} image{res}", modality, home)
        )
    image = images[0]
    match = _RES_RE.search(image.name)
    res_query: dict[str, Any] = {"resolution": int(match.group(1)) if match else Query.NONE}
    image_query.update(res_query)
    out: dict[str, Path] = {}

    got = _materialise(client, template, image, image_query, download=download)
    if got is None:
        raise TemplateError(
            _describe_missing(
                template, cohort, f"{modality} image", modality, home, f" ({image} not fetched)"
            )
        )
    out["image"] = got

    mask_query = {**base, **res_query, "suffix": "mask", "desc": "brain", "extension": _NIFTI_EXT}
    masks = _ls(client, template, **mask_query)
    if not masks:  # UNCInfant names its brain mask ``label-brain_mask``
        label_query = {**mask_query, "desc": Query.NONE, "label": "brain"}
        if masks := _ls(client, template, **label_query):
            mask_query = label_query
    got = None
    if masks:
        got = _materialise(client, template, masks[0], mask_query, download=download)
    if got is None:
        detail = f" ({masks[0]} not fetched)" if masks else ""
        raise TemplateError(
            _describe_missing(template, cohort, "desc-brain mask", "mask", home, detail)
        )
    out["mask"] = got

    dseg_query = {**base, **res_query, "suffix": "dseg", "extension": _NIFTI_EXT}
    dsegs = _ls(client, template, **dseg_query, desc=dseg_desc) if dseg_desc else []
    dsegs = dsegs or _ls(client, template, **dseg_query)
    if dsegs:
        dseg_query["desc"] = _desc_of(dsegs[0])
        got = _materialise(client, template, dsegs[0], dseg_query, download=download)
        if got is not None:
            out["dseg"] = got
            tsv_query = {
                "cohort": [base["cohort"], Query.NONE] if cohorts else Query.NONE,
                "suffix": "dseg",
                "desc": _desc_of(got),
                "extension": ".tsv",
            }
            tsvs = _ls(client, template, **tsv_query)
            tsvs.sort(key=lambda p: ("cohort-" not in p.name, str(p)))  # the cohort's own first
            if tsvs:
                got_tsv = _materialise(client, template, tsvs[0], tsv_query, download=download)
                if got_tsv is not None:
                    out["dseg_tsv"] = got_tsv
    return out


def _desc_of(path: Path) -> Any:
    from bids.layout import Query

    match = re.search(r"_desc-([A-Za-z0-9]+)_", path.name)
    return match.group(1) if match else Query.NONE
