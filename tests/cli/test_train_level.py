"""``contrareg-bids BIDS OUT train`` on tiny real data: the participant preprocessing, a
(tiny) training run on the CPU, the bundle with its sidecar and report in ``OUT/models``,
resuming, and ``participant`` picking the trained bundle up (sharing the work directory).

The subjects are ICBM 2009c at 4 mm under random smooth deformations (as in
``test_participant_e2e``); the reference is the 4 mm ICBM template of ``tiny_templateflow``.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from contrareg_bids.cli import exit_codes
from contrareg_bids.cli.parser import parse_args
from contrareg_bids.cli.run import main
from contrareg_bids.config import RunConfig
from tests.bids_factory import make_bids_dataset
from tests.test_participant_e2e import label_img, run_level, write_labels_derivatives

TPL = "ICBMTest"
#: Tiny training: ch=8, 2 autoencoder steps, 4 registration steps (seconds on a CPU).
TINY = ["--sloppy", "--nprocs", "1", "--reference", TPL, "--ch", "8", "--ts", "3",
        "--ae-steps", "2", "--train-steps", "4", "--val-fraction", "0.3"]  # fmt: skip
NAME = "contrareg_T2w-T1w_mcr"


def run(bids: Path, out: Path, work: Path, level: str, *options, home: Path) -> int:
    return run_level(bids, out, work, level, *options, home=home)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, icbm_small, icbm_subjects) -> tuple[Path, Path]:
    """Three subjects (T1w, T2w, age) and their label maps as derivatives."""
    tmp = tmp_path_factory.mktemp("train_bids")
    aff = icbm_small["affine"]
    subjects = {f"0{i + 1}": {"T1w": s["t1w"], "T2w": s["t2w"], "age": 40}
                for i, s in enumerate(icbm_subjects[:3])}  # fmt: skip
    bids = make_bids_dataset(tmp / "bids", subjects, affine=aff)
    labels = write_labels_derivatives(
        tmp / "labels", {f"0{i + 1}": label_img(s, aff) for i, s in enumerate(icbm_subjects[:3])}
    )
    return bids, labels


@pytest.fixture(scope="module")
def trained(tmp_path_factory, dataset, tiny_templateflow):
    """``train`` stopped after 2 of 4 steps (``--stop-after``), then the same command again:
    the second run resumes from the checkpoint and writes the bundle. Records both logs."""
    bids, labels = dataset
    tmp = tmp_path_factory.mktemp("train")
    out, work = tmp / "out", tmp / "work"
    opts = [*TINY, "--derivatives", f"labels={labels}"]
    logs = []
    handler = _Capture(logs)
    logger = logging.getLogger("contrareg_bids")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        rc1 = run(bids, out, work, "train", *opts, "--stop-after", "2", home=tiny_templateflow)
        first = list(logs)
        logs.clear()
        rc2 = run(bids, out, work, "train", *opts, home=tiny_templateflow)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return {"rc": (rc1, rc2), "logs": (first, list(logs)), "out": out, "work": work,
            "bids": bids, "labels": labels}  # fmt: skip


class _Capture(logging.Handler):
    def __init__(self, sink: list[str]):
        super().__init__(logging.INFO)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record.getMessage())


def test_stopped_run_writes_no_bundle_and_resumes(trained):
    assert trained["rc"] == (0, 0)
    first, second = trained["logs"]
    assert any("stopped early (--stop-after)" in m for m in first)
    # the second run starts from the checkpoint of the first (step 2), not from 0
    resumed = [m for m in second if m.startswith("registration: resuming")]
    assert len(resumed) == 1 and resumed[0].endswith("at step 2"), second
    train_dir = trained["work"] / "train" / NAME
    with (train_dir / "train.csv").open() as fh:
        steps = [int(r["step"]) for r in csv.DictReader(fh)]
    assert steps == sorted(set(steps)) and steps[-1] == 4  # no step logged twice


def test_bundle_sidecar_and_report(trained):
    from contrareg_bids.io.bundle import load_model

    models = trained["out"] / "models"
    assert sorted(p.name for p in models.iterdir()) == [
        f"{NAME}.html", f"{NAME}.json", f"{NAME}.safetensors",
    ]  # fmt: skip
    bundle = load_model(models / f"{NAME}.safetensors")
    md = bundle.metadata
    assert md.modalities == {"moving": "T2w", "fixed": "T1w"}
    assert md.training_steps == 4 and md.loss == "mcr"
    assert tuple(md.grid.shape) == (37, 46, 39)  # the reference grid (4 mm ICBM)
    assert md.normalization["method"] == "percentile"
    assert bundle.regnet is not None and set(bundle.autoencoders) == {"T1w", "T2w"}
    sidecar = json.loads((models / f"{NAME}.json").read_text())
    assert sidecar["file"] == f"{NAME}.safetensors"
    assert sidecar["metadata"]["extra"]["train_config"]["regnet"]["ch"] == 8
    assert "val_dice" in sidecar["metadata"]["extra"]["validation"]  # labels were given
    page = (models / f"{NAME}.html").read_text()
    assert page.count("<svg") >= 3  # loss, validation, autoencoders
    assert "Validation Dice" in page and "Registration loss" in page
    assert not re.search(r"<script|(src|href)=[\"']?https?:", page)  # self-contained
    assert "sub-01, sub-02, sub-03" in page


def test_training_inputs_listed_for_contrareg_train(trained):
    """The preprocessed volumes are listed as contrareg-train TSVs (e.g. for torchrun)."""
    from contrareg_bids.training.pipeline import read_record_list

    train_dir = trained["work"] / "train" / NAME
    moving = read_record_list(train_dir / "moving.tsv")
    fixed = read_record_list(train_dir / "fixed.tsv")
    assert [r.subject for r in moving] == ["01", "02", "03"] == [r.subject for r in fixed]
    import nibabel as nib

    img = nib.load(str(moving[0].image))
    assert img.shape == (37, 46, 39)
    arr = np.asanyarray(img.dataobj)
    assert 0 <= arr.min() and arr.max() <= 1 + 1e-6
    mask = np.asanyarray(nib.load(str(moving[0].mask)).dataobj) > 0
    # skull-stripped: nothing outside the brain mask, give or take the linear interpolation
    # of the image against the nearest-neighbour one of the mask (a voxel or two)
    assert arr[~binary_dilation(mask, iterations=3)].max() == 0
    assert moving[0].labels is not None and fixed[0].image != moving[0].image


def test_participant_uses_the_newest_bundle_and_the_work_dir(trained, tiny_templateflow, caplog):
    """``participant`` without ``--model`` takes ``OUT/models/<name>.safetensors``, says so,
    and reuses the preprocessing nodes ``train`` ran (same ``-w``)."""
    n4 = (
        trained["work"]
        / "sub_01_wf"
        / "pair_wf"
        / "anat_preproc_wf"
        / "n4_moving"
        / "result_n4_moving.pklz"
    )
    before = n4.stat().st_mtime_ns
    caplog.set_level(logging.INFO, logger="contrareg_bids")
    rc = run(trained["bids"], trained["out"], trained["work"], "participant", "--sloppy",
             "--nprocs", "1", "--reference", TPL, "--participant-label", "01",
             home=tiny_templateflow)  # fmt: skip
    assert rc == exit_codes.OK
    bundle = trained["out"] / "models" / f"{NAME}.safetensors"
    assert f"using the newest model bundle in {bundle.parent}: {bundle}" in caplog.text
    assert n4.stat().st_mtime_ns == before
    anat = trained["out"] / "sub-01" / "anat"
    assert (anat / f"sub-01_from-T2w_to-{TPL}_mode-image_xfm.h5").is_file()


def test_train_then_participant_then_group(trained, tiny_templateflow):
    """The three levels in a row through the CLI, as a lab runs them: ``participant`` (the
    bundle ``train`` wrote, the subjects' labels) then ``group`` over its metrics."""
    out = trained["out"]
    rc = run(trained["bids"], out, trained["work"], "participant", "--sloppy", "--nprocs", "1",
             "--reference", TPL, "--participant-label", "02", "03", "--derivatives",
             f"labels={trained['labels']}", home=tiny_templateflow)  # fmt: skip
    assert rc == exit_codes.OK
    rc = run(trained["bids"], out, trained["work"], "group", "--participant-label", "02", "03",
             home=tiny_templateflow)  # fmt: skip
    assert rc == exit_codes.OK
    lines = (out / "group_metrics.tsv").read_text().strip().splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, ln.split("\t"), strict=True)) for ln in lines[1:]]
    assert [r["subject"] for r in rows] == ["02", "03"]
    for r in rows:
        assert r["method"] == "contrareg" and r["session"] == "n/a"
        assert 0 <= float(r["mean_dice_affine"]) <= 1 and 0 <= float(r["mean_dice"]) <= 1
        assert float(r["folding_percent"]) >= 0
    page = (out / "group.html").read_text()
    assert '<a href="sub-02.html">sub-02</a>' in page and (out / "sub-03.html").is_file()


