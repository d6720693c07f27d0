"""Smoke tests of the benchmark scripts (``benchmarks/``): each kept script's code path at a
tiny size, on simulated data.

The scripts are imported by name, as they import each other (pytest puts ``benchmarks/`` on
``sys.path``: ``pythonpath`` in pyproject.toml). The atlas scripts run on a fake
``tpl-Serag2012`` of four "cohorts" made from the 4 mm ICBM base (``icbm_small``) with the
atlas's layout and tissue labels; the real atlas and the real neonates are used only by the
tests marked ``data`` (skipped when absent). What needs the app end to end (a train level
and participant runs in child processes) is marked ``slow``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import re
from pathlib import Path

import bench_accuracy_atlas
import bench_cpu_recipe
import bench_gpu_training
import bench_participant_dataset
import bench_participant_methods
import bench_real_pairs
import bench_speed
import bench_sweep_atlas
import bench_train_atlas as bta
import benchlib
import nibabel as nib
import numpy as np
import pytest

BENCHMARKS = Path(benchlib.__file__).resolve().parent
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("bench_*.py"))
#: the fake atlas's cohorts: 29 is the affine reference, 30 and 31 are held out, the four
#: others train (the package's split keeps one for validation)
COHORTS = [28, 29, 30, 31, 32, 33]
#: the cohorts the shared work folder aligns (the others only where a test trains)
ALIGNED = [29, 30, 31]
REAL_BIDS = Path("/tmp/alberts-dev/alberts-bids")


def run_main(main, argv) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue()


# --------------------------------------------------------------------------- the scripts


def test_every_script_is_imported_here_and_none_edits_sys_path():
    imported = {m.__name__ + ".py" for m in (
        bench_accuracy_atlas, bench_cpu_recipe, bench_gpu_training, bench_participant_dataset,
        bench_participant_methods, bench_real_pairs, bench_speed, bench_sweep_atlas, bta,
    )}  # fmt: skip
    assert imported == set(SCRIPTS), "a script without a smoke test (or a stale one)"
    for path in BENCHMARKS.glob("*.py"):
        assert not re.search(r"sys\.path\s*(\.\w+\(|\[|\+?=)", path.read_text()), path.name


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_runs_as_a_script_from_another_folder(script, tmp_path):
    """``python benchmarks/<name>.py --help`` from any folder: the sibling imports resolve
    without the tests' ``pythonpath``."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--help"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: ")


# --------------------------------------------------------------------------- benchlib


def test_command_line_and_registration_options(monkeypatch):
    monkeypatch.setenv("TEMPLATEFLOW_HOME", "/a b")
    line = benchlib.command_line("x.py", ["--n", "1 2"], env=("TEMPLATEFLOW_HOME", "UNSET_X"))
    assert line == "TEMPLATEFLOW_HOME='/a b' python benchmarks/x.py --n '1 2'"
    assert benchlib.registration_options() == []
    assert benchlib.registration_options(lam=0.8, refine_steps=0, fine_steps=80) == [
        "--lambda", "0.8", "--refine-steps", "0", "--fine-steps", "80",
    ]  # fmt: skip
    assert benchlib.registration_options(lam="auto", refine_draws=4) == [
        "--lambda", "auto", "--refine-draws", "4",
    ]  # fmt: skip


def test_write_docs_replaces_only_its_section(tmp_path):
    doc = tmp_path / "b.md"
    doc.write_text("# B\n\n## One\n\nold\n\n## Two\n\nkept\n")
    benchlib.write_docs(doc, "## One", "## One\n\nnew")
    assert doc.read_text() == "# B\n\n## One\n\nnew\n\n## Two\n\nkept\n"
    benchlib.write_docs(doc, "## Three", "## Three\n\nadded\n")
    assert doc.read_text().endswith("## Two\n\nkept\n\n## Three\n\nadded\n")
    assert benchlib.fmt_table(["a", "b"], [["1", "2"]]) == "| a | b |\n|---|---|\n| 1 | 2 |"


