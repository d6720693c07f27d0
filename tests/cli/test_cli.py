"""The command line of the BIDS-App: parser options, :class:`RunConfig` checks, exit codes of
runs that cannot start, the recorded configuration, the Nipype plugin settings."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from contrareg_bids.cli import exit_codes
from contrareg_bids.cli.execution import plugin_settings
from contrareg_bids.cli.parser import parse_args
from contrareg_bids.cli.run import main
from contrareg_bids.config import ConfigError, RunConfig
from contrareg_bids.settings import DEFAULT_SETTINGS
from tests.bids_factory import make_bids_dataset, make_volume


@pytest.fixture
def bids(tmp_path) -> Path:
    return make_bids_dataset(tmp_path / "bids", {"01": {"T1w": make_volume(), "age": 40}})


def args(*extra, bids="bids", out="out", level="participant"):
    return parse_args([str(bids), str(out), level, *map(str, extra)])


# ---------------------------------------------------------------------------------------------
# parser
# ---------------------------------------------------------------------------------------------
def test_defaults():
    a = args()
    assert (a.registration, a.reference, a.moving_modality, a.fixed_modality) == (
        "contrareg", "dhcpVol", "T2w", "T1w",
    )  # fmt: skip
    assert a.lam == 0.8 and a.fine_steps == 80 and a.random_seed == 0 and a.device == "auto"
    assert a.participant_label is None and a.derivatives == []
    assert a.mem is None and a.nprocs is None and not a.sloppy


def test_participant_label_with_or_without_prefix():
    assert args("--participant-label", "sub-01", "02", "sub-A3").participant_label == [
        "01", "02", "A3",
    ]  # fmt: skip
    assert args("--participant_label", "01").participant_label == ["01"]
    assert args("--session-label", "ses-1", "2").session_label == ["1", "2"]


@pytest.mark.parametrize("bad", ["sub-0_1", "01-a", "sub-", "ü"])
def test_participant_label_refused(bad, capsys):
    with pytest.raises(SystemExit) as exc:
        args("--participant-label", bad)
    assert exc.value.code == exit_codes.USAGE
    assert "is not a BIDS label" in capsys.readouterr().err


def test_derivatives_name_equals_path():
    a = args("--derivatives", "labels=/data/labels", "masks=rel/masks")
    assert a.derivatives == [("labels", Path("/data/labels")), ("masks", Path("rel/masks"))]
    assert args("--derivatives", "a=b=c").derivatives == [("a", Path("b=c"))]


@pytest.mark.parametrize("bad", ["=/data", "labels="])
def test_derivatives_refused(bad, capsys):
    with pytest.raises(SystemExit):
        args("--derivatives", bad)
    assert "--derivatives takes PATH or NAME=PATH" in capsys.readouterr().err


def test_derivatives_path_without_a_name(tmp_path):
    """``--derivatives PATH`` as fMRIPrep takes it: named by its folder; two folders of
    one name are both kept, in the order given."""
    from contrareg_bids.config import derivative_folders

    a = args("--derivatives", "/data/drawem/", "/other/drawem", "masks=/m")
    assert a.derivatives == [("drawem", Path("/data/drawem")), ("drawem", Path("/other/drawem")),
                             ("masks", Path("/m"))]  # fmt: skip
    assert derivative_folders(a.derivatives) == {
        "drawem": Path("/data/drawem"), "drawem2": Path("/other/drawem"), "masks": Path("/m"),
    }  # fmt: skip


@pytest.mark.parametrize(
    ("value", "gb"),
    [("8GB", 8.0), ("8gb", 8.0), ("16G", 16.0), ("8000MB", 8000 / 1024),
     ("512M", 0.5), (" 2.5 GB ", 2.5), ("1T", 1024.0)],
)  # fmt: skip
def test_mem_units(value, gb):
    assert args("--mem", value).mem == pytest.approx(gb)
    assert args("--mem-gb", value).mem == pytest.approx(gb)


def test_bare_mem_is_megabytes_as_in_fmriprep():
    """Regression: ``--mem 16000`` meant 16000 GB."""
    assert args("--mem", "16000").mem == pytest.approx(16000 / 1024)
    assert args("--mem-mb", "16000").mem == pytest.approx(16000 / 1024)
    assert args("--mem-gb", "16").mem == 16.0


@pytest.mark.parametrize("bad", ["lots", "8XB", "-1", "", "0"])
def test_mem_refused(bad, capsys):
    with pytest.raises(SystemExit):
        args("--mem", bad)
    assert "expected a memory size" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("bad", "message"), [("0", "must be >= 1"), ("-2", "must be >= 1"), ("1.5", "whole number")]
)
def test_refine_draws_refused(bad, message, capsys):
    assert args("--refine-draws", "4").refine_draws == 4
    with pytest.raises(SystemExit):
        args("--refine-draws", bad)
    err = capsys.readouterr().err
    assert "--refine-draws" in err and message in err


@pytest.mark.parametrize("value", ["0", "1", "1.0", "0.25", "1e-2"])
def test_lambda_in_range(value):
    assert args("--lambda", value).lam == pytest.approx(float(value))


@pytest.mark.parametrize(
    ("bad", "message"),
    [("1.5", "must be in [0, 1]"), ("-0.1", "must be in [0, 1]"), ("abc", "takes a number"),
     ("nan", "must be in [0, 1]")],
)  # fmt: skip
def test_lambda_refused(bad, message, capsys):
    with pytest.raises(SystemExit):
        args("--lambda", bad)
    assert message in capsys.readouterr().err


def test_other_choices(capsys):
    assert args("--registration", "ants").registration == "ants"
    assert args("--moving-modality", "T1w", "--fixed-modality", "T2w").moving_modality == "T1w"
    assert args("--nprocs", "3").nprocs == 3 == args("--n-cpus", "3").nprocs
    with pytest.raises(SystemExit):
        args("--registration", "syn")
    with pytest.raises(SystemExit):
        args("--moving-modality", "T1w")  # fixed is T1w too
    assert "must differ" in capsys.readouterr().err


def test_bids_filter_file(tmp_path, capsys):
    good = tmp_path / "filter.json"
    good.write_text(json.dumps({"t2w": {"acquisition": "fast"}}))
    assert args("--bids-filter-file", good).bids_filter_file == {"t2w": {"acquisition": "fast"}}
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(SystemExit):
        args("--bids-filter-file", bad)
    assert "must hold a JSON object" in capsys.readouterr().err


def test_version(capsys):
    from contrareg_bids import __version__

    with pytest.raises(SystemExit) as exc:
        parse_args(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# RunConfig
# ---------------------------------------------------------------------------------------------
def config(tmp_path, bids, *extra, out=None, work=None) -> RunConfig:
    out = tmp_path / "out" if out is None else out
    work = tmp_path / "work" if work is None else work
    return RunConfig.from_args(args(*extra, "-w", work, bids=bids, out=out))


def test_config_paths_absolute(tmp_path, bids, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = RunConfig.from_args(args(bids="bids", out="out"))
    assert cfg.bids_dir == bids and cfg.output_dir == tmp_path / "out"
    assert cfg.work_dir == tmp_path / "work"  # default: ./work
    assert cfg.bids_dir.is_absolute() and cfg.output_dir.is_absolute()


def test_output_dir_is_bids_dir_refused(tmp_path, bids):
    with pytest.raises(ConfigError, match="the output directory is the BIDS directory"):
        config(tmp_path, bids, out=bids)
    link = tmp_path / "link"
    link.symlink_to(bids)
    with pytest.raises(ConfigError, match="the output directory is the BIDS directory"):
        config(tmp_path, bids, out=link)
    config(tmp_path, bids, out=bids / "derivatives" / "contrareg-bids")  # the usual place


@pytest.mark.parametrize("where", ["", "work", "sub-01/work"])
def test_work_dir_inside_bids_refused(tmp_path, bids, where):
    with pytest.raises(ConfigError, match="is inside the BIDS directory"):
        config(tmp_path, bids, work=bids / where)


def test_missing_paths_refused(tmp_path, bids):
    with pytest.raises(ConfigError, match="does not exist"):
        config(tmp_path, tmp_path / "nope")
    with pytest.raises(ConfigError, match=r"--model .* does not exist"):
        config(tmp_path, bids, "--model", tmp_path / "m.safetensors")
    with pytest.raises(ConfigError, match=r"--derivatives labels=.*: not a directory"):
        config(tmp_path, bids, "--derivatives", f"labels={tmp_path / 'none'}")
    with pytest.raises(ConfigError, match=r"--use-plugin .* does not exist"):
        config(tmp_path, bids, "--use-plugin", tmp_path / "plugin.yml")


def test_config_round_trip(tmp_path, bids):
    (tmp_path / "labels").mkdir()
    cfg = config(tmp_path, bids, "--derivatives", f"labels={tmp_path / 'labels'}",
                 "--lambda", "0.3", "--mem", "4GB", "--participant-label", "sub-01")  # fmt: skip
    path = cfg.write(tmp_path / "x" / "config.json")
    data = json.loads(path.read_text())
    assert data == cfg.to_dict()
    assert data["derivatives"] == {"labels": str(tmp_path / "labels")}
    assert (data["registration"]["lam"], data["mem_gb"], data["participant_label"]) == (
        0.3, 4.0, ["01"],
    )  # fmt: skip
    assert data["run_uuid"] and data["version"]


# ---------------------------------------------------------------------------------------------
# main(): exit codes and the recorded configuration
# ---------------------------------------------------------------------------------------------
def test_main_usage_errors(tmp_path, bids, capsys):
    assert main([str(bids), str(bids), "participant"]) == exit_codes.USAGE
    assert "the output directory is the BIDS directory" in capsys.readouterr().err
    assert main([str(bids), str(tmp_path / "o"), "-w", str(bids / "w"), "participant"]) == 2
    # the group level before any participant: no metrics to gather (tests/reports/test_reports.py)
    assert main([str(bids), str(tmp_path / "o"), "group"]) == exit_codes.NO_FILES
    assert main([str(bids), str(tmp_path / "o"), "everything"]) == exit_codes.UNKNOWN_LEVEL
    assert not (tmp_path / "o").exists()
    assert not (bids / "w").exists()


def test_exit_codes_agree_with_the_docs(tmp_path, bids, capsys):
    """Regression: a missing BIDS folder exited 2 (documented: 16), and an output folder
    that cannot be created ended in a traceback."""
    assert main([str(tmp_path / "nope"), str(tmp_path / "o"), "participant"]) == 16
    assert "the BIDS directory" in capsys.readouterr().err
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = blocker / "out"
    assert main([str(bids), str(out), "participant"]) == exit_codes.EX_CANTCREAT
    err = capsys.readouterr().err
    assert f"cannot write to the output directory {out}" in err and "Traceback" not in err
    work = blocker / "work"
    assert main([str(bids), str(tmp_path / "o2"), "participant", "-w", str(work)]) == 73
    assert f"the work directory {work}" in capsys.readouterr().err
    usage = (Path(__file__).parents[2] / "docs" / "usage.md").read_text()
    for code in (16, 73):
        assert f"\n| {code} |" in usage


def test_config_written_to_work_dir_and_logs(tmp_path, bids):
    """The configuration is written before any subject runs: here the only subject has no
    T2w (the moving modality) and fails at once, exit code 1."""
    ref = tmp_path / "ref_T1w.nii.gz"
    import nibabel as nib

    nib.save(nib.Nifti1Image(make_volume(), np.eye(4)), str(ref))
    out, work = tmp_path / "out", tmp_path / "work"
    rc = main([str(bids), str(out), "participant", "-w", str(work), "--registration", "ants",
               "--reference", str(ref), "--random-seed", "5"])  # fmt: skip
    assert rc == exit_codes.PARTICIPANT_FAILED
    (in_work,) = work.glob("config-*.json")
    (in_logs,) = (out / "logs").glob("config-*.json")
    assert in_work.name == in_logs.name
    assert json.loads(in_work.read_text()) == json.loads(in_logs.read_text())
    cfg = json.loads(in_logs.read_text())
    assert cfg["random_seed"] == 5 and cfg["reference"] == str(ref)
    assert cfg["run_uuid"] in in_logs.name
    assert (out / "dataset_description.json").is_file()
    (error_file,) = (out / "sub-01" / "log").glob(f"{cfg['run_uuid']}/error-sub-01.txt")
    error = error_file.read_text()
    assert error.startswith("sub-01: no T2w image (the moving modality); found T1w")


# ---------------------------------------------------------------------------------------------
# Nipype plugin from the resources options
# ---------------------------------------------------------------------------------------------
def test_plugin_settings(tmp_path, bids):
    assert plugin_settings(config(tmp_path, bids, "--nprocs", "1")) == ("Linear", {})
    name, plugin_args = plugin_settings(config(tmp_path, bids, "--nprocs", "4", "--mem", "6GB",
                                       "--n-gpus", "1"))  # fmt: skip
    assert name == "MultiProc"
    assert plugin_args == {"n_procs": 4, "raise_insufficient": False, "memory_gb": 6.0,
                           "n_gpu_procs": 1}  # fmt: skip
    yml = tmp_path / "plugin.yml"
    yml.write_text("plugin: LegacyMultiProc\nplugin_args:\n  n_procs: 3\n")
    assert plugin_settings(config(tmp_path, bids, "--use-plugin", yml)) == (
        "LegacyMultiProc", {"n_procs": 3},
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# runs that cannot start: an unusable --reference, an unknown --session-label
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def empty_templateflow(tmp_path, monkeypatch) -> Path:
    """A ``TEMPLATEFLOW_HOME`` with one template (no cohorts) whose files are not fetched."""
    from contrareg_bids.io import templates

    home = tmp_path / "tf"
    (home / "tpl-Empty").mkdir(parents=True)
    (home / "tpl-Empty" / "template_description.json").write_text('{"Name": "Empty"}')
    (home / "tpl-Empty" / "tpl-Empty_T1w.nii.gz").write_bytes(b"")  # listed, not fetched
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))
    monkeypatch.setenv("TEMPLATEFLOW_AUTOUPDATE", "0")
    templates.reset_clients()
    yield home
    templates.reset_clients()


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("NoSuchTpl", r"template 'NoSuchTpl' is not in the TemplateFlow cache"),
        ("Empty", r"template 'Empty'.*not fetched"),
        ("sub-99", r"sub-99 is not a participant"),
        ("/no/such/ref_T1w.nii.gz", r"reference image not found"),
    ],
)
def test_unusable_reference_is_2_before_any_subject(
    tmp_path, empty_templateflow, caplog, reference, message
):
    """Two subjects, a reference none of them can use: one error, exit code 2, and no
    subject is started (no per-subject error files)."""
    bids = make_bids_dataset(
        tmp_path / "bids",
        {s: {"T1w": make_volume(), "T2w": make_volume(), "age": 40} for s in ("01", "02")},
    )
    out = tmp_path / "out"
    rc = main([str(bids), str(out), "participant", "-w", str(tmp_path / "work"),
               "--registration", "ants", "--reference", reference])  # fmt: skip
    assert rc == exit_codes.USAGE
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and reference in errors[0], errors
    assert re.search(message, errors[0], flags=re.DOTALL), errors[0]
    if reference[0].isupper():  # a template: the message says how to prefetch it
        assert "Prefetch it" in errors[0] and str(empty_templateflow) in errors[0]
    assert not list(out.glob("sub-*"))


def test_unknown_session_is_18(tmp_path, empty_templateflow, caplog):
    sessions = {"1": {"T2w": make_volume(), "age": 40}, "2": {"T2w": make_volume(), "age": 41}}
    bids = make_bids_dataset(tmp_path / "bids", {"01": sessions, "02": {"1": sessions["1"]}},
                             sessions=True, age_source="sessions")  # fmt: skip
    out = tmp_path / "out"
    rc = main([str(bids), str(out), "participant", "-w", str(tmp_path / "work"),
               "--registration", "ants", "--session-label", "3", "ses-1"])  # fmt: skip
    assert rc == exit_codes.NO_FILES
    assert "session label(s) not found: 3" in caplog.text
    assert "Sessions of the selected participants: 1, 2" in caplog.text
    assert not list(out.glob("sub-*"))


def test_select_sessions(tmp_path):
    """A subject gets the asked-for sessions it has; one that has none of them is left out."""
    from contrareg_bids.io.bids import NoMatchError, make_layout, select_sessions

    sessions = {"1": {"T2w": make_volume()}, "2": {"T2w": make_volume()}}
    bids = make_bids_dataset(tmp_path / "bids", {"01": sessions, "02": {"1": sessions["1"]}},
                             sessions=True, age_source=None)  # fmt: skip
    layout = make_layout(bids)
    assert select_sessions(layout, ["01", "02"]) == {"01": ["1", "2"], "02": ["1"]}
    assert select_sessions(layout, ["01", "02"], ["ses-2"]) == {"01": ["2"], "02": []}
    with pytest.raises(NoMatchError, match="not found: 2"):
        select_sessions(layout, ["02"], ["2"])


def test_gpu_out_of_memory_exits_75_so_a_scheduler_requeues(tmp_path, monkeypatch):
    """A CUDA out-of-memory error is not the data's fault: when it is every failure, exit 75
    (EX_TEMPFAIL, what workflows/slurm_participant.sh requeues on); any other failure among
    them keeps exit 1. A CPU machine cannot run out of GPU memory, so the subject's run
    raises torch's own OutOfMemoryError here."""
    import nibabel as nib
    import torch

    from contrareg_bids.cli import participant

    bids = make_bids_dataset(
        tmp_path / "bids",
        {s: {"T1w": make_volume(), "T2w": make_volume(), "age": 40} for s in ("01", "02")},
    )
    ref = tmp_path / "ref_T1w.nii.gz"
    nib.save(nib.Nifti1Image(make_volume(), np.eye(4)), str(ref))
    causes = {}

    def run_subject(cfg, layout, subject, session, model):
        raise causes[subject]

    monkeypatch.setattr(participant, "run_subject", run_subject)

    def run(out):
        return main(
            [
                str(bids),
                str(tmp_path / out),
                "participant",
                "--registration",
                "ants",
                "--reference",
                str(ref),
                "-w",
                str(tmp_path / f"w-{out}"),
                "--nprocs",
                "1",
            ]
        )  # fmt: skip (one by one: run_subject is patched here)

    oom = "CUDA out of memory. Tried to allocate 2.00 GiB"
    causes.update({"01": torch.OutOfMemoryError(oom), "02": torch.OutOfMemoryError(oom)})
    assert run("all-oom") == exit_codes.EX_TEMPFAIL
    (error_file,) = (tmp_path / "all-oom/sub-01/log").glob("*/error-sub-01.txt")
    assert oom in error_file.read_text()
    causes["02"] = ValueError("sub-02: T2w is empty")
    assert run("mixed") == exit_codes.PARTICIPANT_FAILED