def test_train_options_reach_the_config(tmp_path):
    from contrareg_bids.cli.train_level import build_train_config
    from contrareg_bids.training.config import TrainConfig, sloppy_config

    (tmp_path / "bids").mkdir()
    base = [str(tmp_path / "bids"), str(tmp_path / "out"), "train"]

    def cfg(*extra):
        return build_train_config(RunConfig.from_args(parse_args([*base, *extra])))

    paper = cfg("--train-preset", "paper")
    assert paper.updated(seed=0, device="auto") == TrainConfig()  # the paper's defaults
    sloppy = cfg("--sloppy", "--n-gpus", "0", "--random-seed", "3")
    assert sloppy == sloppy_config(seed=3, device="cpu")
    c = cfg("--loss", "mi", "--train-steps", "7", "--ae-steps", "5", "--ch", "12", "--ts", "4",
            "--lambda-range", "0.1", "0.5", "--batch-size", "2", "--val-fraction", "0.2",
            "--lr", "1e-3")  # fmt: skip
    assert (c.loss, c.steps, c.autoencoder.steps, c.regnet.ch, c.regnet.ts) == ("mi", 7, 5, 12, 4)
    assert (c.lambda_range, c.batch_size, c.val_fraction, c.lr) == ((0.1, 0.5), 2, 0.2, 1e-3)


