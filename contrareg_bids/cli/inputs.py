"""What a level runs on: the BIDS layout and the selected participants (validated), the
reference of each subject, the subject's own inputs, the reference prepared once per run,
the newest model bundle."""

from __future__ import annotations

import logging
from pathlib import Path

from ..config import RunConfig
from . import exit_codes
from .execution import SubjectError, execution_config, node_outputs

LOGGER = logging.getLogger("contrareg_bids.participant")


def newest_model(output_dir: Path) -> Path | None:
    """The most recent ``OUTPUT_DIR/models/*.safetensors`` (what ``train`` writes)."""
    models = sorted((output_dir / "models").glob("*.safetensors"), key=lambda p: p.stat().st_mtime)
    return models[-1] if models else None


def resolve_reference(cfg: RunConfig, layout, subject: str, session: str | None):
    """The reference of one subject-session (template cohort from the age when needed)."""
    from ..io.bids import age_override, collect_anatomicals, require_age
    from ..io.derivatives import find_subject_derivatives
    from ..io.templates import (
        TemplateError,
        cohort_for_age,
        get_template_files,
        parse_reference,
        template_cohorts,
    )
    from ..workflows.spec import ReferenceInputs

    spec = parse_reference(cfg.reference)
    if spec.kind == "template":
        cohort = spec.cohort
        if cohort is None and template_cohorts(spec.template):
            age, where = age_override(cfg.pma, cfg.age_months) or require_age(
                layout, subject, session
            )
            try:
                cohort, warning = cohort_for_age(spec.template, age, source=where)
            except TemplateError as err:  # this subject's age: refuse it, not the run
                raise SubjectError(str(err)) from err
            if warning:
                LOGGER.warning("sub-%s: %s", subject, warning)
            LOGGER.info(
                "sub-%s: age %.1f weeks (%s) -> %s cohort %s",
                subject,
                age,
                where,
                spec.template,
                cohort,
            )
        files = get_template_files(
            spec.template, cohort, modality=cfg.fixed_modality, resolution=spec.resolution
        )
        return ReferenceInputs(
            image=files["image"],
            space=spec.template,
            cohort=cohort,
            mask=files.get("mask"),
            dseg=files.get("dseg"),
            dseg_tsv=files.get("dseg_tsv"),
            is_template=True,
            description=f"{spec.template}" + (f":cohort-{cohort}" if cohort else ""),
        )
    if spec.kind == "participant":
        # the session named in sub-XX_ses-YY, else the first image of any session
        anat = collect_anatomicals(layout, spec.participant, spec.session, cfg.bids_filters)
        images = anat.get(cfg.fixed_modality) or []
        who = f"sub-{spec.participant}" + (f"_ses-{spec.session}" if spec.session else "")
        if not images:
            raise SubjectError(f"--reference {who}: no {cfg.fixed_modality} image there")
        derivs = find_subject_derivatives(
            cfg.derivatives, spec.participant, spec.session, labels_desc=cfg.labels_desc
        )
        return ReferenceInputs(
            image=Path(images[0]),
            space=f"sub{spec.participant}",
            mask=derivs.get("mask"),
            dseg=derivs.get("labels"),
            dseg_tsv=derivs.get("labels_tsv"),
            is_template=False,
            description=f"{who} {cfg.fixed_modality}",
        )
    return ReferenceInputs(
        image=Path(spec.path), space="custom", is_template=False, description=str(spec.path)
    )


def check_reference(cfg: RunConfig, layout) -> None:
    """Refuse, once and before any subject runs, a reference that no subject could use: an
    unknown template (or cohort) or one not in ``TEMPLATEFLOW_HOME`` (the error says how to
    prefetch it), a missing image, a participant not in the dataset. Raises
    :class:`~contrareg_bids.io.templates.TemplateError`.

    A cohort chosen from each subject's age is checked per subject (a cache may hold only
    the cohorts that are needed).
    """
    from ..io.templates import TemplateError, get_template_files, parse_reference, template_cohorts

    spec = parse_reference(cfg.reference)
    if spec.kind == "template":
        cohorts = template_cohorts(spec.template)  # raises when the template is not there
        if spec.cohort is not None or not cohorts:
            get_template_files(
                spec.template,
                spec.cohort,
                modality=cfg.fixed_modality,
                resolution=spec.resolution,
            )
    elif spec.kind == "participant":
        available = sorted(str(s) for s in layout.get_subjects())
        if spec.participant not in available:
            raise TemplateError(
                f"sub-{spec.participant} is not a participant of {cfg.bids_dir} "
                f"(participants: {', '.join(available[:20])})"
            )