def test_gpu_out_of_memory_is_recognised_through_a_nipype_crash_file():
    from contrareg_bids.cli.execution import is_gpu_out_of_memory

    node_error = RuntimeError("Workflow did not execute cleanly. Check log for details")
    crash_line = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.50 GiB"
    assert is_gpu_out_of_memory(node_error, crash_line)
    assert not is_gpu_out_of_memory(node_error, "ValueError: the T2w is empty")
    assert not is_gpu_out_of_memory(MemoryError("Unable to allocate 3.2 GiB for an array"))


# ---------------------------------------------------------------------------------------------
# BIDS validation
# ---------------------------------------------------------------------------------------------
def test_a_badly_named_file_is_named_not_silently_dropped(tmp_path, caplog):
    """Regression: sub-02's only image had a non-BIDS name; pybids dropped it without a
    word and ``--participant-label 02`` said "not found". The validator names the file
    (exit 16); without validation the log says which files were left out."""
    import logging

    from contrareg_bids.io.validation import run_bids_validator

    subjects = {"01": {"T2w": make_volume(), "age": 40}, "02": {"T2w": make_volume(), "age": 41}}
    bids = make_bids_dataset(tmp_path / "bids", subjects)
    anat = bids / "sub-02" / "anat"
    (anat / "sub-02_T2w.nii.gz").rename(anat / "sub02_T2.nii.gz")
    issues = run_bids_validator(bids)
    assert [(i.code, i.location) for i in issues] == [
        ("NOT_INCLUDED", "/sub-02/anat/sub02_T2.nii.gz")
    ]
    assert run_bids_validator(bids, ["01"]) == []  # an unselected subject's problem
    common = ["--registration", "ants", "--reference", str(bids / "sub-01/anat/sub-01_T2w.nii.gz"),
              "-w", str(tmp_path / "w")]  # fmt: skip
    with caplog.at_level(logging.INFO):
        rc = main([str(bids), str(tmp_path / "o"), "participant", *common])
    assert rc == exit_codes.BIDS_VALIDATION
    assert "NOT_INCLUDED /sub-02/anat/sub02_T2.nii.gz" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        rc = main([str(bids), str(tmp_path / "o"), "participant", *common,
                   "--skip-bids-validation", "--participant-label", "02"])  # fmt: skip
    assert rc == exit_codes.PARTICIPANT_FAILED  # the subject fails, its cause in the log
    assert "not BIDS names and are ignored: sub-02/anat/sub02_T2.nii.gz" in caplog.text
    from contrareg_bids.io.validation import non_bids_images

    assert non_bids_images(bids, ["01", "02"]) == [anat / "sub02_T2.nii.gz"]