def test_register_routes_the_refinement_settings(icbm_small):
    """The helper every Python registration call of the scripts goes through: lambda, and
    the refinement's settings by name, reach the package."""
    import torch

    from contrareg_bids.nn.model import ContraRegNet

    torch.manual_seed(0)
    net = ContraRegNet(ch=4, depth=2)
    mov = icbm_small["t2w"][:16, :16, :16]
    fix = icbm_small["t1w"][:16, :16, :16]
    plain = benchlib.register(net, mov, fix, lam=0.5)
    assert plain.forward_disp.shape == (3, 16, 16, 16)
    with pytest.raises(TypeError):  # a misspelt setting is refused, not ignored
        benchlib.register(net, mov, fix, lam=0.5, refine={"step": 1})


# --------------------------------------------------------------------------- a fake atlas


def _tissues(labels: np.ndarray) -> np.ndarray:
    """CerebrA labels -> the atlas's tissue classes 1-9 (0 outside)."""
    return np.where(labels > 0, labels % 9 + 1, 0).astype(np.int16)


@pytest.fixture(scope="module")
def fake_atlas(tmp_path_factory, icbm_small) -> Path:
    """A TEMPLATEFLOW_HOME with ``tpl-Serag2012`` cohorts 28-33, each the 4 mm ICBM base
    under its own random warp (:func:`contrareg_bids.simulate.simulate_subject`)."""
    from contrareg_bids.simulate import simulate_subject

    home = tmp_path_factory.mktemp("atlas")
    for c in COHORTS:
        s = simulate_subject(icbm_small, np.random.default_rng(c), amplitude=1.5)
        files = {
            "T1w": (s["t1w"] * 1000, np.float32),
            "T2w": (s["t2w"] * 800, np.float32),
            "desc-brain_mask": (s["mask"], np.uint8),
            "desc-tissues_dseg": (_tissues(s["labels"]), np.int16),
        }
        for suffix, (arr, dtype) in files.items():
            path = bta.atlas_file(home, c, suffix)
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(arr.astype(dtype), icbm_small["affine"]), path)
    return home


@pytest.fixture(scope="module")
def untrained_bundle(tmp_path_factory) -> Path:
    """An untrained MI bundle (ch 4, depth 2) whose network still moves voxels: the scripts'
    inference and refinement code paths, without the cost of training one."""
    import torch

    from contrareg_bids.io.bundle import BundleMetadata, GridSpec, ModelBundle, save_bundle
    from contrareg_bids.nn.autoencoder import Autoencoder
    from contrareg_bids.nn.model import ContraRegNet
    from contrareg_bids.processing.normalize import normalization_description

    torch.manual_seed(0)
    regnet = ContraRegNet(ch=4, depth=2)
    with torch.no_grad():
        regnet.flow.weight.normal_(0.0, 5.0)
    blocks = ((4, 0), (8, -1), (8, -1), (4, 1), (4, 1))
    aes = {m: Autoencoder(1, blocks, 3) for m in ("T2w", "T1w")}
    md = BundleMetadata.for_models(
        regnet, aes, grid=GridSpec((24, 24, 24), (8.0, 8.0, 8.0), np.diag([8.0, 8.0, 8.0, 1])),
        modalities={"moving": "T2w", "fixed": "T1w"}, normalization=normalization_description(),
        loss="mi",
    )  # fmt: skip
    path = tmp_path_factory.mktemp("bundle") / "mi.safetensors"
    save_bundle(path, ModelBundle(regnet=regnet, autoencoders=aes, metadata=md))
    return path


@pytest.fixture
def few_cohorts(monkeypatch):
    """The scripts' cohort list cut to the fake atlas's."""
    monkeypatch.setattr(bta, "COHORTS", COHORTS)
    monkeypatch.setattr(bench_cpu_recipe, "COHORTS", COHORTS)


@pytest.fixture
def aligned_cohorts(monkeypatch):
    """The scripts' cohort list cut to those the shared work folder holds already."""
    monkeypatch.setattr(bta, "COHORTS", ALIGNED)