def test_preset_without_train_preset_follows_the_gpu(tmp_path, monkeypatch, caplog):
    """Regression: without a GPU the train level started the paper's preset (1e5 steps of a
    64-channel network, days on a CPU) without a word; it now takes the CPU recipe there,
    the paper's where it trains on a GPU, and logs which and what it costs."""
    import torch

    from contrareg_bids.cli.train_level import build_train_config, train_preset
    from contrareg_bids.training.config import TrainConfig, cpu_config

    (tmp_path / "bids").mkdir()
    base = [str(tmp_path / "bids"), str(tmp_path / "out"), "train"]

    def run_cfg(*extra):
        return RunConfig.from_args(parse_args([*base, *extra]))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train_preset(run_cfg()) == "cpu"
    assert build_train_config(run_cfg()).updated(seed=0, device="cpu") == cpu_config(
        seed=0, device="cpu"
    )
    assert train_preset(run_cfg("--train-preset", "paper")) == "paper"  # asked for: kept
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert train_preset(run_cfg()) == "paper"
    assert train_preset(run_cfg("--device", "cpu")) == "cpu"
    assert train_preset(run_cfg("--n-gpus", "0")) == "cpu"
    assert build_train_config(run_cfg()).updated(seed=0, device="auto") == TrainConfig()


def test_cpu_preset_is_the_benchmarked_recipe_and_options_override_it(tmp_path):
    """``--train-preset cpu`` starts from ``cpu_config()`` (500 steps, deformation
    augmentation, 48^3 autoencoder crops) whatever ``--sloppy`` says; options given still
    win; ``contrareg-train`` maps it the same way."""
    from contrareg_bids.cli import train as contrareg_train
    from contrareg_bids.cli.train_level import build_train_config
    from contrareg_bids.training.config import cpu_config

    (tmp_path / "bids").mkdir()
    base = [str(tmp_path / "bids"), str(tmp_path / "out"), "train", "--n-gpus", "0"]

    def cfg(*extra):
        return build_train_config(RunConfig.from_args(parse_args([*base, *extra])))

    preset = cfg("--train-preset", "cpu")
    assert preset == cpu_config(seed=0, device="cpu")
    assert (preset.steps, preset.deform_augment, preset.autoencoder.crop) == (500, 2.0, 48)
    assert cfg("--train-preset", "cpu", "--sloppy") == preset
    assert cfg("--train-preset", "cpu", "--train-steps", "900").steps == 900
    cli = contrareg_train.build_config(
        contrareg_train.get_parser().parse_args(
            ["--moving-list", "m", "--out", "o", "--train-preset", "cpu", "--device", "cpu"]
        )
    )
    assert cli == preset


