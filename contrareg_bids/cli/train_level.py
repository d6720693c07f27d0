"""Train level: the participant preprocessing for every selected subject-session, then
ContraReg training on the result, and a model bundle in ``OUTPUT_DIR/models/``.

The preprocessing is built from the participant workflow's own factories
(:func:`~contrareg_bids.workflows.train.init_train_inputs_wf`): the reference and
anatomical workflows keep their names and inputs, so a ``participant`` run with the same
``-w`` reuses what ``train`` computed (N4, affine, masks), and the other way round.
Training state (checkpoints, CSV logs) lives in ``WORK_DIR/train/<name>/``; running the
same command again resumes from it.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from ..config import RunConfig
from ..io.run_logs import run_log_dir
from . import exit_codes

LOGGER = logging.getLogger("contrareg_bids.train")


@dataclass
class SubjectVolumes:
    """What the preprocessing of one subject-session gave (paths on the model grid)."""

    subject: str
    session: str | None
    moving: Path
    fixed: Path | None
    mask: Path
    labels: Path | None
    reference: Path
    reference_mask: Path | None


# ------------------------------------------------------------------------------ settings
def default_model_name(moving: str, fixed: str, loss: str) -> str:
    """``contrareg_T2w-T1w_mcr`` (``+`` of loss variants becomes ``-``)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"contrareg_{moving}-{fixed}_{loss}")


def build_train_config(cfg: RunConfig):
    """:class:`~contrareg_bids.training.config.TrainConfig` of a run: the preset's
    (:func:`train_preset`), then the options given, mapped by the table
    ``contrareg-train`` uses too (``TRAIN_OPTION_FIELDS``); seed = ``--random-seed``.
    Raises ``ValueError`` for invalid values."""
    from ..training.config import TRAIN_PRESETS, option_changes

    opts = cfg.train
    base = TRAIN_PRESETS[train_preset(cfg)]()
    changes = option_changes({**opts, "seed": cfg.random_seed, "device": training_device(cfg)})
    for key in ("train_steps", "ae_steps", "ch", "ts", "batch_size"):
        if opts.get(key) is not None and opts[key] < (0 if key == "ae_steps" else 1):
            raise ValueError(f"--{key.replace('_', '-')} must be positive, got {opts[key]}")
    if opts.get("stop_after") is not None and opts["stop_after"] < 0:
        raise ValueError(f"--stop-after must be >= 0, got {opts['stop_after']}")
    if opts.get("ae_steps") == 0:
        raise ValueError("--ae-steps must be >= 1 (use --loss mi, ... to train without them)")
    return base.updated(**changes)


def train_preset(cfg: RunConfig) -> str:
    """``--train-preset``; without it ``sloppy`` (test-sized) with ``--sloppy``, else
    ``paper`` where training runs on a GPU and ``cpu`` where it does not (the paper's 1e5
    steps of a 64-channel network are a GPU job of hours, days on a CPU)."""
    chosen = cfg.train.get("train_preset")
    if chosen:
        return chosen
    if cfg.sloppy:
        return "sloppy"
    return "paper" if trains_on_gpu(cfg) else "cpu"


def trains_on_gpu(cfg: RunConfig) -> bool:
    """Whether the train level will train on a CUDA device (:func:`training_device`)."""
    device = training_device(cfg)
    if device.startswith("cuda"):
        return True
    if device != "auto":
        return False
    import torch

    return torch.cuda.is_available()


#: What the presets cost where they were measured, for the line the train level logs.
PRESET_COST = {
    "paper": "the paper's settings (ch 64, 1e5 steps): a GPU job of about a day on one "
    "H200 (1.0-1.2 steps/s measured)",
    "cpu": "the CPU recipe (ch 16, 500 steps on a 2.5 mm grid): about 20 min for 13 "
    "neonatal subjects on 2 cores, 50 min with --train-steps 2000 on 8",
    "sloppy": "test-sized settings (--sloppy): minutes, for tests and the demo only",
}