def preflight(cfg: RunConfig, layout, tasks: list[tuple[str, str | None]], model) -> list[str]:
    """What every subject shares, checked once before any subject starts: the reference of
    each subject-session (the template cohorts their ages pick, in ``TEMPLATEFLOW_HOME``),
    the label table of each reference, the model bundle (its weights' digest and the
    modalities it registers). Returns the problems, one line each (empty: go).

    A problem of one subject (no age, an age outside the cohorts, no moving image) is left
    to that subject's run, where it is reported and the others go on.
    """
    from ..io.bids import BIDSError
    from ..io.derivatives import LabelTableError, read_label_table
    from ..io.templates import TemplateError

    problems: dict[str, list[str]] = {}  # message -> the subject-sessions it stops
    references = {}
    for subject, session in tasks:
        who = f"sub-{subject}" + (f"_ses-{session}" if session else "")
        try:
            ref = resolve_reference(cfg, layout, subject, session)
        except TemplateError as err:  # a cohort, a file of the template: shared
            problems.setdefault(str(err), []).append(who)
            continue
        except (SubjectError, BIDSError):  # this subject's own problem: reported in its run
            continue
        references.setdefault(ref.description, ref)
    for ref in references.values():
        if ref.dseg_tsv is not None:
            try:
                read_label_table(ref.dseg_tsv)
            except LabelTableError as err:
                problems.setdefault(f"labels of the reference {ref.description}: {err}", [])
    if model is not None:
        problem = _bundle_problem(cfg, model)
        if problem:
            problems.setdefault(problem, [])
    return [
        message + (f" (needed by {', '.join(whom)})" if whom else "")
        for message, whom in problems.items()
    ]


def _bundle_problem(cfg: RunConfig, model) -> str | None:
    """Why the bundle cannot register this run's images (weights verified), or None."""
    from ..io.bundle import BundleError, load_model

    try:
        bundle = load_model(model)
    except BundleError as err:
        return f"model bundle: {err}"
    modalities = bundle.metadata.modalities
    asked = (cfg.moving_modality, cfg.fixed_modality)
    if (modalities["moving"], modalities["fixed"]) != asked:
        return (
            f"model bundle {model} registers {modalities['moving']} -> {modalities['fixed']}, "
            f"but {asked[0]} -> {asked[1]} was asked for (--moving-modality, or another --model)"
        )
    return None


def subject_inputs(cfg: RunConfig, layout, subject: str, session: str | None):
    """What the workflow factories need to know of one subject-session: its reference
    (:func:`resolve_reference`) and its :class:`SubjectInputs` (images, label map and mask
    derivatives, an age given on the command line). Raises :class:`SubjectError` when it has
    no image of the moving modality (checked first: the error that names the real problem)
    or no usable reference."""
    from ..io.bids import age_override, collect_anatomicals, subject_session_id
    from ..io.derivatives import entities, find_subject_derivatives
    from ..io.images import ImageError
    from ..processing.skullstrip import needs_skull_strip
    from ..workflows.spec import SubjectInputs

    sid = subject_session_id(subject, session)
    anat = collect_anatomicals(layout, subject, session, cfg.bids_filters)
    found = {m: paths for m, paths in anat.items() if paths}
    if cfg.moving_modality not in found:
        have = ", ".join(found) or "no anatomical image"
        raise SubjectError(
            f"{sid}: no {cfg.moving_modality} image (the moving modality); found {have}. "
            "Use --moving-modality or --bids-filter-file to select the images"
        )
    for m, paths in found.items():
        if len(paths) > 1:
            LOGGER.warning("%s: %d %s images; using %s", sid, len(paths), m, paths[0])
    ref = resolve_reference(cfg, layout, subject, session)
    derivatives = find_subject_derivatives(
        cfg.derivatives,
        subject,
        session,
        labels_desc=cfg.labels_desc,
        prefer_desc=entities(ref.dseg.name).get("desc") if ref.dseg else None,
    )
    age_weeks, age_source = age_override(cfg.pma, cfg.age_months) or (None, "")
    moving = found[cfg.moving_modality][0]
    try:
        strip = "mask" not in derivatives and needs_skull_strip(moving, cfg.skull_strip)
    except ImageError:  # unreadable: the workflow's validation node reports it (crash file)
        strip = False
    if strip:
        LOGGER.info("%s: brain extraction of %s (--skull-strip %s)", sid, moving, cfg.skull_strip)
    subj = SubjectInputs(
        subject=subject,
        session=session,
        anat={m: p[0] for m, p in found.items()},
        moving_modality=cfg.moving_modality,
        derivatives=derivatives,
        age_weeks=age_weeks,
        age_source=age_source,
        skull_strip=strip,
    )
    return ref, subj


#: references already prepared in this process: key -> files (see prepare_reference)
_PREPARED_REFERENCES: dict[tuple, dict[str, Path]] = {}