@pytest.fixture(scope="module")
def atlas_work(fake_atlas, tmp_path_factory) -> Path:
    """bench_train_atlas's cached stages 1-2 at factor 2 (24^3 voxels of 8 mm): the
    package's normalisation and affine step, as every atlas script reads them."""
    work = tmp_path_factory.mktemp("atlas-work")
    pre = {c: bta.preprocess_cohort(fake_atlas, c, 2, work / "preproc_f2") for c in ALIGNED}
    bta.affine_align(pre, 29, "T2w", work / "affine_f2_ref29T2w")
    return work


def test_train_atlas_stages_use_the_package_recipe(atlas_work):
    """Preprocessed: on a multiple of 8, intensities in [0, 1] inside the mask and 0
    outside, tissue labels kept; aligned: every cohort on the reference's grid, the
    affine-only Dice of the held-out pair above what the raw grid gives."""
    from contrareg_bids.metrics import mean_dice

    pre = bta.load_volumes(
        {k: atlas_work / "preproc_f2" / f"cohort-30_{k}.nii.gz" for k in ("T1w", "mask", "labels")}
    )
    assert all(s % 8 == 0 for s in pre["T1w"].shape)
    inside = pre["mask"] > 0
    assert pre["T1w"][~inside].max() == 0 and pre["T1w"].max() == 1 and pre["T1w"].min() == 0
    assert set(np.unique(pre["labels"])) <= set(range(10))
    aff = atlas_work / "affine_f2_ref29T2w"
    grids = {nib.load(aff / f"cohort-{c}_T1w.nii.gz").shape for c in ALIGNED}
    assert len(grids) == 1 and (aff / "cohort-30_to-29_0GenericAffine.mat").is_file()
    lab = {c: bta.load_volumes({"x": aff / f"cohort-{c}_labels.nii.gz"})["x"] for c in (30, 31)}
    assert mean_dice(lab[30], lab[31], labels=bta.TISSUES) > 0.3


@pytest.mark.slow
def test_train_atlas_main(fake_atlas, atlas_work, few_cohorts, tmp_path):
    """The training cohorts' stages, training (two methods, a few steps), the lambda sweep
    and the report (about 15 s)."""
    docs = tmp_path / "b.md"
    rc, out = run_main(bta.main, [
        "--templateflow-home", fake_atlas, "--work-dir", atlas_work, "--factor", 2,
        "--reference", 29, "--held-out", 30, 31, "--methods", "mi", "mcr", "--steps", 2,
        "--ae-steps", 1, "--ae-crop", 16, "--ch", 4, "--num-negatives", 16, "--lambdas", 0, 1,
        "--num-workers", 0, "--write-docs", docs,
    ])  # fmt: skip
    assert rc == 0
    assert "Best lambda per method" in out and "higher on" in out and "ddof 1" in out
    assert docs.read_text().count(bta.HEADING) == 1
    assert json.loads((atlas_work / "results.json").read_text())["rows"].keys() == {"mi", "mcr"}


def test_train_atlas_refuses_a_missing_atlas(tmp_path, capsys):
    assert bta.main(["--templateflow-home", str(tmp_path), "--work-dir", str(tmp_path)]) == 2
    assert "the development atlas is not at" in capsys.readouterr().err


def test_accuracy_atlas_main(atlas_work, untrained_bundle, tmp_path):
    """Every row kind but ANTs on one pair of each set: affine only, the network, the
    network refined (through benchlib.register), ConvexAdam; paired statistics with p."""
    pytest.importorskip("convexAdam")
    res = tmp_path / "acc.json"
    rc, out = run_main(bench_accuracy_atlas.main, [
        "--work-dir", atlas_work, "--factor", 2, "--reference", 29, "--held-out", 30, 31,
        "--bundles", untrained_bundle, "--names", "tiny", "--lambdas", 0.5, "--refine-steps", 1,
        "--refine-lambdas", 0.8, "--no-ants", "--max-pairs", 2, "--out", res,
    ])  # fmt: skip
    assert rc == 0 and out.startswith("# python benchmarks/bench_accuracy_atlas.py ")
    results = json.loads(res.read_text())["results"]
    for name in ("atlas", "pseudo"):
        rows = {(r["method"], r["lambda"]) for r in results[name]}
        assert rows == {("affine only", None), ("tiny", 0.5), ("tiny + refine 1", 0.8),
                        ("ConvexAdam (defaults)", None)}  # fmt: skip
        for r in results[name]:
            assert r["n"] == 2 and 0 <= r["dice"] <= 1 and r["above"] <= 2
    assert "(paired SD, pairs up, p)" in out and ", p n/a) |" in out  # affine vs itself