def model_spacing(cfg: RunConfig, image) -> float | None:
    """Voxel size of a new model's grid: ``--model-spacing``; with the ``cpu`` preset
    :data:`~contrareg_bids.training.config.CPU_MODEL_SPACING` where the reference ``image``
    is finer; else None (the reference's own grid)."""
    from ..io.images import load_nifti
    from ..training.config import CPU_MODEL_SPACING

    if cfg.train.get("model_spacing") is not None:
        return cfg.train["model_spacing"]
    if train_preset(cfg) != "cpu":
        return None
    own = min(float(z) for z in load_nifti(image).header.get_zooms()[:3])
    return CPU_MODEL_SPACING if own < CPU_MODEL_SPACING else None


def training_device(cfg: RunConfig) -> str:
    """``--device``; ``auto`` trains on CUDA when there is a GPU, unless ``--n-gpus 0``."""
    if cfg.device == "auto" and cfg.n_gpus == 0:
        return "cpu"
    return cfg.device


def preprocess_subject(cfg: RunConfig, layout, subject: str, session: str | None, grid):
    """Run the preprocessing of one subject-session on ``grid`` (``(shape, spacing)``; None:
    the grid of its reference image). Returns its :class:`SubjectVolumes` and the grid."""
    from nipype.interfaces.base import isdefined

    from ..io.bids import subject_session_id
    from ..processing.grid import reference_grid
    from ..workflows.train import init_train_inputs_wf
    from .execution import execution_config, node_outputs, plugin_settings
    from .inputs import prepare_reference, subject_inputs

    sid = subject_session_id(subject, session)
    ref, subj = subject_inputs(cfg, layout, subject, session)
    log_dir = run_log_dir(cfg.output_dir, subject, cfg.run_uuid)
    shape, spacing = (
        grid if grid is not None else reference_grid(ref.image, model_spacing(cfg, ref.image))
    )
    wf = init_train_inputs_wf(
        subj=subj,
        ref=ref,
        grid_shape=shape,
        grid_spacing=spacing,
        reference_files=prepare_reference(cfg, ref, log_dir),
        seed=cfg.random_seed,
        sloppy=cfg.sloppy,
        omp_nthreads=cfg.threads_per_node,
        name=f"{sid.replace('-', '_')}_wf",
    )
    wf.base_dir = str(cfg.work_dir)
    wf.config["execution"] = execution_config(log_dir)
    plugin, plugin_args = plugin_settings(cfg)
    eg = wf.run(plugin=plugin, plugin_args=plugin_args)
    vol = node_outputs(eg, "training_volumes")
    pair = node_outputs(eg, "prepare_pair")

    def opt(value) -> Path | None:
        return Path(value) if isdefined(value) and value else None

    return SubjectVolumes(
        subject=subject,
        session=session,
        moving=Path(vol.moving),
        fixed=opt(vol.fixed),
        mask=Path(vol.mask),
        labels=opt(vol.labels),
        reference=Path(pair.fixed),
        reference_mask=opt(pair.fixed_mask),
    ), (tuple(shape), tuple(spacing))


# ------------------------------------------------------------------------------ records
def training_records(volumes: list[SubjectVolumes]):
    """``(moving, fixed, template)`` record lists for :func:`~contrareg_bids.training.
    pipeline.train`: pairs between subjects when two or more have the fixed modality (the
    paper's set-up), else every subject to the reference (the participant level's task)."""
    from ..training.data import VolumeRecord

    moving = [
        VolumeRecord(
            image=v.moving, subject=v.subject, mask=v.mask, labels=v.labels, session=v.session
        )
        for v in volumes
    ]
    with_fixed = [v for v in volumes if v.fixed is not None]
    if len({v.subject for v in with_fixed}) >= 2:
        fixed = [
            VolumeRecord(
                image=v.fixed, subject=v.subject, mask=v.mask, labels=v.labels, session=v.session
            )
            for v in with_fixed
        ]
        return moving, fixed, None
    first = volumes[0]
    template = VolumeRecord(image=first.reference, subject="reference", mask=first.reference_mask)
    return moving, None, template


