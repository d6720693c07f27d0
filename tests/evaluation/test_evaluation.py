"""Lambda-sweep evaluation: the lambda grid, the tables on known rows, the sweep on tiny
ICBM-based pairs with a tiny bundle (and ANTs SyN), and ``contrareg-eval`` on NIfTI files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from contrareg_bids.evaluation import (
    ANTS_METHOD,
    PAPER_LAMBDAS,
    LabelledPair,
    best_lambda_table,
    run_sweep,
    summarize,
)
from contrareg_bids.evaluation.table import SUMMARY_COLUMNS, read_rows_tsv


def test_paper_lambdas_are_17_dense_then_sparse():
    lams = np.asarray(PAPER_LAMBDAS)
    assert lams.size == 17 and np.all(np.diff(lams) > 0)
    assert lams[0] == 0.0 and lams[-1] == 1.0
    dense, sparse = lams[lams < 0.2], lams[lams >= 0.2]
    assert np.diff(dense).max() < np.diff(sparse).min()
    for optimum in (0.0, 0.05, 0.125, 0.175, 0.3):  # the paper's Table 1
        assert np.isclose(lams, optimum).any()


def _row(method, lam, pair, dice, fold):
    return {"method": method, "lambda": lam, "pair": pair, "dice": dice,
            "folding_percent": fold, "folding_percent_grid": fold, "std_log_jacobian": 0.1,
            "seconds": 1.0}  # fmt: skip


def test_summary_and_best_lambda_rule():
    rows = []
    # method a: Dice grows as lambda falls, folding too; 0.1 folds exactly 0.5 (not < 0.5)
    for lam, dice, fold in ((0.0, 0.9, 2.0), (0.1, 0.85, 0.5), (0.2, 0.8, 0.3), (1.0, 0.6, 0)):
        rows += [_row("a", lam, p, dice + 0.01 * k, fold) for k, p in enumerate("xyz")]
    rows += [_row("b", 0.5, p, 0.7, 3.0) for p in "xyz"]  # never under the limit
    rows += [_row(ANTS_METHOD, None, p, 0.75, 0.01) for p in "xyz"]
    summary = summarize(rows)
    assert [(r["method"], r["lambda"]) for r in summary] == [
        ("a", 0.0), ("a", 0.1), ("a", 0.2), ("a", 1.0), ("b", 0.5), (ANTS_METHOD, None),
    ]  # fmt: skip
    first = summary[0]
    assert first["n_pairs"] == 3 and math.isclose(first["dice"], 0.91)
    assert math.isclose(first["dice30"], 0.9) and first["dice_p30"] < first["dice"]
    best = {r["method"]: r for r in best_lambda_table(summary, 0.5)}
    assert best["a"]["lambda"] == 0.2 and best["a"]["meets_limit"]
    assert not best["b"]["meets_limit"] and "no lambda" in best["b"]["note"]
    assert best[ANTS_METHOD]["lambda"] is None and best[ANTS_METHOD]["meets_limit"]


def _few(labels: np.ndarray) -> np.ndarray:
    """CerebrA's ~100 labels merged into 5 classes: one-hot label warping costs one
    resampling per label, and 5 keep the tests fast."""
    return np.where(labels > 0, labels % 5 + 1, 0).astype(np.int16)


def _pair_arrays(subj_a: dict, subj_b: dict, name: str) -> LabelledPair:
    return LabelledPair(
        subj_a["t2w"], subj_b["t1w"], _few(subj_a["labels"]), _few(subj_b["labels"]),
        subj_b["mask"], name=name,
    )  # fmt: skip


def test_sweep_on_tiny_pairs(tmp_path, tiny_bundle, icbm_small, icbm_subjects):
    from contrareg_bids.io.bundle import load_model

    s = icbm_subjects
    pairs = [_pair_arrays(s[0], s[1], "p01"), _pair_arrays(s[2], s[3], "p23")]
    for p in pairs:
        p.affine = icbm_small["affine"]
    folding = load_model(tiny_bundle)  # the same weights with a large flow: it folds
    with torch.no_grad():
        folding.regnet.flow.weight.mul_(5e4)
    res = run_sweep(
        [tiny_bundle, folding], pairs, tmp_path / "eval", names=["tiny", "wild"],
        ants=True, ants_iterations=(10, 0, 0), device="cpu", progress=False,
    )  # fmt: skip
    rows = read_rows_tsv(res.files["rows"])
    assert len(rows) == 17 * 2 * 2 + 2
    got = {(r["method"], r["lambda"], r["pair"]) for r in rows}
    expected = {(m, lam, p) for m in ("tiny", "wild") for lam in PAPER_LAMBDAS for p in
                ("p01", "p23")} | {(ANTS_METHOD, None, p) for p in ("p01", "p23")}  # fmt: skip
    assert got == expected
    for r in rows:
        assert 0.0 <= r["dice"] <= 1.0 and r["folding_percent"] >= 0 and r["seconds"] > 0
    wild = [r["folding_percent"] for r in rows if r["method"] == "wild"]
    assert max(wild) > 0.5  # the scaled network folds somewhere: the limit matters
    summary = read_rows_tsv(res.files["summary"])
    assert len(summary) == 17 * 2 + 1 and set(SUMMARY_COLUMNS) <= set(summary[0])
    best = read_rows_tsv(res.files["best"])
    assert [b["method"] for b in best] == ["tiny", "wild", ANTS_METHOD]
    for b in best:
        same = [r for r in summary if r["method"] == b["method"]]
        ok = [r for r in same if r["folding_percent"] < 0.5]
        if b["meets_limit"]:
            assert b["folding_percent"] < 0.5
            assert math.isclose(b["dice"], max(r["dice"] for r in ok), rel_tol=1e-5)
        else:
            assert not ok
    md = res.files["best_md"].read_text()
    assert "| method | opt. lambda | pairs | Dice | Dice30 |" in md and "tiny" in md
    for name in ("sweep.svg", "sweep.png", "sweep_dice.svg", "sweep_folding_percent.png"):
        assert (tmp_path / "eval" / name).stat().st_size > 1000
    assert b"<svg" in (tmp_path / "eval" / "sweep_dice30.svg").read_bytes()[:500]


def test_sweep_rejects_inconsistent_pairs(tiny_bundle):
    bad = LabelledPair(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), np.zeros((4, 4, 4)),
                       np.zeros((4, 4, 4)))  # fmt: skip
    with pytest.raises(ValueError, match="one grid"):
        run_sweep([tiny_bundle], [bad], progress=False)
    with pytest.raises(ValueError, match="nothing to evaluate"):
        run_sweep([], [bad], progress=False)


def test_cli_end_to_end_on_nifti(tmp_path, tiny_bundle, icbm_small, icbm_subjects, capsys):
    from contrareg_bids.cli.evaluate import main
    from contrareg_bids.io.images import write_nifti

    aff = icbm_small["affine"]
    data = tmp_path / "data"
    data.mkdir()
    lines = ["moving\tfixed\tmoving_labels\tfixed_labels\tfixed_mask"]
    for a, b in ((0, 1), (1, 0)):
        sa, sb = icbm_subjects[a], icbm_subjects[b]
        names = [f"s{a}_T2w", f"s{b}_T1w", f"s{a}_dseg", f"s{b}_dseg", f"s{b}_mask"]
        arrays = [sa["t2w"], sb["t1w"], _few(sa["labels"]), _few(sb["labels"]), sb["mask"]]
        for n, arr in zip(names, arrays, strict=True):
            write_nifti(arr, aff, data / f"{n}.nii.gz")
        lines.append("\t".join(f"data/{n}.nii.gz" for n in names))
    (tmp_path / "pairs.tsv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    rc = main(["--model", str(tiny_bundle), "--pairs", str(tmp_path / "pairs.tsv"),
               "--out", str(out), "--lambdas", "0", "0.1", "1", "--quiet"])  # fmt: skip
    assert rc == 0
    rows = read_rows_tsv(out / "sweep.tsv")
    assert len(rows) == 3 * 2 and {r["method"] for r in rows} == {"mi"}  # the bundle's loss
    assert {r["pair"] for r in rows} == {"001_s0_T2w_to_s1_T1w", "002_s1_T2w_to_s0_T1w"}
    assert "opt. lambda" in capsys.readouterr().out
    assert (out / "sweep.json").exists() and (out / "best_lambda.tsv").exists()
    with pytest.raises(SystemExit):
        main(["--pairs", str(tmp_path / "pairs.tsv"), "--out", str(out)])  # no model, no ants


def test_tables_are_written_whole_or_not_at_all(tmp_path):
    """A row that cannot be formatted leaves the previous table as it was and no temporary
    file (the table used to be written line by line into the final name)."""
    from contrareg_bids.evaluation.table import read_rows_tsv, write_table_tsv

    path = tmp_path / "summary.tsv"
    write_table_tsv([{"method": "mcr", "lambda": 0.1}], path, ("method", "lambda"))
    before = path.read_text()

    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no text")

    rows = [{"method": "mcr", "lambda": 0.2}, {"method": Unprintable(), "lambda": 0.3}]
    with pytest.raises(RuntimeError, match="no text"):
        write_table_tsv(rows, path, ("method", "lambda"))
    assert path.read_text() == before and sorted(tmp_path.iterdir()) == [path]
    assert read_rows_tsv(path) == [{"method": "mcr", "lambda": 0.1}]