def test_accuracy_atlas_needs_bench_train_atlas_first(tmp_path):
    with pytest.raises(SystemExit, match=r"run benchmarks/bench_train_atlas\.py first"):
        bench_accuracy_atlas.main(["--work-dir", str(tmp_path), "--bundles"])


def test_sweep_atlas_main(fake_atlas, atlas_work, untrained_bundle, aligned_cohorts, tmp_path):
    """A bundle trained elsewhere through the package's sweep (17 lambdas), the section
    written into a markdown file under the sweep's own heading."""
    docs = tmp_path / "b.md"
    docs.write_text("# B\n\n## Other\n\nkept\n")
    rc, out = run_main(bench_sweep_atlas.main, [
        "--bundles", untrained_bundle, "--names", "tiny", "--out", tmp_path / "sweep",
        "--write-docs", docs, "--templateflow-home", fake_atlas, "--work-dir", atlas_work,
        "--factor", 2, "--reference", 29, "--held-out", 30, 31,
    ])  # fmt: skip
    assert rc == 0 and "2 ordered held-out pairs" in out
    text = docs.read_text()
    assert text.count(bench_sweep_atlas.HEADING) == 1 and "## Other\n\nkept" in text
    assert bta.HEADING not in text


# --------------------------------------------------------------------------- bench_cpu_recipe


@pytest.fixture
def cpu_recipe_args():
    return argparse.Namespace(
        held_out=[30], reference_cohort=31, train_per_cohort=1, test_per_cohort=1,
        amplitude=5.0, sigma=10.0, test_warp="bspline", test_warp_spacing=14.0,
        test_warp_amplitude=5.5, rotation=6.0, shift=6.0, seed=0,
    )  # fmt: skip


def test_cpu_recipe_dataset_and_scorer(
    fake_atlas, few_cohorts, cpu_recipe_args, monkeypatch, tmp_path, capsys
):
    """The pseudo-subjects' BIDS dataset (training, test and reference subjects, labels and
    masks as derivatives, a random rigid placement in the header), kept when asked again
    with the same settings; the tissue scorer through a transform; the report's table."""
    import SimpleITK as sitk

    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(fake_atlas))
    bids = tmp_path / "bids"
    train, test, ref = bench_cpu_recipe.write_dataset(cpu_recipe_args, bids)
    assert (train, test, ref) == (["c28s0", "c29s0", "c32s0", "c33s0"], ["c30s0"], "c31s0")
    assert bench_cpu_recipe.write_dataset(cpu_recipe_args, bids) == (train, test, ref)
    t1 = nib.load(bids / "sub-c30s0" / "anat" / "sub-c30s0_T1w.nii.gz")
    assert not np.allclose(t1.affine, nib.load(bta.atlas_file(fake_atlas, 30, "T1w")).affine)
    identity = sitk.AffineTransform(3)
    same = bench_cpu_recipe.score_tissues(bids, "c30s0", "c30s0", identity, tmp_path)
    assert same["dice"] == pytest.approx(1.0) and same["folding_percent"] == 0
    other = bench_cpu_recipe.score_tissues(bids, "c30s0", ref, identity, tmp_path)
    assert 0 < other["dice"] < 1
    scores = {"affine": {"c30s0": other}, "defaults": {"c30s0": same}}
    bench_cpu_recipe.report(scores, ref, {"defaults": 10.0})
    out = capsys.readouterr().out
    assert "| defaults | 1.0000 | - |" in out and "| affine |" in out
    cpu_recipe_args.seed = 1
    with pytest.raises(SystemExit, match="holds another dataset"):
        bench_cpu_recipe.write_dataset(cpu_recipe_args, bids)