def test_one_line_per_log_event(capsys):
    """Regression: every Nipype message was printed twice (its own handler and the root
    one), and bidsschematools leaked INFO lines."""
    import logging

    import nipype  # noqa: F401  (installs Nipype's own stream handler)

    from contrareg_bids.cli.logs import setup_logging

    try:
        setup_logging(verbose=1)
        logging.getLogger("nipype.workflow").info("node-message")
        logging.getLogger("bidsschematools").info("No schema path specified")
        logging.getLogger("contrareg_bids.participant").info("sub-01: finished")
        captured = capsys.readouterr()
        text = captured.out + captured.err
        assert text.count("node-message") == 1
        assert "No schema path" not in text and "sub-01: finished" in text
        setup_logging()  # the default: Nipype's node-by-node INFO lines are hidden
        logging.getLogger("nipype.workflow").info("hidden-node-message")
        setup_logging(quiet=1)
        logging.getLogger("contrareg_bids.participant").info("hidden-progress")
        captured = capsys.readouterr()
        assert "hidden" not in captured.out + captured.err
    finally:
        root = logging.getLogger()
        for h in [h for h in root.handlers if getattr(h, "contrareg", False)]:
            root.removeHandler(h)


def test_subjects_run_concurrently_within_nprocs(tmp_path, caplog):
    """--nprocs 2 with one thread per node runs two subject-sessions at once (in worker
    processes), each failure recorded for its own subject only, with a progress line."""
    import logging

    from contrareg_bids.cli.participant import concurrent_subjects

    bids = make_bids_dataset(
        tmp_path / "bids",
        {"01": {"T1w": make_volume(), "age": 40},  # no T2w: fails when its workflow is built
         "02": {"T1w": make_volume(), "T2w": make_volume(seed=1), "age": 40},
         "03": {"T1w": make_volume(), "T2w": make_volume(seed=2), "age": 40}},
    )  # fmt: skip
    ref = tmp_path / "ref_T1w.nii.gz"
    brain = make_volume()
    nib.save(nib.Nifti1Image(np.where(brain > 50, brain, 0), np.eye(4)), str(ref))
    cfg = config(tmp_path, bids, "--nprocs", "2", "--omp-nthreads", "1")
    assert concurrent_subjects(cfg, 3) == 2 and concurrent_subjects(cfg, 1) == 1
    assert concurrent_subjects(config(tmp_path, bids, "--nprocs", "4", "--omp-nthreads", "2"),
                               9) == 2  # fmt: skip
    with caplog.at_level(logging.INFO):
        rc = main([str(bids), str(tmp_path / "o"), "participant", "--registration", "ants",
                   "--reference", str(ref), "-w", str(tmp_path / "w"), "--sloppy",
                   "--nprocs", "2", "--omp-nthreads", "1", "--skip-bids-validation"])  # fmt: skip
    assert rc == exit_codes.PARTICIPANT_FAILED
    assert "3 subject-sessions, 2 at a time" in caplog.text
    assert "sub-01: failed (1/3 done, 1 failed)" in caplog.text
    for sub in ("02", "03"):
        assert re.search(rf"sub-{sub}: finished in \d+ s \([23]/3 done, 1 failed\)", caplog.text)
        assert (tmp_path / "o" / f"sub-{sub}" / "anat" /
                f"sub-{sub}_desc-registration_metrics.tsv").is_file()  # fmt: skip
    (error,) = (tmp_path / "o" / "sub-01" / "log").glob("*/error-sub-01.txt")
    assert "no T2w image" in error.read_text()