@pytest.mark.parametrize(
    ("options", "voxel_mm", "expected"),
    [
        (["--train-preset", "cpu"], 0.86, 2.5),  # neonates: the preset's coarser grid
        (["--train-preset", "cpu"], 3.0, None),  # already coarser: the reference's own
        (["--train-preset", "cpu", "--model-spacing", "1.7"], 0.86, 1.7),
        (["--train-preset", "paper"], 0.86, None),  # at the reference's resolution
        (["--model-spacing", "1.7"], 0.86, 1.7),
    ],
)
def test_model_spacing_of_a_new_model(tmp_path, options, voxel_mm, expected):
    import nibabel as nib

    from contrareg_bids.cli.train_level import model_spacing

    (tmp_path / "bids").mkdir()
    image = tmp_path / "ref.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.diag([voxel_mm] * 3 + [1])),
             str(image))  # fmt: skip
    argv = [str(tmp_path / "bids"), str(tmp_path / "out"), "train", *options]
    assert model_spacing(RunConfig.from_args(parse_args(argv)), image) == expected


def test_both_training_clis_map_options_alike(tmp_path):
    """The same options give the same TrainConfig through ``contrareg-train`` and the
    train level: both read the one table ``TRAIN_OPTION_FIELDS``."""
    from contrareg_bids.cli import train as contrareg_train
    from contrareg_bids.cli.train_level import build_train_config

    (tmp_path / "bids").mkdir()
    options = ["--sloppy", "--random-seed", "3", "--device", "cpu", "--loss", "cr+mi",
               "--train-steps", "7", "--ae-steps", "5", "--ch", "12", "--ts", "4",
               "--lambda-range", "0.1", "0.5", "--batch-size", "2", "--val-fraction", "0.2",
               "--lr", "1e-3", "--deform-augment", "1.5"]  # fmt: skip
    bids_argv = [str(tmp_path / "bids"), str(tmp_path / "out"), "train", *options]
    level = build_train_config(RunConfig.from_args(parse_args(bids_argv)))
    cli = contrareg_train.build_config(
        contrareg_train.get_parser().parse_args(["--moving-list", "m", "--out", "o", *options])
    )
    assert level == cli
    assert (cli.steps, cli.regnet.ts, cli.deform_augment, cli.seed) == (7, 4, 1.5, 3)