# --------------------------------------------------------------------------- the app's outputs


def _participant_outputs(root: Path, subjects: dict[str, float]) -> Path:
    for sub, dice in subjects.items():
        tsv = root / f"sub-{sub}" / "anat" / f"sub-{sub}_desc-registration_metrics.tsv"
        tsv.parent.mkdir(parents=True, exist_ok=True)
        tsv.write_text(f"mean_dice\trun_time_s\n{dice}\t3.0\n")
    return root


def test_participant_dataset_metrics_and_methods_rows(tmp_path):
    out = _participant_outputs(tmp_path / "out", {"01": 0.5, "02": 0.7})
    rows = bench_participant_dataset.metrics(out)
    assert [r["mean_dice"] for r in rows.values()] == ["0.5", "0.7"]
    assert all("run_time_s" not in r for r in rows.values())
    assert bench_participant_methods.mean_dice(out) == pytest.approx(0.6)
    runs = bench_participant_methods.methods(30, [1, 4])
    assert runs == {
        "contrareg (lambda 0.8, no refinement)": ["--lambda", "0.8", "--refine-steps", "0"],
        "contrareg (lambda 0.8, refine 30)": ["--lambda", "0.8", "--refine-steps", "30"],
        "contrareg (lambda 0.8, refine 30, 4 draws)": [
            "--lambda", "0.8", "--refine-steps", "30", "--refine-draws", "4",
        ],
        "ants-syn": ["--registration", "ants"],
    }  # fmt: skip


def test_participant_methods_needs_a_model(tmp_path):
    (tmp_path / "bids").mkdir()
    with pytest.raises(SystemExit, match="no model bundle"):
        run_main(bench_participant_methods.main, ["--demo-dir", tmp_path])


def test_app_reports_its_exit_code(capsys):
    rc, seconds = benchlib.app(["--version"])
    assert rc == 0 and seconds > 0
    rc, _ = benchlib.app(["/no/such/dataset", "/tmp/x", "participant"])
    assert rc != 0 and "exit" in capsys.readouterr().out


@pytest.mark.slow
def test_participant_dataset_main(tmp_path):
    """The demo's dataset, a small model trained once, one timed participant run."""
    rc, out = run_main(bench_participant_dataset.main, [
        "--work-dir", tmp_path, "--subjects", 3, "--runs", 1, "--nprocs", 1,
    ])  # fmt: skip
    assert rc == 0 and "| this checkout |" in out


# --------------------------------------------------------------------------- bench_real_pairs


def _fake_app_run(root: Path, icbm_small) -> tuple[Path, Path]:
    """A dataset with structure labels for subjects 01 and 03, and a participant run's
    work folder and outputs for 03 -> 01 (the identity as affine and as transform)."""
    import SimpleITK as sitk

    bids = root / "bids"
    aff = icbm_small["affine"]
    labels = np.where(icbm_small["labels"] > 0, icbm_small["labels"] % 50 + 1, 0)
    labels[icbm_small["labels"] == 7] = 86  # a low-T2 thalamus part: counted as 42
    for sub in ("01", "03"):
        maps = (("desc-structures_dseg", labels), ("desc-brain_mask", icbm_small["mask"]))
        for suffix, arr in maps:
            path = benchlib.derivative(bids, sub, suffix)
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(arr.astype(np.int16), aff), path)
    work = root / "work"
    sub = work / "sub_03_wf" / "pair_wf" / "anat_preproc_wf"
    (sub / "affine_moving").mkdir(parents=True)
    mat = sub / "affine_moving" / "affine_0GenericAffine.mat"
    sitk.WriteTransform(sitk.AffineTransform(3), str(mat))
    for path, arr in (
        (sub / "normalize_moving" / "norm.nii.gz", icbm_small["t2w"]),
        (work / "reference_01_wf" / "normalize_reference" / "norm.nii.gz", icbm_small["t1w"]),
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(arr.astype(np.float32), aff), path)
    return bids, work


