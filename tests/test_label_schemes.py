"""Dice only between label maps whose values mean the same structures."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from contrareg_bids.interfaces.metrics import RegistrationMetrics
from contrareg_bids.io.derivatives import (
    LabelTableError,
    find_subject_derivatives,
    label_table_for,
    read_label_table,
)
from contrareg_bids.io.transforms import write_displacement_nifti
from contrareg_bids.metrics import label_correspondence

TISSUES = "index\tname\n1\tCSF\n2\tCortical gray matter\n3\tWhite matter\n"
STRUCTURES = "index\tname\n1\tHippocampus\n2\tWhite matter\n3\tCSF\n"


def _tsv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _labels(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr.astype(np.int16), np.eye(4)), path)
    return path


def test_label_tables_are_matched_by_name_not_by_value(tmp_path):
    tissues = read_label_table(_tsv(tmp_path / "a.tsv", TISSUES))
    structures = read_label_table(_tsv(tmp_path / "b.tsv", STRUCTURES))
    match = label_correspondence(structures, tissues, "structures", "tissues")
    assert match.comparable and match.mapping == {2: 3, 3: 1}  # hippocampus has no partner
    arr = np.array([[[1, 2, 3, 0]]])
    assert match.apply(arr).tolist() == [[[0, 3, 1, 0]]]
    same = label_correspondence(tissues, tissues, None, "x")
    assert same.comparable and "agree" in same.how
    lut_none = read_label_table(_tsv(tmp_path / "c.tsv", "index\tname\n1\tFoo\n"))
    assert not label_correspondence(lut_none, tissues, None, None).comparable


def test_without_label_tables_only_the_same_desc_is_comparable():
    assert label_correspondence(None, None, None, None).comparable  # one scheme, no tables
    assert label_correspondence(None, {1: "CSF"}, "tissues", "tissues").comparable
    match = label_correspondence(None, {1: "CSF"}, "structures", "tissues")
    assert not match.comparable and "subject's label map has no dseg.tsv" in match.how


def test_label_table_errors_name_the_file(tmp_path):
    with pytest.raises(LabelTableError, match=r"bad\.tsv.*'index' and 'name'"):
        read_label_table(_tsv(tmp_path / "bad.tsv", "value\tlabel\n1\tCSF\n"))
    with pytest.raises(LabelTableError, match=r"line 2: index 'one'"):
        read_label_table(_tsv(tmp_path / "bad2.tsv", "index\tname\none\tCSF\n"))


def test_label_table_sidecar_or_inherited_from_the_root(tmp_path):
    root = tmp_path / "tpl-X"
    dseg = _labels(
        root / "cohort-1" / "tpl-X_cohort-1_desc-tissues_dseg.nii.gz", np.ones((2,) * 3)
    )
    inherited = _tsv(root / "tpl-X_desc-tissues_dseg.tsv", TISSUES)
    _tsv(root / "tpl-X_desc-structures_dseg.tsv", STRUCTURES)  # another scheme: not this one
    assert label_table_for(dseg, root) == inherited
    sidecar = _tsv(dseg.with_name("tpl-X_cohort-1_desc-tissues_dseg.tsv"), TISSUES)
    assert label_table_for(dseg, root) == sidecar


def test_the_subjects_label_map_is_chosen_not_taken_alphabetically(tmp_path, caplog):
    """Regression: the alphabetically first dseg (desc-structures) was scored against a
    template's desc-tissues labels."""
    anat = tmp_path / "deriv" / "sub-01" / "anat"
    _labels(anat / "sub-01_desc-structures_dseg.nii.gz", np.ones((2,) * 3))
    tissues = _labels(anat / "sub-01_desc-tissues_dseg.nii.gz", np.ones((2,) * 3))
    _tsv(tmp_path / "deriv" / "desc-tissues_dseg.tsv", TISSUES)
    derivs = {"d": tmp_path / "deriv"}
    found = find_subject_derivatives(derivs, "01", prefer_desc="tissues")
    assert found["labels"] == tissues
    assert found["labels_tsv"] == tmp_path / "deriv" / "desc-tissues_dseg.tsv"
    chosen = find_subject_derivatives(derivs, "01", labels_desc="structures", prefer_desc="x")
    assert chosen["labels"].name == "sub-01_desc-structures_dseg.nii.gz"
    with caplog.at_level(logging.WARNING):
        assert "labels" not in find_subject_derivatives(derivs, "01", prefer_desc="aseg")
    assert "choose one with --labels-desc" in caplog.text


