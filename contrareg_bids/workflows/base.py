"""Participant level: one Nipype workflow per subject-session, each run on its own so that a
subject that fails never stops the others (unless ``--stop-on-first-crash``)."""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from ..cli import exit_codes
from ..config import RunConfig, default_threads
from ..processing.threads import available_cpus, limit_threads

if TYPE_CHECKING:
    from .registration import ReferenceInputs
from ..io.atomic import write_text_atomic
from ..io.run_logs import run_log_dir

LOGGER = logging.getLogger("contrareg_bids.participant")


class SubjectError(ValueError):
    """A subject cannot be processed as asked (reported per subject, others go on)."""


def write_dataset_description(cfg: RunConfig) -> Path:
    """``dataset_description.json`` of the derivatives (atomic; rewritten each run).

    smriprep's ``write_derivative_description``/``write_bidsignore`` do the same for
    sMRIPrep's own names and version; smriprep (with its FreeSurfer/niworkflows chain) is not
    a dependency of this app, and the two writers here are twenty lines."""
    generated = {
        "Name": "contrareg-bids",
        "Version": __version__,
        "CodeURL": "https://pypi.org/project/contrareg-bids/",
    }
    container = os.environ.get("CONTRAREG_CONTAINER")
    if container:
        kind, _, tag = container.partition(":")
        generated["Container"] = {"Type": kind, "Tag": tag}
    source = {"URL": cfg.bids_dir.as_uri()}
    src_desc: dict = {}
    try:
        src_desc = json.loads((cfg.bids_dir / "dataset_description.json").read_text())
        if src_desc.get("DatasetDOI"):
            source["DOI"] = src_desc["DatasetDOI"]
    except (OSError, ValueError):
        pass
    desc = {
        "Name": "contrareg-bids outputs",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [generated],
        "SourceDatasets": [source],
        "DatasetLinks": {"raw": cfg.bids_dir.as_uri()},
    }
    # derivatives inherit the input's terms of use (as fMRIPrep/smriprep do)
    for key in ("License", "HowToAcknowledge"):
        if isinstance(src_desc, dict) and src_desc.get(key):
            desc[key] = src_desc[key]
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    write_bidsignore(cfg.output_dir)
    return write_text_atomic(
        cfg.output_dir / "dataset_description.json", json.dumps(desc, indent=2)
    )


#: What the app writes that BIDS does not define, hidden from the validator (as fMRIPrep's).
BIDSIGNORE = (
    "*.html",
    "logs/",
    "figures/",
    "models/",
    "sub-*/log/",
    "group_*.tsv",
    "group_*.json",
    "*_metrics.tsv",
    "*_metrics.json",
)


def write_bidsignore(output_dir: Path) -> Path:
    """``OUTPUT_DIR/.bidsignore`` for our non-BIDS outputs (atomic)."""
    return write_text_atomic(Path(output_dir) / ".bidsignore", "\n".join(BIDSIGNORE) + "\n")


def newest_model(output_dir: Path) -> Path | None:
    """The most recent ``OUTPUT_DIR/models/*.safetensors`` (what ``train`` writes)."""
    models = sorted((output_dir / "models").glob("*.safetensors"), key=lambda p: p.stat().st_mtime)
    return models[-1] if models else None


def resolve_reference(cfg: RunConfig, layout, subject: str, session: str | None):
    """The reference of one subject-session (template cohort from the age when needed)."""
    from ..io.bids import age_override, collect_anatomicals, require_age
    from ..io.derivatives import find_subject_derivatives
    from ..io.templates import (
        cohort_for_age,
        get_template_files,
        parse_reference,
        template_cohorts,
    )
    from .registration import ReferenceInputs

    spec = parse_reference(cfg.reference)
    if spec.kind == "template":
        cohort = spec.cohort
        if cohort is None and template_cohorts(spec.template):
            age, where = age_override(cfg.pma, cfg.age_months) or require_age(
                layout, subject, session
            )
            cohort, warning = cohort_for_age(spec.template, age)
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


