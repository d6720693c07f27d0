"""Per-subject lambda: the smallest regularisation whose warps respect a folding budget.

A lambda-conditioned network gives the whole accuracy/regularity trade-off from one set of
weights, so each subject can get its own lambda: smaller lambda aligns more closely but
folds more. :func:`choose_lambda` searches for the smallest lambda whose forward AND
inverse warps fold at most ``max_folding`` % of voxels (``det J <= 0``).

Search (:func:`search_lambda`, independent of the network so it is tested on known curves):

1. scan a coarse ascending grid (:data:`COARSE_GRID` clipped to ``[lo, hi]``, both ends
   included) and stop at the first lambda within budget; if that is ``lo``, it is the answer;
2. bisect between the last coarse lambda over budget and the first within budget until the
   bracket is ``tol`` wide; the answer is the bracket's upper end.

Folding is expected to decrease as lambda grows, but nothing forces a trained hypernetwork
to be monotone. The rules when it is not:

* the answer is always a lambda that was probed and found within budget, never an
  interpolation, so the budget holds for the returned lambda whatever the curve;
* the coarse scan makes the answer the first crossing from below at the grid's resolution: a
  dip under budget between two coarse points over budget is not searched for;
* observed violations (a larger lambda folding more, beyond ``monotone_tol`` %) are
  reported as ``monotone = False`` in the result and its trace, with a warning;
* when no probed lambda is within budget (even ``hi``) the lambda with the least folding
  is returned with ``within_budget = False`` (ties: the larger lambda), with a warning.

The budget is inclusive (``<= max_folding``) so that ``max_folding = 0`` asks for no
folded voxel at all; the evaluation table's "< 0.5 %" rule is the paper's and strict.
"""

from __future__ import annotations

import itertools
import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..metrics import FOLDING_LIMIT_PERCENT, folding_percent

if TYPE_CHECKING:
    from ..io.bundle import ModelBundle
    from ..nn.inference import InferenceResult
    from ..nn.model import ContraRegNet

__all__ = [
    "COARSE_GRID",
    "DEFAULT_MAX_FOLDING",
    "LambdaProbe",
    "LambdaSearch",
    "choose_lambda",
    "register_auto",
    "search_lambda",
]

#: Coarse lambdas scanned first (ascending): dense where trained networks usually cross a
#: 0.5 % budget (below 0.2, cf. the paper's optimal lambdas), sparse above.
COARSE_GRID: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0)
#: The paper's folding limit (%), the default budget.
DEFAULT_MAX_FOLDING = FOLDING_LIMIT_PERCENT


@dataclass(frozen=True)
class LambdaProbe:
    """One registration of the search: % folding voxels of both warps at ``lam``."""

    lam: float
    folding_forward: float
    folding_inverse: float

    @property
    def folding(self) -> float:
        """The worse of the two directions (the budget applies to both)."""
        return max(self.folding_forward, self.folding_inverse)

    def to_dict(self) -> dict[str, float]:
        return {
            "lambda": self.lam,
            "folding_forward": self.folding_forward,
            "folding_inverse": self.folding_inverse,
        }