def prepare_reference(cfg: RunConfig, ref, crash_dir: Path) -> dict[str, Path]:
    """The reference's preprocessing (``init_reference_wf``), run once per reference and
    run, in this process, and shared by every subject that uses it: before, each subject
    bias-corrected a participant reference again. Cached in the work directory too."""
    import hashlib

    from ..workflows.anatomical import init_reference_wf
    from ..workflows.registration import set_node_threads

    key = (
        str(ref.image),
        str(ref.mask),
        ref.is_template,
        cfg.sloppy,
        cfg.random_seed,
        str(cfg.work_dir),
    )
    cached = _PREPARED_REFERENCES.get(key)
    if cached is None or not all(f.is_file() for f in cached.values()):
        # (files gone: a work directory removed between two runs of this process)
        digest = hashlib.sha1(repr(key).encode()).hexdigest()[:8]
        wf = init_reference_wf(
            is_template=ref.is_template,
            given_mask=ref.mask,
            sloppy=cfg.sloppy,
            seed=cfg.random_seed,
            name=f"reference_{digest}_wf",
        )
        wf.inputs.inputnode.in_file = str(ref.image)
        # N4 sets the process's thread count to its own (torch, OpenMP, ITK): give it the
        # run's, or a train level after it would train on one thread
        set_node_threads(wf, cfg.threads_per_node)
        wf.base_dir = str(cfg.work_dir)
        wf.config["execution"] = execution_config(crash_dir)  # a failure is the asker's
        graph = wf.run(plugin="Linear")  # identity nodes (outputnode) are not in its graph

        def out(node: str) -> Path:
            return Path(node_outputs(graph, node).out_file)

        validated = out("validate_reference")
        _PREPARED_REFERENCES[key] = {
            "validated": validated,
            "image": validated if ref.is_template else out("n4_reference"),
            "mask": out("reference_mask"),
            "normalized": out("normalize_reference"),
        }
    return _PREPARED_REFERENCES[key]


def open_inputs(cfg: RunConfig) -> tuple[object, list[str], dict] | int:
    """The pybids layout, the selected participants and their sessions, with the reference
    checked once for all subjects; or, after logging why, the exit code of the run (16 bad
    dataset, 18 unknown participant/session, 2 unusable reference)."""
    from ..io.bids import (
        InvalidDatasetError,
        NoMatchError,
        make_layout,
        select_participants,
        select_sessions,
    )
    from ..io.templates import TemplateError
    from ..io.validation import non_bids_images, run_bids_validator

    # a mistyped label is refused at once, before the validator and pybids' indexing
    folders = {p.name[4:] for p in cfg.bids_dir.glob("sub-*") if p.is_dir()}
    unknown = sorted(set(cfg.participant_label or []) - folders)
    if unknown and cfg.bids_dir.is_dir():
        LOGGER.error(
            "%s: participant label(s) not found: %s. Available: %s. Check "
            "--participant-label (labels without 'sub-' work too).",
            cfg.bids_dir,
            ", ".join(unknown),
            ", ".join(sorted(folders)[:30]) or "none",
        )
        return exit_codes.NO_FILES
    if not cfg.skip_bids_validation and cfg.bids_dir.is_dir():
        issues = run_bids_validator(cfg.bids_dir, cfg.participant_label)
        if issues:
            shown = "\n  ".join(str(i) for i in issues[:25])
            more = f"\n  ... and {len(issues) - 25} more" if len(issues) > 25 else ""
            LOGGER.error(
                "the BIDS validator found %d error(s) in %s (in the selected participants "
                "or the whole dataset):\n  %s%s\nFix them (a file with a non-BIDS name "
                "is invisible to the app), or run with --skip-bids-validation.",
                len(issues),
                cfg.bids_dir,
                shown,
                more,
            )
            return exit_codes.BIDS_VALIDATION
    try:
        layout = make_layout(
            cfg.bids_dir,
            validate=not cfg.skip_bids_validation,
            database_dir=cfg.bids_database_dir,
        )
    except InvalidDatasetError as err:
        LOGGER.error("%s", err)
        return exit_codes.BIDS_VALIDATION
    try:
        subjects = select_participants(layout, cfg.participant_label)
        sessions_of = select_sessions(layout, subjects, cfg.session_label)
    except NoMatchError as err:
        hidden = [
            str(p.relative_to(cfg.bids_dir))
            for p in non_bids_images(cfg.bids_dir, cfg.participant_label or [])
        ]
        LOGGER.error(
            "%s%s",
            err,
            f" (its folder holds only files that are not BIDS names: {', '.join(hidden)})"
            if hidden
            else "",
        )
        return exit_codes.NO_FILES
    ignored = non_bids_images(cfg.bids_dir, subjects)
    if ignored:
        LOGGER.warning(
            "%d image(s) of the selected participants are not BIDS names and are ignored: %s",
            len(ignored),
            ", ".join(str(p.relative_to(cfg.bids_dir)) for p in ignored),
        )
    try:
        check_reference(cfg, layout)
    except TemplateError as err:
        LOGGER.error("--reference %s cannot be used: %s", cfg.reference, err)
        return exit_codes.USAGE
    return layout, subjects, sessions_of