def test_real_pairs_scorer_and_peers_on_a_fake_run(icbm_small, tmp_path, capsys):
    """The app's affine read from a work folder, ConvexAdam on the pair it aligns, both
    scored through benchlib.score_files over the 50 structures; the report's table."""
    bids, work = _fake_app_run(tmp_path, icbm_small)
    tx, seconds = benchlib.run_peer("affine", work, "03")
    assert seconds == 0.0
    same = bench_real_pairs.score(bids, "03", "01", tx, tmp_path)
    assert same["dice"] == pytest.approx(1.0) and same["std_log_jacobian"] == pytest.approx(0)
    assert 86 not in same["dice_per_label"]
    results = {"affine": {("03", "01"): {**same, "seconds": 0.0}}}
    if importlib.util.find_spec("convexAdam") is not None:
        tx, seconds = benchlib.run_peer("convexadam", work, "03")
        peer = bench_real_pairs.score(bids, "03", "01", tx, tmp_path)
        assert 0.5 < peer["dice"] <= 1 and seconds > 0
        results["convexadam"] = {("03", "01"): {**peer, "seconds": seconds}}
    a = argparse.Namespace(set="selection", primary="affine")
    bench_real_pairs.report(a, "cmd", [("03", "01")], list(results), results, log_test=True)
    out = capsys.readouterr().out
    assert "| affine | 1.0000 |" in out
    with pytest.raises(FileNotFoundError):
        benchlib.app_transform(tmp_path / "out", "03")
    assert bench_real_pairs.parse_variants(["a=--fine-steps 80"]) == {"a": ["--fine-steps", "80"]}


@pytest.mark.data
def test_real_pairs_data_layout():
    """The real development dataset has what the benchmark reads: every subject of the
    split with its structure labels and brain mask; a subject scored onto itself is 1."""
    import SimpleITK as sitk

    if not REAL_BIDS.is_dir():
        pytest.skip(f"the real development dataset ({REAL_BIDS}) is not present")
    for sub in (*bench_real_pairs.SPLIT["selection"], *bench_real_pairs.SPLIT["test"]):
        for suffix in ("desc-structures_dseg", "desc-brain_mask"):
            assert benchlib.derivative(REAL_BIDS, sub, suffix).is_file(), (sub, suffix)
    s = bench_real_pairs.score(REAL_BIDS, "01", "01", sitk.AffineTransform(3), Path("/tmp"))
    assert s["dice"] == pytest.approx(1.0)


# --------------------------------------------------------------------------- bench_speed


def test_speed_jobs_and_report(tmp_path):
    """Each child job in this process at 16^3 (inference, a training step, ANTs SyN), the
    report built from them and written as a section."""
    infer = bench_speed.run_child({"kind": "infer", "size": 16, "ch": 4, "depth": 2,
                                   "repeats": 1}, "cpu")  # fmt: skip
    train = bench_speed.run_child({"kind": "train", "size": 16, "ch": 4, "depth": 2,
                                   "loss": "mi", "repeats": 1}, "cpu")  # fmt: skip
    ants = bench_speed.run_child({"kind": "ants", "size": 16, "repeats": 1}, "cpu")
    for r in (infer, train, ants):
        assert r["seconds"] > 0 and r["peak_rss_gb"] > 0
    args = bench_speed.parse_args(["--device", "cpu", "--sizes", "16", "--channels", "4",
                                   "--ch", "4", "--depth", "2"])  # fmt: skip
    res = {"pair_infer": infer, "ants": ants, "train_losses": [train],
           "size_infer": [infer], "size_train": [train], "channel_infer": [infer]}  # fmt: skip
    section = bench_speed.report(args, res, "cmd", "env")
    assert section.startswith(bench_speed.HEADING) and "ratio ContraReg / ANTs" in section
    doc = tmp_path / "b.md"
    benchlib.write_docs(doc, bench_speed.HEADING, section)
    assert doc.read_text().count(bench_speed.HEADING) == 1