def test_a_mistyped_participant_label_is_refused_before_the_heavy_imports(tmp_path, bids):
    """Regression: ~15 s passed (TemplateFlow and niworkflows at import, the validator,
    pybids' index, torch for the seeds) before a mistyped label was refused; now ~0.6 s.
    scipy.ndimage too was imported at startup (a constant of the HD95 code)."""
    import subprocess
    import sys

    code = (
        "import sys; from contrareg_bids.cli.run import main; "
        f"rc = main([{str(bids)!r}, {str(tmp_path / 'o')!r}, 'participant', "
        f"'--participant-label', '99', '-w', {str(tmp_path / 'w')!r}]); "
        "print(rc, 'niworkflows' in sys.modules, 'templateflow' in sys.modules, "
        "'bids.layout' in sys.modules, 'torch' in sys.modules, 'scipy.ndimage' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)  # fmt: skip
    assert out.stdout.split() == ["18", "False", "False", "False", "False", "False"], out.stderr
    assert "participant label(s) not found: 99" in out.stderr


# ---------------------------------------------------------------------------------------------
# what NiPreps users expect
# ---------------------------------------------------------------------------------------------
def test_help_shows_each_default_once(capsys):
    """Regression: ``--max-folding`` printed two defaults and many options printed
    "(default: None)"."""
    from contrareg_bids.cli.parser import get_parser

    text = get_parser().format_help()
    assert "(default: None)" not in text and "default: []" not in text
    for block in re.split(r"\n  (?=-)", text):
        option = block.split("\n\n")[0]  # not the next group's title
        assert option.lower().count("default") <= 1, option
    assert "default: 0.5" in text and "(default: dhcpVol)" in text
    assert "participant level runs the network on the CPU unless --n-gpus" in " ".join(
        text.split()
    )


def test_nipreps_option_names(tmp_path, bids):
    a = args("--session-id", "ses-1", "--nthreads", "3", "--notrack", "--seed", "4",
             "--mem-mb", "2048", "--bids-database-dir", tmp_path / "db")  # fmt: skip
    assert (a.session_label, a.nprocs, a.random_seed, a.mem) == (["1"], 3, 4, 2.0)
    cfg = config(tmp_path, bids, "--bids-database-dir", tmp_path / "db")
    assert cfg.bids_database_dir == tmp_path / "db"


def test_config_file_fills_in_what_the_command_line_does_not_give(tmp_path, bids):
    from contrareg_bids.cli.parser import explicit_options
    from contrareg_bids.config import apply_config_file

    first = config(tmp_path, bids, "--lambda", "0.3", "--refine-steps", "5", "--mem", "4GB",
                   "--refine-draws", "4",
                   "--train-steps", "70", "--derivatives", f"labels={bids}")  # fmt: skip
    saved = first.write(tmp_path / "logs" / "config-x.json")
    assert RunConfig.from_dict(json.loads(saved.read_text())).to_dict() == first.to_dict()
    argv = [str(bids), str(tmp_path / "out2"), "participant", "--config-file", str(saved),
            "--refine-steps", "9"]  # fmt: skip
    cfg = apply_config_file(RunConfig.from_args(parse_args(argv)), saved, explicit_options(argv))
    reg = cfg.registration
    assert (reg.lam, reg.refine.steps, reg.refine.draws, cfg.mem_gb) == (0.3, 9, 4, 4.0)
    assert cfg.train == {"train_steps": 70} and cfg.derivatives == {"labels": bids}
    assert cfg.output_dir == tmp_path / "out2" and cfg.run_uuid != first.run_uuid
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="cannot be read as a run configuration"):
        apply_config_file(cfg, tmp_path / "bad.json", set())
    edited = json.loads(saved.read_text())
    edited["registration"]["refine"]["draws"] = 0
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    with pytest.raises(ConfigError, match="refine draws must be >= 1, got 0"):
        apply_config_file(cfg, tmp_path / "edited.json", set())