def _grid(cfg: RunConfig, model: Path | None, ref: ReferenceInputs):
    if cfg.registration == "contrareg":
        from ..io.bundle import describe_bundle

        info = describe_bundle(model)
        md = info.get("metadata", info)
        grid = md["grid"]
        mods = md["modalities"]
        if (mods["moving"], mods["fixed"]) != (cfg.moving_modality, cfg.fixed_modality):
            raise SubjectError(
                f"the model {model} registers {mods['moving']} -> {mods['fixed']}, but "
                f"{cfg.moving_modality} -> {cfg.fixed_modality} was asked for"
            )
        return tuple(grid["shape"]), tuple(grid["spacing"])
    import nibabel as nib
    import numpy as np

    img = nib.load(str(ref.image))
    spacing = tuple(float(s) for s in np.linalg.norm(img.affine[:3, :3], axis=0))
    return tuple(int(s) for s in img.shape[:3]), spacing


def _gpu_available(cfg: RunConfig) -> bool:
    """False when the run demands CUDA (``--device cuda[:N]``) and there is none: exit code
    75, "try again on a GPU node" (``--device auto`` falls back to the CPU instead)."""
    if not cfg.device.startswith("cuda"):
        return True
    import torch

    return torch.cuda.is_available()


def _plugin(cfg: RunConfig, share: int = 1) -> tuple[str, dict]:
    """Nipype plugin of one subject's workflow when ``share`` subjects run at once (each gets
    ``1/share`` of ``--nprocs``, ``--mem`` and the GPU slots)."""
    if cfg.use_plugin is not None:
        import yaml

        settings = yaml.safe_load(cfg.use_plugin.read_text()) or {}
        return settings.get("plugin", "MultiProc"), settings.get("plugin_args", {})
    nprocs = max(1, (cfg.nprocs or available_cpus()) // share)
    if nprocs == 1:
        return "Linear", {}
    args: dict = {"n_procs": nprocs, "raise_insufficient": False}
    if cfg.mem_gb:
        args["memory_gb"] = cfg.mem_gb / share
    if cfg.n_gpus is not None:
        args["n_gpu_procs"] = max(1, cfg.n_gpus // share) if cfg.n_gpus else 0
    return "MultiProc", args


def concurrent_subjects(cfg: RunConfig, n_tasks: int) -> int:
    """How many subject-sessions run at once: ``--nprocs // --omp-nthreads`` (the slots of
    one multi-threaded node), no more than the GPU slots when ContraReg runs on GPUs, and 1
    with a user's Nipype plugin (it decides) or a single subject."""
    if cfg.use_plugin is not None or n_tasks < 2:
        return 1
    nprocs = cfg.nprocs or available_cpus()
    slots = max(1, nprocs // max(1, cfg.omp_nthreads or default_threads(cfg.nprocs)))
    if cfg.registration == "contrareg" and cfg.n_gpus:
        slots = min(slots, cfg.n_gpus)
    return max(1, min(slots, n_tasks))


def run_subject(cfg: RunConfig, layout, subject: str, session: str | None, model: Path | None):
    """Build and run the workflow of one subject-session; raises on failure."""
    wf = build_subject_workflow(cfg, layout, subject, session, model)
    run_workflow(wf, *_plugin(cfg))


def run_workflow(wf, plugin: str, plugin_args: dict) -> None:
    """Run one subject's workflow (in this process, or in a worker of the subject pool)."""
    wf.run(plugin=plugin, plugin_args=plugin_args)


def subject_inputs(cfg: RunConfig, layout, subject: str, session: str | None, ref):
    """What the workflow factories need to know of one subject-session (its images, label
    map and mask derivatives, an age given on the command line); raises
    :class:`SubjectError` when it has no image of the moving modality."""
    from ..io.bids import age_override, collect_anatomicals, subject_session_id
    from ..io.derivatives import entities, find_subject_derivatives
    from .registration import SubjectInputs

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
    derivatives = find_subject_derivatives(
        cfg.derivatives,
        subject,
        session,
        labels_desc=cfg.labels_desc,
        prefer_desc=entities(ref.dseg.name).get("desc") if ref.dseg else None,
    )
    age_weeks, age_source = age_override(cfg.pma, cfg.age_months) or (None, "")
    subj = SubjectInputs(
        subject=subject,
        session=session,
        anat={m: p[0] for m, p in found.items()},
        moving_modality=cfg.moving_modality,
        derivatives=derivatives,
        age_weeks=age_weeks,
        age_source=age_source,
    )
    return subj


def build_subject_workflow(
    cfg: RunConfig, layout, subject: str, session: str | None, model: Path | None
):
    """The workflow of one subject-session, ready to run; raises :class:`SubjectError` when
    the subject cannot be processed as asked."""
    from ..io.bids import subject_session_id
    from .registration import init_subject_registration_wf

    sid = subject_session_id(subject, session)
    ref = resolve_reference(cfg, layout, subject, session)
    subj = subject_inputs(cfg, layout, subject, session, ref)
    shape, spacing = _grid(cfg, model, ref)
    wf = init_subject_registration_wf(

        subj=subj,
        ref=ref,
        output_dir=cfg.output_dir,
        registration=cfg.registration,
        reference_files=prepare_reference(
            cfg, ref, run_log_dir(cfg.output_dir, subject, cfg.run_uuid)
        ),
        model=model,
        grid_shape=shape,
        grid_spacing=spacing,
        lam=cfg.lam,
        device=cfg.device,
        max_folding=cfg.max_folding,
        use_gpu=bool(cfg.n_gpus),
        seed=cfg.random_seed,
        refine_steps=cfg.refine_steps,
        sloppy=cfg.sloppy,
        omp_nthreads=cfg.omp_nthreads or default_threads(cfg.nprocs),
        bids_dir=cfg.bids_dir,
        name=f"{sid.replace('-', '_')}_wf",
    )
    wf.base_dir = str(cfg.work_dir)
    wf.config["execution"] = execution_config(run_log_dir(cfg.output_dir, subject, cfg.run_uuid))
    if cfg.write_graph:
        write_workflow_graph(wf)
    return wf


#: references already prepared in this process: key -> files (see prepare_reference)
_PREPARED_REFERENCES: dict[tuple, dict[str, Path]] = {}


def prepare_reference(cfg: RunConfig, ref, crash_dir: Path) -> dict[str, Path]:
    """The reference's preprocessing (``init_reference_wf``), run once per reference and
    run, in this process, and shared by every subject that uses it: before, each subject
    bias-corrected a participant reference again. Cached in the work directory too."""
    import hashlib

    from .anatomical import init_reference_wf

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


def node_outputs(execgraph, name: str):
    """The outputs of the node ``name`` of a workflow that ran (``wf.run()``'s graph)."""
    for node in execgraph.nodes():
        if node.name == name:
            return node.result.outputs
    raise RuntimeError(f"the workflow ran without its node {name!r}")


def execution_config(crash_dir: Path) -> dict:
    """Nipype's execution settings of every workflow the app runs."""
    return {
        "crashdump_dir": str(crash_dir),
        "crashfile_format": "txt",
        "hash_method": "content",  # a work directory survives copying
        "remove_unnecessary_outputs": False,
        "stop_on_first_crash": True,
        # MultiProc polls its workers every 2 s by default, most of the run time of a small
        # subject (HALFpipe uses 0.1 s too)
        "poll_sleep_duration": 0.1,
    }


def write_workflow_graph(wf) -> None:
    """``--write-graph``: the workflow's graph in its work folder (SVG with Graphviz's
    ``dot``, else the ``.dot`` file alone)."""
    try:
        wf.write_graph(graph2use="colored", format="svg", simple_form=True)
    except OSError:
        wf.write_graph(graph2use="colored", format="dot", simple_form=True)
        LOGGER.warning(
            "%s: Graphviz 'dot' is not installed: only the .dot graph was written (in %s)",
            wf.name,
            Path(wf.base_dir) / wf.name,
        )


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


def run_participant_level(cfg: RunConfig) -> int:
    """Process every selected subject-session; exit code 0, 1 (some failed), 2, 16 or 18."""
    from ..reports.subject import run_reports_only

    if cfg.reports_only:  # rebuild the HTML pages from the outputs on disk; run nothing
        return run_reports_only(cfg)
    opened = open_inputs(cfg)  # before seeding, which imports torch: a bad label exits fast
    if isinstance(opened, int):
        return opened
    cfg.seed_everything()
    layout, subjects, sessions_of = opened
    model = None
    if cfg.registration == "contrareg":
        model = cfg.model or newest_model(cfg.output_dir)
        if model is None:
            LOGGER.error(
                "no model bundle: give --model PATH, run the train level first, or use "
                "--registration ants"
            )
            return exit_codes.USAGE
        if cfg.model is None:
            LOGGER.info(
                "using the newest model bundle in %s: %s (--model to choose another)",
                cfg.output_dir / "models",
                model,
            )
        else:
            LOGGER.info("using the model bundle %s", model)
        if not _gpu_available(cfg):
            LOGGER.error(
                "--device %s: CUDA is not available here; run on a GPU node, or use "
                "--device auto or cpu",
                cfg.device,
            )
            return exit_codes.EX_TEMPFAIL
    write_dataset_description(cfg)
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    cfg.write(cfg.work_dir / f"config-{cfg.run_uuid}.json")
    cfg.write(cfg.output_dir / "logs" / f"config-{cfg.run_uuid}.json")

    limit_threads(cfg.omp_nthreads or default_threads(cfg.nprocs))
    tasks = []
    for subject in subjects:
        if not sessions_of[subject]:
            LOGGER.warning("sub-%s: none of the sessions asked for; skipped", subject)
        tasks.extend((subject, session) for session in sessions_of[subject])
    progress = _Progress(len(tasks))
    at_once = concurrent_subjects(cfg, len(tasks))
    if at_once > 1:
        LOGGER.info("%d subject-sessions, %d at a time", len(tasks), at_once)
        stopped = _run_concurrently(cfg, layout, tasks, model, at_once, progress)
    else:
        stopped = _run_one_by_one(cfg, layout, tasks, model, progress)
    failed, out_of_gpu_memory = progress.failed, progress.out_of_gpu_memory
    if stopped:
        LOGGER.error("stopping at the first failure (--stop-on-first-crash)")
    if failed:
        LOGGER.error(
            "%d failed: %s (see sub-*/log/%s/)", len(failed), ", ".join(failed), cfg.run_uuid
        )
        if out_of_gpu_memory == failed:  # nothing wrong with the data: retry elsewhere
            LOGGER.error(
                "every failure was the GPU running out of memory: exit %d so that a scheduler "
                "can requeue on a GPU with more memory (or rerun with --device cpu)",
                exit_codes.EX_TEMPFAIL,
            )
            return exit_codes.EX_TEMPFAIL
        return exit_codes.PARTICIPANT_FAILED
    return exit_codes.OK


class _Progress:
    """Counts finished and failed subject-sessions; one line per subject-session."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self.failed: list[str] = []
        self.out_of_gpu_memory: list[str] = []

    def finished(self, sid: str, seconds: float) -> None:
        self.done += 1
        LOGGER.info("%s: finished in %.0f s (%s)", sid, seconds, self._counts())

    def failed_with(self, sid: str, out_of_gpu_memory: bool) -> None:
        self.done += 1
        self.failed.append(sid)
        if out_of_gpu_memory:
            self.out_of_gpu_memory.append(sid)
        LOGGER.info("%s: failed (%s)", sid, self._counts())

    def _counts(self) -> str:
        return f"{self.done}/{self.total} done, {len(self.failed)} failed"


def _record_failure(cfg, subject, session, sid, err, started, progress) -> None:
    from ..reports.subject import write_subject_report

    oom = is_gpu_out_of_memory(err, _report_failure(cfg, subject, sid, err))
    progress.failed_with(sid, oom)
    write_subject_report(cfg, subject, session, started, status="failed")


def _run_one_by_one(cfg, layout, tasks, model, progress: _Progress) -> bool:
    """Subject-sessions in this process, one after another; True when stopped early."""
    from ..io.bids import subject_session_id
    from ..reports.subject import write_subject_report

    for subject, session in tasks:
        sid = subject_session_id(subject, session)
        started = time.monotonic()
        try:
            run_subject(cfg, layout, subject, session, model)
        except Exception as err:  # one subject never stops the others
            _record_failure(cfg, subject, session, sid, err, started, progress)
            if cfg.stop_on_first_crash:
                return True
            continue
        progress.finished(sid, time.monotonic() - started)
        write_subject_report(cfg, subject, session, started)
    return False


def _run_concurrently(cfg, layout, tasks, model, at_once: int, progress: _Progress) -> bool:
    """Subject-sessions in ``at_once`` worker processes, each with its share of the CPUs.
    Workflows are built here (pybids stays in this process) and run there; a failure is
    recorded for its subject only. True when stopped early."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from ..io.bids import subject_session_id
    from ..reports.subject import write_subject_report

    plugin = _plugin(cfg, share=at_once)
    context = multiprocessing.get_context("spawn")  # no fork of a process with torch threads
    pending: dict = {}
    stopped = False
    from ..cli.logs import init_worker_logging, worker_logging

    with ProcessPoolExecutor(
        max_workers=at_once,
        mp_context=context,
        initializer=init_worker_logging,
        initargs=worker_logging(),
    ) as pool:
        queue = list(tasks)
        while queue or pending:
            while queue and len(pending) < at_once and not stopped:
                subject, session = queue.pop(0)
                sid = subject_session_id(subject, session)
                started = time.monotonic()
                try:
                    wf = build_subject_workflow(cfg, layout, subject, session, model)
                except Exception as err:
                    _record_failure(cfg, subject, session, sid, err, started, progress)
                    stopped = stopped or cfg.stop_on_first_crash
                    continue
                future = pool.submit(run_workflow, wf, *plugin)
                pending[future] = (subject, session, sid, started)
            if stopped:
                queue.clear()
            if not pending:
                continue
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for future in done:
                subject, session, sid, started = pending.pop(future)
                err = future.exception()
                if err is None:
                    progress.finished(sid, time.monotonic() - started)
                    write_subject_report(cfg, subject, session, started)
                else:
                    _record_failure(cfg, subject, session, sid, err, started, progress)
                    stopped = stopped or cfg.stop_on_first_crash
    return stopped


def is_gpu_out_of_memory(err: BaseException, message: str = "") -> bool:
    """True for a CUDA out-of-memory error, raised here or inside a Nipype node (then only
    the crash file's last line, ``message``, tells)."""
    name = type(err).__name__
    text = f"{err} {message}"
    return name == "OutOfMemoryError" or "OutOfMemoryError" in text or "CUDA out of memory" in text


_NODE_FAILURES = ("Workflow did not execute cleanly", "Exception raised while executing Node")


def _report_failure(cfg: RunConfig, subject: str, sid: str, err: Exception) -> str:
    """Write ``sub-X/log/<run_uuid>/error-<sid>.txt`` and log the cause; return the cause's
    message."""
    log_dir = run_log_dir(cfg.output_dir, subject, cfg.run_uuid)
    log_dir.mkdir(parents=True, exist_ok=True)
    message = str(err)
    crashes = sorted(log_dir.glob("crash-*.txt"), key=lambda p: p.stat().st_mtime)
    # a failed node: "Workflow did not execute cleanly" (MultiProc) or "Exception raised while
    # executing Node ..." (Linear); the cause is the last line of the node's crash file
    if crashes and any(m in message for m in _NODE_FAILURES):
        text = crashes[-1].read_text()
        last = [ln for ln in text.strip().splitlines() if ln.strip()][-1]
        message = f"{last.strip()} (crash file {crashes[-1]})"
    message = message.removeprefix(f"{sid}: ")  # SubjectError messages name the subject
    (log_dir / f"error-{sid}.txt").write_text(
        f"{sid}: {message}\n\n" + "".join(traceback.format_exception(err))
    )
    LOGGER.error("%s failed: %s", sid, message)
    return message
