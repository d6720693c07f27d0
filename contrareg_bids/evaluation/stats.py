"""Paired comparisons of two methods over the same pairs: the one statistics helper the
benchmarks quote (mean difference, its sample SD with ``ddof=1``, pairs better, a
Wilcoxon signed-rank p).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["PairedDifference", "paired_difference"]


@dataclass(frozen=True)
class PairedDifference:
    """``a - b`` over ``n`` pairs: mean, sample SD (ddof 1), pairs where ``a > b``, and the
    two-sided Wilcoxon signed-rank p (NaN when it cannot be computed: fewer than two pairs,
    or every difference zero)."""

    mean: float
    sd: float
    better: int
    n: int
    p: float

    def __str__(self) -> str:
        p = "n/a" if math.isnan(self.p) else f"{self.p:.3g}"
        return f"{self.mean:+.4f} ± {self.sd:.4f} ({self.better}/{self.n}, p {p})"

    @property
    def beyond_sd(self) -> bool:
        """The mean difference is positive and larger than its paired SD."""
        return self.mean > 0 and self.mean > self.sd


def paired_difference(a: Sequence[float], b: Sequence[float]) -> PairedDifference:
    """Compare two methods scored on the same pairs, in the same order."""
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(
            f"paired scores need two 1-D sequences of one length, got {x.shape}, {y.shape}"
        )
    if x.size == 0:
        raise ValueError("no pairs to compare")
    d = x - y
    sd = float(np.std(d, ddof=1)) if d.size > 1 else float("nan")
    p = float("nan")
    if d.size > 1 and np.any(d != 0):
        from scipy.stats import wilcoxon

        p = float(wilcoxon(d).pvalue)
    return PairedDifference(float(d.mean()), sd, int((d > 0).sum()), int(d.size), p)