def test_training_options_are_declared_once():
    """Both command lines' training options come from ``training.options`` (each option's
    flags, type and help once); every option that sets a TrainConfig field names one that
    exists, and every train-level option reaches the run's configuration."""
    from dataclasses import fields, is_dataclass

    from contrareg_bids.cli import parser as bids_parser
    from contrareg_bids.cli import train as contrareg_train
    from contrareg_bids.training.config import TrainConfig
    from contrareg_bids.training.options import (
        LEVEL,
        LEVEL_TRAIN_OPTIONS,
        TRAIN_OPTION_FIELDS,
        TRAIN_OPTION_SPECS,
        TRAINER,
    )

    for parser, level in ((bids_parser.get_parser(), LEVEL),
                          (contrareg_train.get_parser(), TRAINER)):  # fmt: skip
        actions = {a.dest: a for a in parser._actions}
        for spec in TRAIN_OPTION_SPECS:
            if level in spec.levels:
                action = actions[spec.dest]
                assert tuple(action.option_strings)[: len(spec.flags)] == spec.flags, spec.dest
                assert action.help == spec.kwargs.get("help"), spec.dest
    assert set(LEVEL_TRAIN_OPTIONS) >= {"train_steps", "model_name", "deform_augment"}
    for path in TRAIN_OPTION_FIELDS.values():
        kind = TrainConfig()
        for name in path.split("."):
            assert is_dataclass(kind) and name in {f.name for f in fields(kind)}, path
            kind = getattr(kind, name)
    for module, level in ((bids_parser, LEVEL), (contrareg_train, TRAINER)):
        src = Path(module.__file__).read_text()
        for spec in TRAIN_OPTION_SPECS:  # no second declaration of a training option
            if level in spec.levels:
                assert f'"{spec.flags[0]}"' not in src, (module.__name__, spec.flags[0])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--lambda-range", "0.6", "0.2"], "lambda_range must satisfy"),
        (["--loss", "ssd"], "loss must start with"),
        (["--train-steps", "0"], "--train-steps must be positive"),
    ],
)
def test_bad_train_options_are_2(tmp_path, caplog, options, message):
    bids = make_bids_dataset(tmp_path / "bids", {"01": {"T2w": np.ones((4, 4, 4))}})
    rc = main([str(bids), str(tmp_path / "out"), "train", "-w", str(tmp_path / "w"), *options])
    assert rc == exit_codes.USAGE
    assert message in caplog.text
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # a subprocess killed mid-training (about 1-2 min on 2 cores)
def test_killed_train_resumes_not_restarts(trained, tiny_templateflow):
    """``train`` killed (SIGKILL) after its first checkpoint, then the same command again: the
    second run resumes from that checkpoint (preprocessing reused from the work dir) and
    writes the bundle; the training log holds every step once."""
    import os
    import signal
    import subprocess
    import sys
    import time

    name = "killed"
    cmd = [sys.executable, "-m", "contrareg_bids.cli.run", str(trained["bids"]),
           str(trained["out"]), "train", "-w", str(trained["work"]), *TINY[:-6],
           "--loss", "ngf", "--train-steps", "150", "--val-fraction", "0",
           "--derivatives", f"labels={trained['labels']}", "--model-name", name]  # fmt: skip
    env = {**os.environ, "TEMPLATEFLOW_HOME": str(tiny_templateflow),
           "TEMPLATEFLOW_AUTOUPDATE": "0", "OMP_NUM_THREADS": "1"}  # fmt: skip
    ckpt = trained["work"] / "train" / name / "checkpoints" / "last.pt"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "train ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    bundle = trained["out"] / "models" / f"{name}.safetensors"
    assert not bundle.exists()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    found = re.search(r"resuming from \S+ at step (\d+)", res.stderr)
    assert found and int(found.group(1)) >= 100, res.stderr[-3000:]
    assert bundle.exists()
    log = trained["work"] / "train" / name / "train.csv"
    steps = [int(r.split(",")[0]) for r in log.read_text().splitlines()[1:]]
    assert steps == sorted(set(steps)) and steps[-1] == 150


def test_model_spacing_trains_on_a_coarser_grid_and_outputs_stay_native(
    tmp_path, dataset, tiny_templateflow
):
    """``--model-spacing 8`` on 4 mm data: the bundle's grid covers the reference's field of
    view at 8 mm (half the voxels per axis), and the participant level still writes the
    subject in reference space at the reference's own 4 mm grid."""
    import nibabel as nib

    from contrareg_bids.io.bundle import describe_bundle

    bids, _ = dataset
    out, work = tmp_path / "out", tmp_path / "work"
    rc = run(bids, out, work, "train", *TINY, "--model-spacing", "8", home=tiny_templateflow)
    assert rc == exit_codes.OK
    info = describe_bundle(out / "models" / f"{NAME}.safetensors")["metadata"]
    ref = nib.load(str(tiny_templateflow / f"tpl-{TPL}" / f"tpl-{TPL}_T1w.nii.gz"))
    assert tuple(info["grid"]["spacing"]) == (8.0, 8.0, 8.0)
    assert tuple(info["grid"]["shape"]) == tuple(-(-s * 4 // 8) for s in ref.shape)
    rc = run(bids, out, work, "participant", "--sloppy", "--nprocs", "1", "--reference", TPL,
             "--participant-label", "02", home=tiny_templateflow)  # fmt: skip
    assert rc == exit_codes.OK
    in_ref = next((out / "sub-02" / "anat").glob("*space-*_T2w.nii.gz"))
    img = nib.load(str(in_ref))
    assert img.shape == ref.shape and np.allclose(img.affine, ref.affine, atol=1e-4)