def test_config_file_yields_to_a_filter_file_given_again(tmp_path, bids):
    """Regression: ``--bids-filter-file`` given with ``--config-file`` was taken from the
    saved configuration (its field and its option have different names)."""
    from contrareg_bids.cli.parser import explicit_options
    from contrareg_bids.config import apply_config_file

    for name, suffix in (("a.json", "T2w"), ("b.json", "T1w")):
        (tmp_path / name).write_text(json.dumps({"t2w": {"suffix": suffix}}))
    saved = config(tmp_path, bids, "--bids-filter-file", str(tmp_path / "a.json")).write(
        tmp_path / "saved.json"
    )
    argv = [str(bids), str(tmp_path / "out"), "participant", "--config-file", str(saved),
            "--bids-filter-file", str(tmp_path / "b.json")]  # fmt: skip
    cfg = apply_config_file(RunConfig.from_args(parse_args(argv)), saved, explicit_options(argv))
    assert cfg.bids_filters == {"t2w": {"suffix": "T1w"}}


def test_config_written_before_the_settings_object_still_reads(tmp_path, bids):
    """A configuration of an earlier version (flat ``lam``, ``refine_steps``, ...,
    ``registration`` the method's name) is read into the settings object, not refused."""
    old = config(tmp_path, bids).to_dict()
    old.pop("registration")
    old.update(registration="contrareg", lam=0.3, max_folding=0.5, refine_steps=7,
               refine_draws=2, fine_steps=0, device="cpu", model=None, random_seed=4)  # fmt: skip
    reg = RunConfig.from_dict(old).registration
    assert (reg.method, reg.lam, reg.refine.steps, reg.refine.draws, reg.fine.steps) == (
        "contrareg", 0.3, 7, 2, 0,
    )  # fmt: skip
    assert (reg.device, reg.refine.seed) == ("cpu", 4)


