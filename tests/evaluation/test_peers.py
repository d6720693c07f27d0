"""The ConvexAdam peer of the benchmark tables (optional extra ``bench``)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest


def test_convexadam_recovers_a_shift_in_our_displacement_convention():
    pytest.importorskip("convexAdam")
    from contrareg_bids.evaluation.peers import convexadam_forward_field

    x = np.indices((40, 48, 40)).astype(np.float32)
    centre = np.array([20, 24, 20])[:, None, None, None]
    fixed = (((x - centre) ** 2).sum(0) < 100).astype(np.float32)
    moving = np.roll(fixed, (3, -2, 1), axis=(0, 1, 2))
    disp, seconds = convexadam_forward_field(1 - 0.5 * moving, fixed)  # other contrast
    inside = fixed > 0
    # moved(x) = moving(x + u(x)): u is the shift, channel k along array axis k
    got = [float(disp[k][inside].mean()) for k in range(3)]
    assert got == pytest.approx([3, -2, 1], abs=0.6) and seconds > 0
    # its import switches every warning off; that must not leak into the process
    assert ("ignore", None, Warning, None, 0) not in warnings.filters