@dataclass
class LambdaSearch:
    """Outcome of a search: the chosen lambda, whether it meets the budget, every probe in
    the order it was made, and the registration at the chosen lambda (when kept)."""

    lam: float
    within_budget: bool
    max_folding: float
    trace: list[LambdaProbe]
    monotone: bool
    result: InferenceResult | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the arrays), for metrics files and provenance."""
        return {
            "lambda": self.lam,
            "within_budget": self.within_budget,
            "max_folding_percent": self.max_folding,
            "monotone": self.monotone,
            "probes": len(self.trace),
            "trace": [p.to_dict() for p in self.trace],
        }


def _monotone(trace: Sequence[LambdaProbe], tol: float) -> bool:
    """True when folding never increases with lambda by more than ``tol`` percent."""
    probes = sorted(trace, key=lambda p: p.lam)
    return all(b.folding <= a.folding + tol for a, b in itertools.pairwise(probes))


def search_lambda(
    probe: Callable[[float], LambdaProbe],
    max_folding: float = DEFAULT_MAX_FOLDING,
    *,
    lo: float = 0.0,
    hi: float = 1.0,
    grid: Sequence[float] = COARSE_GRID,
    tol: float = 0.01,
    monotone_tol: float = 0.01,
) -> LambdaSearch:
    """Coarse scan + bisection on lambda (module docstring); ``probe(lam)`` registers once."""
    if not 0.0 <= max_folding <= 100.0:
        raise ValueError(f"max_folding is a percentage in [0, 100], got {max_folding}")
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"need 0 <= lo <= hi <= 1, got lo={lo}, hi={hi}")
    if tol <= 0:
        raise ValueError(f"tol must be positive, got {tol}")
    coarse = sorted({lo, hi, *(float(g) for g in grid if lo < g < hi)})
    trace: list[LambdaProbe] = []

    def run(lam: float) -> LambdaProbe:
        p = probe(lam)
        trace.append(p)
        return p

    below: float | None = None  # last coarse lambda over budget
    above: float | None = None  # first coarse lambda within budget
    for lam in coarse:
        if run(lam).folding <= max_folding:
            above = lam
            break
        below = lam
    if above is not None and below is not None:
        a, b = below, above
        while b - a > tol:
            mid = round(0.5 * (a + b), 6)
            if run(mid).folding <= max_folding:
                b = mid
            else:
                a = mid
        above = b
    monotone = _monotone(trace, monotone_tol)
    if not monotone:
        warnings.warn(
            "the folding of the warps does not decrease monotonically with lambda for this "
            "pair; the chosen lambda was probed and is within budget, but a smaller one may "
            "exist between the probes",
            stacklevel=2,
        )
    if above is None:
        best = min(trace, key=lambda p: (p.folding, -p.lam))
        warnings.warn(
            f"no lambda in [{lo}, {hi}] keeps both warps within {max_folding} % folding "
            f"voxels; using lambda {best.lam} ({best.folding:.3f} %)",
            stacklevel=2,
        )
        return LambdaSearch(best.lam, False, max_folding, trace, monotone)
    return LambdaSearch(above, True, max_folding, trace, monotone)


def choose_lambda(
    net: ContraRegNet,
    moving: np.ndarray,
    fixed: np.ndarray,
    max_folding: float = DEFAULT_MAX_FOLDING,
    *,
    lo: float = 0.0,
    hi: float = 1.0,
    grid: Sequence[float] = COARSE_GRID,
    tol: float = 0.01,
    device: str | None = "cpu",
    amp: bool = False,
    fixed_mask: np.ndarray | None = None,
    moving_mask: np.ndarray | None = None,
    moving_labels: np.ndarray | None = None,
) -> LambdaSearch:
    """Smallest lambda whose forward and inverse warps fold at most ``max_folding`` %.

    Folding is counted over the whole grid by default; ``fixed_mask`` restricts the forward
    warp's count (it lives on the fixed grid) and ``moving_mask`` the inverse's. ``lo``/``hi``
    bound the search (use the bundle's trained ``lambda_range``). The registration at the
    chosen lambda is kept in ``result`` (with ``moving_labels`` warped when given), so the
    caller does not run the network again.
    """
    from ..nn.inference import register_arrays

    if net.hypernet is None:
        raise ValueError("choose_lambda needs a lambda-conditioned network (hypernetwork)")
    # Only two registrations can be returned: the smallest lambda within budget (what the
    # search returns when it succeeds) and the least folding one (when it fails); keep those.
    kept: dict[str, tuple[LambdaProbe, InferenceResult]] = {}

    def probe(lam: float) -> LambdaProbe:
        res = register_arrays(net, moving, fixed, lam, device, moving_labels, amp)
        p = LambdaProbe(
            float(lam),
            folding_percent(res.forward_disp, mask=fixed_mask),
            folding_percent(res.inverse_disp, mask=moving_mask),
        )
        if p.folding <= max_folding and ("within" not in kept or p.lam < kept["within"][0].lam):
            kept["within"] = (p, res)
        least = kept.get("least")
        if least is None or (p.folding, -p.lam) < (least[0].folding, -least[0].lam):
            kept["least"] = (p, res)
        return p

    search = search_lambda(probe, max_folding, lo=lo, hi=hi, grid=grid, tol=tol)
    for p, res in kept.values():
        if p.lam == search.lam:
            search.result = res
    return search


def register_auto(
    bundle: ModelBundle,
    moving: np.ndarray,
    fixed: np.ndarray,
    max_folding: float,
    device: str | None,
    amp: bool,
    out_dir: Path,
    prefix: str = "",
) -> tuple[InferenceResult, float | None, Path]:
    """``contrareg_register(lam="auto")``: search within the bundle's trained lambda range,
    write the trace to ``<prefix>lambda_search.json``; returns the registration at the
    chosen lambda, that lambda and the JSON path. A network without hypernetwork has one
    lambda: it is run as is and the JSON says so."""
    from ..nn.inference import register_arrays

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{prefix}lambda_search.json"
    if bundle.regnet.hypernet is None:
        warnings.warn(
            "lambda 'auto' ignored: this model is not lambda-conditioned (trained at lambda "
            f"{bundle.regnet.config.fixed_lambda})",
            stacklevel=3,
        )
        res = register_arrays(bundle.regnet, moving, fixed, None, device, amp=amp)
        info: dict[str, Any] = {"lambda": None, "note": "model without hypernetwork"}
        lam = None
    else:
        lo, hi = bundle.metadata.lambda_range
        search = choose_lambda(
            bundle.regnet, moving, fixed, max_folding, lo=lo, hi=hi, device=device, amp=amp
        )
        if search.result is None:  # pragma: no cover - the search keeps its answer's result
            raise RuntimeError("lambda search lost the registration at the chosen lambda")
        res, lam, info = search.result, search.lam, search.to_dict()
    path.write_text(json.dumps(info, indent=2))
    return res, lam, path