def write_record_list(path: Path, records) -> Path:
    """A ``contrareg-train`` list (TSV: image, mask, labels, subject, session), e.g. for a
    multi-GPU ``torchrun`` run on the same preprocessed data."""
    from ..io.atomic import write_tsv_atomic

    header = ["image", "mask", "labels", "subject", "session"]
    rows = ([r.image, r.mask or "", r.labels or "", r.subject, r.session or ""] for r in records)
    return write_tsv_atomic(path, header, rows)


def check_selection(train_dir: Path, selection: dict) -> None:
    """Refuse to resume a training folder with other data (the trainer itself checks the
    configuration); ``ValueError`` names the folder and what changed."""
    path = train_dir / "selection.json"
    if path.is_file():
        before = json.loads(path.read_text())
        if before != selection:
            changed = sorted(
                k for k in set(before) | set(selection) if before.get(k) != selection.get(k)
            )
            raise ValueError(
                f"{train_dir} holds a training run on other data ({', '.join(changed)} "
                "differ); give another --model-name, or delete the folder to restart"
            )
        return
    train_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(selection, indent=2, sort_keys=True))


# ------------------------------------------------------------------------------ the level
def run_train_level(cfg: RunConfig) -> int:
    """Preprocess the selected subject-sessions and train; exit code 0, 1 (some subjects
    failed; the model was trained on the others), 2, 16, 18 or 75."""
    from ..io.bids import subject_session_id
    from ..processing.normalize import normalization_description
    from ..runtime import limit_threads
    from ..training.pipeline import train
    from ..training.report import write_training_report
    from .execution import gpu_available, is_gpu_out_of_memory, report_failure
    from .inputs import open_inputs
    from .participant import write_dataset_description

    cfg.seed_everything()
    try:
        tcfg = build_train_config(cfg)
    except ValueError as err:
        LOGGER.error("%s", err)
        return exit_codes.USAGE
    preset = train_preset(cfg)
    LOGGER.info(
        "training preset %s%s: %s",
        preset,
        "" if cfg.train.get("train_preset") or cfg.sloppy
        else f" (no --train-preset; {'a' if trains_on_gpu(cfg) else 'no'} GPU to train on)",
        PRESET_COST[preset],
    )  # fmt: skip
    opened = open_inputs(cfg)
    if isinstance(opened, int):
        return opened
    layout, subjects, sessions_of = opened
    if not gpu_available(cfg):
        return exit_codes.EX_TEMPFAIL
    if (cfg.n_gpus or 0) > 1:
        LOGGER.warning(
            "--n-gpus %d: the train level trains in one process on one device; for "
            "several GPUs use torchrun with contrareg-train on the lists it writes "
            "(docs/training.md)",
            cfg.n_gpus,
        )
    name = cfg.train.get("model_name") or default_model_name(
        cfg.moving_modality, cfg.fixed_modality, tcfg.loss
    )
    train_dir = cfg.work_dir / "train" / name
    models = cfg.output_dir / "models"
    write_dataset_description(cfg)
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    cfg.write(cfg.work_dir / f"config-{cfg.run_uuid}.json")
    cfg.write(cfg.output_dir / "logs" / f"config-{cfg.run_uuid}.json")
    limit_threads(cfg.threads_per_node)

    volumes: list[SubjectVolumes] = []
    failed: list[str] = []
    grid = None
    for subject in subjects:
        for session in sessions_of[subject]:
            sid = subject_session_id(subject, session)
            try:
                vol, grid = preprocess_subject(cfg, layout, subject, session, grid)
                volumes.append(vol)
                LOGGER.info("%s: preprocessed for training", sid)
            except Exception as err:  # one subject never stops the others
                failed.append(sid)
                report_failure(cfg, subject, sid, err)
                if cfg.stop_on_first_crash:
                    LOGGER.error("stopping at the first failure (--stop-on-first-crash)")
                    return exit_codes.PARTICIPANT_FAILED
    if len({v.subject for v in volumes}) < 2:
        LOGGER.error(
            "training needs at least two participants with a %s image; %d usable (failed: %s)",
            cfg.moving_modality,
            len(volumes),
            ", ".join(failed) or "none",
        )
        return exit_codes.PARTICIPANT_FAILED if failed else exit_codes.NO_FILES

    moving, fixed, template = training_records(volumes)
    write_record_list(train_dir / "moving.tsv", moving)
    if fixed is not None:
        write_record_list(train_dir / "fixed.tsv", fixed)
    selection = {
        "subjects": sorted(subject_session_id(v.subject, v.session) for v in volumes),
        "reference": cfg.reference,
        "modalities": [cfg.moving_modality, cfg.fixed_modality],
        "pairs": "between subjects" if template is None else "to the reference",
        "grid": {"shape": list(grid[0]), "spacing": list(grid[1])},
    }
    bundle = models / f"{name}.safetensors"
    LOGGER.info(
        "training %s on %d subject-session(s), pairs %s; state in %s",
        name,
        len(volumes),
        selection["pairs"],
        train_dir,
    )
    try:
        check_selection(train_dir, selection)
        out = train(
            moving,
            fixed,
            tcfg,
            train_dir,
            template=template,
            modalities=(cfg.moving_modality, cfg.fixed_modality),
            progress=True,
            stop_after=cfg.train.get("stop_after"),
            bundle_path=bundle,
            normalization=normalization_description(),
        )
    except ValueError as err:
        LOGGER.error("%s", err)
        return exit_codes.USAGE
    except Exception as err:
        if not is_gpu_out_of_memory(err):
            raise
        LOGGER.error(
            "training %s: the GPU ran out of memory (%s); the run resumes from its "
            "last checkpoint in %s: rerun on a GPU with more memory, or lower "
            "--batch-size",
            name,
            err,
            train_dir / "checkpoints",
        )
        return exit_codes.EX_TEMPFAIL
    summary = {
        "model": name,
        "loss": tcfg.loss,
        "moving -> fixed": f"{cfg.moving_modality} -> {cfg.fixed_modality}",
        "reference": cfg.reference,
        "subject-sessions": ", ".join(selection["subjects"]),
        "pairs": selection["pairs"],
        "grid": f"{'x'.join(map(str, grid[0]))} at {'x'.join(f'{s:g}' for s in grid[1])} mm",
        "steps": f"{tcfg.steps} registration, {tcfg.autoencoder.steps} autoencoder",
        "network": f"ch={tcfg.regnet.ch}, ts={tcfg.regnet.ts}, lambda in "
        f"{list(tcfg.lambda_range)}",
        "device": tcfg.device,
        "seed": tcfg.seed,
    }
    if out is None:
        write_training_report(
            train_dir, train_dir / "report.html", title=f"{name} (in progress)", summary=summary
        )
        LOGGER.info(
            "stopped early (--stop-after); run the same command again to resume from %s",
            train_dir / "checkpoints",
        )
        return exit_codes.PARTICIPANT_FAILED if failed else exit_codes.OK
    summary["last validation"] = ", ".join(f"{k} {v:.4g}" for k, v in out.last_val.items()) or "-"
    summary["bundle"] = str(bundle)
    report = write_training_report(train_dir, models / f"{name}.html", title=name, summary=summary)
    LOGGER.info("model bundle %s (sidecar %s, report %s)", bundle, out.sidecar, report)
    if failed:
        LOGGER.error(
            "%d failed: %s (see sub-*/log/); the model was trained on the others",
            len(failed),
            ", ".join(failed),
        )
        return exit_codes.PARTICIPANT_FAILED
    return exit_codes.OK