def _same(a, b) -> bool:
    """Equal and of the same types all the way down (``1 == 1.0``, ``[1] != (1,)`` aside)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.mark.parametrize("level", ["participant", "train", "group"])
def test_run_config_loads_what_it_saves(tmp_path, bids, level):
    """``from_dict(to_dict())``, directly and through the JSON file a run writes, gives every
    field back with its type: Paths, the train options, lambda "auto", the filters."""
    from dataclasses import fields

    (tmp_path / "labels").mkdir()
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "plugin.yml").write_text("plugin: Linear\n")
    (tmp_path / "filter.json").write_text('{"t1w": {"acquisition": null, "run": [1, 2]}}')
    extra = {
        "participant": ["--participant-label", "01", "--session-label", "1", "--lambda",
                        "auto", "--max-folding", "1", "--model", tmp_path / "model.safetensors",
                        "--derivatives", f"labels={tmp_path / 'labels'}", "--bids-filter-file",
                        tmp_path / "filter.json", "--use-plugin", tmp_path / "plugin.yml",
                        "--bids-database-dir", tmp_path / "db", "--pma", "40", "--mem", "4GB",
                        "--refine-steps", "3", "--n-gpus", "0", "--labels-desc", "drawem"],
        "train": ["--loss", "mcr+mi", "--train-steps", "4", "--ae-steps", "2", "--ch", "8",
                  "--lambda-range", "0", "1", "--model-spacing", "2", "--stop-after", "1",
                  "--model-name", "m", "--deform-augment", "1", "--sloppy", "--lambda", "1"],
        "group": ["--age-months", "2", "--nprocs", "2", "--omp-nthreads", "1"],
    }[level]  # fmt: skip
    cfg = RunConfig.from_args(
        parse_args([str(bids), str(tmp_path / "out"), level, *map(str, extra)])
    )
    saved = json.loads(cfg.write(tmp_path / "config.json").read_text())
    for back in (RunConfig.from_dict(cfg.to_dict()), RunConfig.from_dict(saved)):
        for f in fields(RunConfig):
            mine, theirs = getattr(cfg, f.name), getattr(back, f.name)
            assert _same(mine, theirs), (f.name, mine, theirs)
    assert cfg.train if level == "train" else not cfg.train


def test_saved_run_config_with_a_relative_plugin_loads_elsewhere(tmp_path, bids, monkeypatch):
    """``--use-plugin`` given relative is saved absolute (like every other path), so
    ``--config-file`` run from another folder still finds the plugin file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plugin.yml").write_text("plugin: Linear\n")
    cfg = config(tmp_path, bids, "--use-plugin", "plugin.yml")
    saved = cfg.write(tmp_path / "config.json")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    back = RunConfig.from_dict(json.loads(saved.read_text()))
    assert back.use_plugin == tmp_path / "plugin.yml"
    back.check()