def test_metrics_node_refuses_dice_between_different_schemes(tmp_path, monkeypatch, caplog):
    """Through Nipype: subject desc-structures (1 = hippocampus) against the reference's
    desc-tissues (1 = CSF) gives no Dice and says why; with its table it is matched by name."""
    monkeypatch.chdir(tmp_path)
    arr = np.zeros((6, 7, 5), np.int16)
    arr[1:3], arr[3:5] = 1, 2
    field = write_displacement_nifti(np.zeros((3, 6, 7, 5)), np.eye(4), tmp_path / "f.nii.gz")
    subj = _labels(tmp_path / "s" / "sub-01_desc-structures_dseg.nii.gz", arr)
    ref = _labels(tmp_path / "r" / "tpl-X_desc-tissues_dseg.nii.gz", arr)
    ref_tsv = _tsv(tmp_path / "r" / "tpl-X_desc-tissues_dseg.tsv", TISSUES)
    node = dict(forward_field=str(field), subject_labels=str(subj), reference_labels=str(ref),
                reference_dseg=str(ref), reference_labels_tsv=str(ref_tsv))  # fmt: skip
    with caplog.at_level(logging.WARNING):
        row = RegistrationMetrics(**node).run().outputs.metrics
    assert math.isnan(row["mean_dice"]) and "dice_1" not in row
    assert "cannot tell" in row["label_matching"] and "no Dice" in caplog.text
    subj_tsv = _tsv(tmp_path / "s" / "sub-01_desc-structures_dseg.tsv", STRUCTURES)
    row = RegistrationMetrics(**node, subject_labels_tsv=str(subj_tsv)).run().outputs.metrics
    # subject 2 (white matter) -> reference 3: no voxel of the reference is 3 -> no pair,
    # subject 1 (hippocampus) has no partner: nothing left to score
    assert "matched by name" in row["label_matching"] and math.isnan(row["mean_dice"])
    same = RegistrationMetrics(**{**node, "subject_labels": str(ref)}).run().outputs.metrics
    assert same["mean_dice"] == 1.0 and "both desc-tissues" in same["label_matching"]


def test_metrics_node_resamples_subject_labels_stored_in_another_voxel_order(
    tmp_path, monkeypatch
):
    """The subject's labels as the user stored them (LAS here) are put on the RAS grid of the
    warped reference labels before Dice; the table and its sidecar are written whole."""
    monkeypatch.chdir(tmp_path)
    arr = np.zeros((6, 7, 5), np.int16)
    arr[1:3], arr[3:5, 2:] = 1, 2
    field = write_displacement_nifti(np.zeros((3, 6, 7, 5)), np.eye(4), tmp_path / "f.nii.gz")
    ref = _labels(tmp_path / "r" / "tpl-X_desc-tissues_dseg.nii.gz", arr)
    las = np.diag([-1.0, 1.0, 1.0, 1.0])
    las[0, 3] = arr.shape[0] - 1  # same world positions, x axis stored reversed
    subj = tmp_path / "s" / "sub-01_desc-tissues_dseg.nii.gz"
    subj.parent.mkdir()
    nib.save(nib.Nifti1Image(arr[::-1].copy(), las), subj)
    node = dict(forward_field=str(field), subject_labels=str(subj), reference_labels=str(ref),
                reference_dseg=str(ref), lam=0.2)  # fmt: skip
    res = RegistrationMetrics(**node).run()
    row = res.outputs.metrics
    assert row["mean_dice"] == 1.0 and row["dice_1"] == row["dice_2"] == 1.0
    header, values = Path(res.outputs.out_tsv).read_text().splitlines()
    assert header.split("\t") == [
        "method", "lambda", "folding_percent", "std_log_jacobian", "label_matching",
        "mean_dice", "dice_1", "dice_2",
    ]  # fmt: skip
    assert values.split("\t")[:4] == ["contrareg", "0.2", "0", "0"]
    assert set(json.loads(Path(res.outputs.out_json).read_text())) == set(header.split("\t"))
    assert not list(Path(res.outputs.out_tsv).parent.glob(".metrics*"))  # no temporary left
