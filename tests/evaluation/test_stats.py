"""The paired statistics the benchmarks quote, and the real-data benchmark's fixed parts."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from contrareg_bids.evaluation.stats import paired_difference

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_real_pairs.py"


def test_paired_difference_uses_the_sample_sd_and_counts_pairs_better():
    a = [0.70, 0.72, 0.69, 0.75]
    b = [0.68, 0.71, 0.70, 0.70]
    d = paired_difference(a, b)
    diffs = np.subtract(a, b)
    assert d.mean == pytest.approx(diffs.mean())
    assert d.sd == pytest.approx(np.std(diffs, ddof=1))  # ddof 1, not 0
    assert (d.better, d.n) == (3, 4)
    assert 0 < d.p <= 1
    assert "(3/4, p " in str(d)


def test_paired_difference_beyond_sd_and_degenerate_cases():
    assert paired_difference([2, 3, 4], [1, 1, 1]).beyond_sd
    assert not paired_difference([1, 3, 1], [1, 1, 1.5]).beyond_sd
    same = paired_difference([1.0, 2.0], [1.0, 2.0])
    assert same.mean == 0 and math.isnan(same.p)  # no signed-rank test on all-zero differences
    with pytest.raises(ValueError, match="one length"):
        paired_difference([1, 2], [1])
    with pytest.raises(ValueError, match="no pairs"):
        paired_difference([], [])


def _bench():
    spec = importlib.util.spec_from_file_location("bench_real_pairs", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_real_benchmark_split_and_label_set():
    """Selection and test subjects never overlap; the scored labels are the 50 structures,
    the low-T2 thalamus parts counted in their thalamus and the background (85) dropped."""
    bench = _bench()
    sel, test = (set(bench.SPLIT[k]) for k in ("selection", "test"))
    assert not sel & test and len(sel) == len(test) == 4
    labels = np.array([0, 1, 42, 43, 50, 85, 86, 87, 51])
    assert bench.structures(labels).tolist() == [0, 1, 42, 43, 50, 0, 42, 43, 0]
    assert bench.STRUCTURES == tuple(range(1, 51))