def test_boilerplate_only_says_where_and_names_the_stages_that_run(tmp_path, bids, capsys):
    out = tmp_path / "out"
    rc = main([str(bids), str(out), "participant", "--boilerplate-only", "--refine-steps", "30"])
    assert rc == exit_codes.OK
    citation = out / "logs" / "CITATION.md"
    printed = capsys.readouterr().out
    assert f"methods text written to {citation}" in printed
    bib = (out / "logs" / "CITATION.bib").read_text()  # every reference, as BibTeX
    assert f"as BibTeX to {out / 'logs' / 'CITATION.bib'}" in printed
    from contrareg_bids.reports.boilerplate import CITATIONS, template_references

    cited = len(CITATIONS) + len(template_references("dhcpVol"))  # the TemplateFlow cache's
    assert bib.count("\n@") + bib.startswith("@") == cited and "dey2022contrareg" in bib
    text = citation.read_text()
    assert "lambda = 0.8" in text and "for 30 steps with the model's own objective" in text
    steps = DEFAULT_SETTINGS.fine.steps
    assert f"for {steps} steps at the reference's resolution with MIND-SSC" in text
    assert "Heinrich MP" in text
    main([str(bids), str(out), "participant", "--boilerplate-only", "--fine-steps", "0"])
    text = citation.read_text()
    assert "MIND-SSC" not in text and "model's own objective" not in text


