"""Participant level: one Nipype workflow per subject-session, each run on its own so that a
subject that fails never stops the others (unless ``--stop-on-first-crash``); several
subject-sessions at once when the CPUs allow."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from ..config import RunConfig
from ..io.atomic import write_text_atomic
from ..io.run_logs import run_log_dir
from ..runtime import available_cpus, limit_threads
from . import exit_codes
from .execution import (
    SubjectError,
    execution_config,
    gpu_available,
    is_gpu_out_of_memory,
    plugin_settings,
    report_failure,
    write_workflow_graph,
)
from .inputs import newest_model, open_inputs, preflight, prepare_reference, subject_inputs

if TYPE_CHECKING:
    from ..workflows.spec import ReferenceInputs

LOGGER = logging.getLogger("contrareg_bids.participant")


def write_dataset_description(cfg: RunConfig, model: Path | None = None) -> Path:
    """``dataset_description.json`` of the derivatives (atomic; rewritten each run).

    smriprep's ``write_derivative_description``/``write_bidsignore`` do the same for
    sMRIPrep's own names and version; smriprep (with its FreeSurfer/niworkflows chain) is not
    a dependency of this app, and the two writers here are twenty lines."""
    from ..io.bundle import file_sha256

    # no CodeURL: the project has no public page yet, and BIDS wants a URL that resolves
    generated = {"Name": "contrareg-bids", "Version": __version__}
    reg = cfg.registration
    if cfg.analysis_level == "participant":
        generated["Description"] = (
            "ANTs SyN registration (--registration ants)"
            if reg.method == "ants"
            else f"ContraReg registration at lambda {reg.lam}, then {reg.refine.steps} "
            f"refinement steps and {reg.fine.steps} fine-stage steps"
            + (
                f", with the model bundle {Path(model).name} (sha256 {file_sha256(model)})"
                if model
                else ""
            )
            + f"; random seed {cfg.random_seed}. The same record is in each transform's sidecar "
            "and each subject's registration metrics"
        )
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
#: Folders without a trailing slash: the BIDS validator does not match ``figures/`` below the
#: top level. Transforms (``*_xfm.h5``) follow the transforms proposal (BEP 014), which the
#: validator's schema does not include yet.
BIDSIGNORE = (
    "*.html",
    "logs",
    "figures",
    "models",
    "sub-*/log",
    "group_*.tsv",
    "group_*.json",
    "*_metrics.tsv",
    "*_metrics.json",
    "*_xfm.h5",
    "*_xfm.json",
)


def write_bidsignore(output_dir: Path) -> Path:
    """``OUTPUT_DIR/.bidsignore`` for our non-BIDS outputs (atomic)."""
    return write_text_atomic(Path(output_dir) / ".bidsignore", "\n".join(BIDSIGNORE) + "\n")


def registration_grid(cfg: RunConfig, model: Path | None, ref: ReferenceInputs):
    """Shape and spacing of the grid the pair is registered on: the bundle's (ContraReg,
    whose modalities must be the ones asked for), or the reference's own (ANTs SyN)."""
    if cfg.registration.method == "contrareg":
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
    from ..processing.grid import reference_grid

    return reference_grid(ref.image)


def concurrent_subjects(cfg: RunConfig, n_tasks: int) -> int:
    """How many subject-sessions run at once: ``--nprocs // --omp-nthreads`` (the slots of
    one multi-threaded node), no more than the GPU slots when ContraReg runs on GPUs, and 1
    with a user's Nipype plugin (it decides) or a single subject."""
    if cfg.use_plugin is not None or n_tasks < 2:
        return 1
    nprocs = cfg.nprocs or available_cpus()
    slots = max(1, nprocs // max(1, cfg.threads_per_node))
    if cfg.registration.method == "contrareg" and cfg.n_gpus:
        slots = min(slots, cfg.n_gpus)
    return max(1, min(slots, n_tasks))


def run_subject(cfg: RunConfig, layout, subject: str, session: str | None, model: Path | None):
    """Build and run the workflow of one subject-session; raises on failure."""
    wf = build_subject_workflow(cfg, layout, subject, session, model)
    run_workflow(wf, *plugin_settings(cfg))


def run_workflow(wf, plugin: str, plugin_args: dict) -> None:
    """Run one subject's workflow (in this process, or in a worker of the subject pool)."""
    wf.run(plugin=plugin, plugin_args=plugin_args)


def build_subject_workflow(
    cfg: RunConfig, layout, subject: str, session: str | None, model: Path | None
):
    """The workflow of one subject-session, ready to run; raises :class:`SubjectError` when
    the subject cannot be processed as asked."""
    from dataclasses import replace

    from ..io.bids import subject_session_id
    from ..workflows.registration import init_subject_registration_wf

    sid = subject_session_id(subject, session)
    ref, subj = subject_inputs(cfg, layout, subject, session)
    shape, spacing = registration_grid(cfg, model, ref)
    wf = init_subject_registration_wf(
        subj=subj,
        ref=ref,
        output_dir=cfg.output_dir,
        settings=replace(cfg.registration, model=model),  # the bundle this run uses
        reference_files=prepare_reference(
            cfg, ref, run_log_dir(cfg.output_dir, subject, cfg.run_uuid)
        ),
        grid_shape=shape,
        grid_spacing=spacing,
        use_gpu=bool(cfg.n_gpus),
        seed=cfg.random_seed,
        sloppy=cfg.sloppy,
        omp_nthreads=cfg.threads_per_node,
        bids_dir=cfg.bids_dir,
        name=f"{sid.replace('-', '_')}_wf",
    )
    wf.base_dir = str(cfg.work_dir)
    log_dir = run_log_dir(cfg.output_dir, subject, cfg.run_uuid)
    wf.config["execution"] = execution_config(log_dir)
    # the methods text of the workflow as built (the report's Methods section)
    write_text_atomic(log_dir / f"{sid}_desc-methods.txt", wf.visit_desc())
    if cfg.write_graph:
        write_workflow_graph(wf)
    return wf


def run_participant_level(cfg: RunConfig) -> int:
    """Process every selected subject-session; exit code 0, 1 (some failed), 2, 16 or 18."""
    from .reports_only import run_reports_only

    if cfg.reports_only:  # rebuild the HTML pages from the outputs on disk; run nothing
        return run_reports_only(cfg)
    opened = open_inputs(cfg)  # before seeding, which imports torch: a bad label exits fast
    if isinstance(opened, int):
        return opened
    cfg.seed_everything()
    layout, subjects, sessions_of = opened
    model = None
    if cfg.registration.method == "contrareg":
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
        if not gpu_available(cfg):
            return exit_codes.EX_TEMPFAIL
    tasks = []
    for subject in subjects:
        if not sessions_of[subject]:
            LOGGER.warning("sub-%s: none of the sessions asked for; skipped", subject)
        tasks.extend((subject, session) for session in sessions_of[subject])
    problems = preflight(cfg, layout, tasks, model)
    if problems:  # once, before any subject starts or anything is written
        LOGGER.error("the run cannot start; nothing was written:\n  - %s", "\n  - ".join(problems))
        return exit_codes.USAGE
    write_dataset_description(cfg, model)
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    cfg.write(cfg.work_dir / f"config-{cfg.run_uuid}.json")
    cfg.write(cfg.output_dir / "logs" / f"config-{cfg.run_uuid}.json")

    limit_threads(cfg.threads_per_node)
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

    oom = is_gpu_out_of_memory(err, report_failure(cfg, subject, sid, err))
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

    plugin = plugin_settings(cfg, share=at_once)
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
