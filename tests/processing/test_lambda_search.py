"""Per-subject lambda under a folding budget: the search on known curves, on a real small
network, its wiring into ``contrareg_register``/the metrics node, and the CLI options."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from contrareg_bids.metrics import folding_percent
from contrareg_bids.nn.inference import register_arrays
from contrareg_bids.nn.model import ContraRegNet
from contrareg_bids.processing.lambda_search import (
    LambdaProbe,
    choose_lambda,
    search_lambda,
)


def curve(fn):
    """A probe from a folding curve (forward; the inverse folds 80 % as much)."""
    return lambda lam: LambdaProbe(lam, fn(lam), 0.8 * fn(lam))


def test_search_finds_smallest_lambda_on_a_monotone_curve():
    # folding 5 % at 0, decreasing linearly to 0 at 0.3: budget 0.5 % is crossed at 0.27
    res = search_lambda(curve(lambda x: max(0.0, 5.0 * (0.3 - x) / 0.3)), 0.5, tol=0.005)
    assert res.within_budget and res.monotone
    assert 0.27 <= res.lam <= 0.27 + 0.005
    probed = {p.lam: p for p in res.trace}
    assert probed[res.lam].folding <= 0.5  # the answer was probed, not interpolated
    assert any(p.folding > 0.5 and res.lam - 0.005 <= p.lam < res.lam for p in res.trace)
    assert [p.lam for p in res.trace][:4] == [0.0, 0.05, 0.1, 0.2]  # coarse scan first


def test_search_returns_lo_when_lo_is_within_budget():
    res = search_lambda(curve(lambda x: 0.1), 0.5, lo=0.05, hi=0.9)
    assert (res.lam, res.within_budget, len(res.trace)) == (0.05, True, 1)


def test_budget_is_inclusive_and_zero_means_no_folding():
    res = search_lambda(curve(lambda x: 0.0 if x >= 0.5 else 1.0), 0.0, tol=0.01)
    assert res.within_budget and 0.5 <= res.lam <= 0.51


def test_search_reports_when_no_lambda_meets_the_budget():
    with pytest.warns(UserWarning, match="no lambda"):
        res = search_lambda(curve(lambda x: 3.0 - x), 0.5)
    assert not res.within_budget and res.lam == 1.0  # the least folding probe
    assert [p.lam for p in res.trace] == [0.0, 0.05, 0.1, 0.2, 0.5, 1.0]


def test_search_on_a_non_monotone_curve_stays_within_budget():
    # folding dips under the budget between 0.1 and 0.2, rises above it again around 0.35
    def fold(x: float) -> float:
        return 2.0 if x < 0.15 else (0.2 if x < 0.3 or x > 0.45 else 0.9)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = search_lambda(curve(fold), 0.5, tol=0.01)
    assert res.within_budget and 0.15 <= res.lam <= 0.16
    assert fold(res.lam) <= 0.5
    # the monotonicity check sees only probed values: this trace happens to be monotone
    assert res.monotone == all("monotonically" not in str(w.message) for w in caught)


def test_search_flags_observed_monotonicity_failures():
    # within budget at 0.05, over at 0.1 and 0.2 (seen only when 0 folds and bisection runs)
    def fold(x: float) -> float:
        return {0.0: 1.0, 0.05: 0.8, 0.1: 0.9}.get(x, 0.1)

    with pytest.warns(UserWarning, match="monotonically"):
        res = search_lambda(curve(fold), 0.5, grid=(0.0, 0.05, 0.1, 0.2))
    assert not res.monotone and res.within_budget
    assert res.to_dict()["monotone"] is False


def test_search_rejects_bad_arguments():
    with pytest.raises(ValueError, match="percentage"):
        search_lambda(curve(lambda x: 0.0), -1)
    with pytest.raises(ValueError, match="lo <= hi"):
        search_lambda(curve(lambda x: 0.0), 0.5, lo=0.8, hi=0.2)


class DampedNet(ContraRegNet):
    """A real (untrained) network whose velocity shrinks as lambda grows, like a trained
    one: large flow weights make small lambdas fold."""

    def velocity(self, moving, fixed, lam=None):
        return super().velocity(moving, fixed, lam) * (1.0 - float(lam)) ** 2


@pytest.fixture(scope="module")
def folding_net() -> ContraRegNet:
    torch.manual_seed(0)
    net = DampedNet(ch=8, depth=2, ts=5)
    with torch.no_grad():
        net.flow.weight.normal_(0.0, 30.0)  # folds 2 % at lambda 0, 0 at 0.7
    return net


@pytest.fixture(scope="module")
def small_pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, 20)] * 3, indexing="ij"))
    blob = ((grid**2).sum(0) < 0.5).astype(np.float32)
    return blob + 0.2 * rng.random(blob.shape, dtype=np.float32), np.roll(blob, 2, axis=0)


def test_choose_lambda_respects_the_budget_on_a_real_network(folding_net, small_pair):
    mov, fix = small_pair
    at0 = register_arrays(folding_net, mov, fix, 0.0)
    assert folding_percent(at0.forward_disp) > 0.5  # the test needs folding at lambda 0
    res = choose_lambda(folding_net, mov, fix, max_folding=0.5, tol=0.01)
    assert res.within_budget and 0.0 < res.lam < 1.0
    # recompute independently: both directions within the budget at the chosen lambda
    check = register_arrays(folding_net, mov, fix, res.lam)
    assert folding_percent(check.forward_disp) <= 0.5
    assert folding_percent(check.inverse_disp) <= 0.5
    np.testing.assert_allclose(res.result.forward_disp, check.forward_disp, atol=1e-5)
    # and a probe just below it (within tol) was over budget: the smallest lambda found
    below = [p for p in res.trace if res.lam - 0.01 <= p.lam < res.lam]
    assert below and all(p.folding > 0.5 for p in below)
    info = res.to_dict()
    assert info["probes"] == len(res.trace) == len(info["trace"])
    assert set(info["trace"][0]) == {"lambda", "folding_forward", "folding_inverse"}


def test_choose_lambda_needs_a_lambda_conditioned_network(small_pair):
    with pytest.raises(ValueError, match="hypernetwork"):
        choose_lambda(ContraRegNet(ch=4, depth=2, hypernet=False), *small_pair)


# ---------------------------------------------------------------------------------------------
# wiring: contrareg_register, the metrics node, the command line
# ---------------------------------------------------------------------------------------------
def test_contrareg_register_auto_writes_the_trace(tmp_path, tiny_bundle, icbm_small):
    from contrareg_bids.io.images import write_nifti
    from contrareg_bids.processing.register import contrareg_register

    aff = icbm_small["affine"]
    mov = write_nifti(icbm_small["t2w"], aff, tmp_path / "mov.nii.gz", dtype=np.float32)
    fix = write_nifti(icbm_small["t1w"], aff, tmp_path / "fix.nii.gz", dtype=np.float32)
    from contrareg_bids.settings import RegistrationSettings

    options = {"lam": "auto", "max_folding": 0.3, "device": "cpu", "fine_steps": 0}
    res = contrareg_register(
        mov, fix, tiny_bundle, RegistrationSettings.from_options(options), tmp_path / "out"
    )
    info = json.loads(Path(res.lambda_search).read_text())
    assert info["lambda"] == res.lam and info["max_folding_percent"] == 0.3
    assert info["within_budget"] is True and info["probes"] == len(info["trace"]) >= 1
    chosen = [p for p in info["trace"] if p["lambda"] == res.lam]
    assert chosen and max(chosen[0]["folding_forward"], chosen[0]["folding_inverse"]) <= 0.3
    assert res.forward_field.exists() and res.moved.exists()


def test_metrics_node_records_the_search(tmp_path, monkeypatch):
    from contrareg_bids.interfaces.metrics import RegistrationMetrics
    from contrareg_bids.io.transforms import write_displacement_nifti

    field = write_displacement_nifti(np.zeros((3, 6, 7, 5)), np.eye(4), tmp_path / "f.nii.gz")
    trace = [{"lambda": 0.1, "folding_forward": 0.6, "folding_inverse": 0.2},
             {"lambda": 0.15, "folding_forward": 0.2, "folding_inverse": 0.1}]  # fmt: skip
    search = {"lambda": 0.15, "within_budget": True, "max_folding_percent": 0.3,
              "monotone": True, "probes": 2, "trace": trace}  # fmt: skip
    monkeypatch.chdir(tmp_path)
    res = RegistrationMetrics(forward_field=str(field), lam=0.15, lambda_search=search).run()
    header, row = Path(res.outputs.out_tsv).read_text().splitlines()
    cols = dict(zip(header.split("\t"), row.split("\t"), strict=True))
    assert cols["lambda"] == "0.15" and cols["lambda_selection"] == "auto"
    assert cols["lambda_max_folding"] == "0.3" and cols["lambda_probes"] == "2"
    sidecar = json.loads(Path(res.outputs.out_json).read_text())
    assert sidecar["LambdaSearch"]["trace"] == search["trace"]


def test_cli_lambda_auto(tmp_path):
    from contrareg_bids.cli.parser import parse_args
    from contrareg_bids.config import RunConfig

    (tmp_path / "bids").mkdir()
    argv = [str(tmp_path / "bids"), str(tmp_path / "out"), "participant"]
    args = parse_args([*argv, "--lambda", "auto", "--max-folding", "0.3"])
    assert (args.lam, args.max_folding) == ("auto", 0.3)
    cfg = RunConfig.from_args(args)
    assert (cfg.registration.lam, cfg.registration.max_folding) == ("auto", 0.3)
    saved = cfg.to_dict()["registration"]
    assert saved["lam"] == "auto" and saved["max_folding"] == 0.3
    auto = RunConfig.from_args(parse_args([*argv, "--lambda", "AUTO"])).registration
    assert auto.max_folding == 0.5
    assert parse_args([*argv, "--lambda", "0.2"]).lam == 0.2
    for bad in (["--max-folding", "0.3"], ["--lambda", "auto", "--max-folding", "-1"],
                ["--lambda", "sometimes"]):  # fmt: skip
        with pytest.raises(SystemExit):
            parse_args([*argv, *bad])


def test_workflow_wires_auto_lambda(tmp_path):
    """``lam="auto"`` configures the register node and feeds its choice to the metrics."""
    from tests.workflows.test_registration import build, edges, files, node_of

    paths = files.__wrapped__(tmp_path)
    wf = build(paths, tmp_path, lam="auto", max_folding=0.3)
    reg = node_of(wf, "register")
    assert (reg.inputs.settings["lam"], reg.inputs.settings["max_folding"]) == ("auto", 0.3)
    e = edges(wf)
    assert ("register", "lam", "metrics", "lam") in e
    assert ("register", "lambda_search_info", "metrics", "lambda_search") in e
    fixed = build(paths, tmp_path, lam=0.2)
    assert node_of(fixed, "register").inputs.settings["lam"] == 0.2
    assert node_of(fixed, "metrics").inputs.lam == 0.2