def test_boilerplate_cites_the_template_and_says_how_the_brain_mask_is_made(
    tmp_path, bids, tiny_templateflow, monkeypatch
):
    """A template reference is cited with its own publications (TemplateFlow's
    ``ReferencesAndLinks``), in the text, the references and the BibTeX; the text says how
    the brain mask is obtained (``--skull-strip``)."""
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tiny_templateflow))
    monkeypatch.setenv("TEMPLATEFLOW_AUTOUPDATE", "0")
    out = tmp_path / "out"
    doi = "https://doi.org/10.1016/j.neuroimage.2010.07.033"
    for mode, words in (
        ("auto", "Where a scan included skull and scalp, the brain was extracted"),
        ("force", "The brain was extracted from the scan, which included skull and scalp"),
        ("skip", "its brain mask is the reference's mask carried through the affine"),
    ):
        rc = main([str(bids), str(out), "participant", "--boilerplate-only",
                   "--reference", "ICBMTest", "--skull-strip", mode])  # fmt: skip
        assert rc == exit_codes.OK
        text = (out / "logs" / "CITATION.md").read_text()
        assert words in text, mode
        assert f"(the ICBM 2009c at 4 mm (tests) template; {doi})" in text
        assert text.split("## References")[1].count(doi) == 1
        assert "@misc{icbmtest1" in (out / "logs" / "CITATION.bib").read_text()


def test_boilerplate_only_and_write_graph(tmp_path, bids):
    out = tmp_path / "out"
    rc = main([str(bids), str(out), "participant", "--boilerplate-only", "--registration",
               "ants", "-w", str(tmp_path / "w")])  # fmt: skip
    assert rc == exit_codes.OK
    text = (out / "logs" / "CITATION.md").read_text()
    assert "ANTs SyN" in text and "## References" in text and not list(out.glob("sub-*"))
    from nipype.interfaces.utility import IdentityInterface
    from nipype.pipeline import engine as pe

    from contrareg_bids.cli.execution import write_workflow_graph

    wf = pe.Workflow(name="g_wf", base_dir=str(tmp_path / "w"))
    wf.add_nodes([pe.Node(IdentityInterface(fields=["a"]), name="n")])
    write_workflow_graph(wf)
    assert list((tmp_path / "w" / "g_wf").glob("graph*.dot"))


def test_derivatives_inherit_license_and_hide_non_bids_outputs(tmp_path, bids):
    from contrareg_bids.cli.participant import write_dataset_description

    src = json.loads((bids / "dataset_description.json").read_text())
    src.update(License="CC-BY-4.0", HowToAcknowledge="Cite the dataset paper.")
    (bids / "dataset_description.json").write_text(json.dumps(src))
    cfg = config(tmp_path, bids)
    desc = json.loads(write_dataset_description(cfg).read_text())
    (generated,) = desc["GeneratedBy"]
    assert "CodeURL" not in generated  # none rather than a page that does not exist
    reg = cfg.registration
    assert generated["Description"].startswith(f"ContraReg registration at lambda {reg.lam}, ")
    assert f"{reg.fine.steps} fine-stage steps" in generated["Description"]
    assert desc["License"] == "CC-BY-4.0"
    assert desc["HowToAcknowledge"] == "Cite the dataset paper."
    ignore = (cfg.output_dir / ".bidsignore").read_text().split()
    assert {"*.html", "figures", "models", "logs", "sub-*/log", "*_xfm.h5"} <= set(ignore)


def test_the_same_option_names_across_the_command_lines():
    """--random-seed/--seed, --train-steps/--steps, --amp/--no-amp, -q/--quiet in every CLI."""
    from contrareg_bids.cli import evaluate as ev
    from contrareg_bids.cli import train as tr

    io = ["--moving-list", "m.tsv", "--out", "o"]
    t = tr.get_parser().parse_args([*io, "--train-steps", "7", "--random-seed", "3", "--no-amp",
                                    "-q"])  # fmt: skip
    assert (t.train_steps, t.seed, t.amp, t.quiet) == (7, 3, False, True)
    assert tr.get_parser().parse_args([*io, "--steps", "7", "--seed", "3"]).amp is None
    e = ev.get_parser().parse_args(["--pairs", "p.tsv", "--out", "o", "--random-seed", "2",
                                    "--amp", "-q"])  # fmt: skip
    assert (e.seed, e.amp, e.quiet) == (2, True, True)
    b = args("--seed", "5", "-q")
    assert (b.random_seed, b.quiet) == (5, 1)


@pytest.mark.parametrize(
    "argv",
    [
        ["--participant-label", "01", "02", "/d/bids", "/d/out", "participant", "-w", "/d/w"],
        ["-w", "/d/w", "/d/bids", "/d/out", "participant", "--participant-label", "01", "02"],
        ["/d/bids", "/d/out", "participant", "--participant-label", "01", "02", "-w", "/d/w"],
    ],
)
def test_options_anywhere(argv):
    """Regression: options before the positionals took them as values ("'/d/bids' is not
    a BIDS label"); fMRIPrep users write them in either place."""
    from contrareg_bids.cli.parser import explicit_options, parse_args

    args = parse_args(argv)
    assert (str(args.bids_dir), str(args.output_dir), args.analysis_level) == (
        "/d/bids",
        "/d/out",
        "participant",
    )
    assert args.participant_label == ["01", "02"] and str(args.work_dir) == "/d/w"
    assert {"participant_label", "work_dir"} <= explicit_options(argv)