@pytest.mark.slow
def test_speed_main(tmp_path):
    """The driver: every job in a child process (``python benchmarks/bench_speed.py
    --_child``)."""
    rc, out = run_main(bench_speed.main, [
        "--device", "cpu", "--sizes", 16, "--pair-size", 16, "--train-size", 16, "--ch", 4,
        "--depth", 2, "--channels", 4, "--losses", "mi", "--repeats", 1, "--no-ants",
        "--json", tmp_path / "speed.json",
    ])  # fmt: skip
    assert rc == 0 and "FAILED" not in out
    assert json.loads((tmp_path / "speed.json").read_text())["train_losses"]


# --------------------------------------------------------------------------- bench_gpu_training


@pytest.mark.slow
def test_gpu_training_cpu_path(icbm_small, icbm_subjects, tmp_path):
    """The time-boxed training on record lists, on the CPU at 4 mm: the first step, the run
    closed at the step it reached, the bundle and its network timed."""
    lists = {"moving": ["image\tmask\tsubject"], "fixed": ["image\tmask\tsubject"]}
    for i, subj in enumerate(icbm_subjects):
        mask = tmp_path / f"s{i}_mask.nii.gz"
        nib.save(nib.Nifti1Image(subj["mask"].astype(np.uint8), icbm_small["affine"]), mask)
        for role, key in (("moving", "t2w"), ("fixed", "t1w")):
            img = tmp_path / f"s{i}_{key}.nii.gz"
            nib.save(nib.Nifti1Image(subj[key], icbm_small["affine"]), img)
            lists[role].append(f"{img}\t{mask}\ts{i}")
    for role, rows in lists.items():
        (tmp_path / f"{role}.tsv").write_text("\n".join(rows) + "\n")
    like = tmp_path / "like.json"
    like.write_text(json.dumps({"metadata": {
        "modalities": {"moving": "T2w", "fixed": "T1w"},
        "normalization": {"method": "percentile", "lower": 0.5, "upper": 99.5, "mask": True},
        "grid": {"shape": list(icbm_small["t1w"].shape)},
    }}))  # fmt: skip
    rc, out = run_main(bench_gpu_training.main, [
        "--moving-list", tmp_path / "moving.tsv", "--fixed-list", tmp_path / "fixed.tsv",
        "--like", like, "--out", tmp_path / "run", "--budget-s", 0, "--preset", "sloppy",
        "--ch", 4, "--depth", 2, "--ae-steps", 1, "--ae-crop", 16, "--head-warmup", 0,
        "--deform-augment", 0, "--device", "cpu",
    ])  # fmt: skip
    assert rc == 0 and "registration 1 steps" in out
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_gpu_training_close_run_at(tmp_path):
    """The checkpoint rewritten so that the run it holds ends at the step it reached."""
    from contrareg_bids.training.checkpoint import load_checkpoint, save_checkpoint
    from contrareg_bids.training.config import sloppy_config

    cfg = sloppy_config(steps=1000)
    (tmp_path / "checkpoints").mkdir()
    save_checkpoint(tmp_path / "checkpoints" / "last.pt", step=7, config=cfg.to_json())
    closed = bench_gpu_training.close_run_at(tmp_path, cfg)
    assert closed.steps == 7
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert json.loads(state["config"])["steps"] == 7


@pytest.mark.data
def test_train_atlas_preprocessing_of_the_real_atlas(atlas_home, tmp_path):
    """One cohort of the development atlas at factor 3: the benchmark's grid (40x56x48)."""
    paths = bta.preprocess_cohort(atlas_home, 36, 3, tmp_path)
    vol = bta.load_volumes(paths)
    assert vol["T1w"].shape == (40, 56, 48)
    assert float(vol["T2w"].max()) == 1.0 and set(np.unique(vol["labels"])) <= set(range(10))
