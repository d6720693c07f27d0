"""The classical peers of the benchmark tables: ConvexAdam (extra ``bench``) and FireANTs."""

from __future__ import annotations

import logging
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


def test_fireants_recovers_a_shift_in_our_displacement_convention(monkeypatch):
    pytest.importorskip("fireants")  # an empty package: its import changes nothing
    from scipy import ndimage

    from contrareg_bids.evaluation.peers import FireANTsSettings, fireants_forward_field

    # fireants' first import runs logging.basicConfig(level=INFO), a no-op while the root
    # logger has handlers (pytest adds its own): take them away to see it
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    root_before = (root.level, [])
    x = np.indices((32, 32, 32)).astype(np.float32)  # FireANTs' smallest size (MIN_IMG_SIZE)
    centre = np.full(3, 15.5)[:, None, None, None]
    radii = np.array([7.0, 5.0, 6.0])[:, None, None, None]
    fixed = np.exp(-(((x - centre) / radii) ** 2).sum(0)).astype(np.float32)
    # moving(x) = fixed(x - s), so moved(x) = moving(x + u(x)) matches fixed for u = s
    moving = ndimage.shift(fixed, (2.0, 0.0, -1.0), order=3, mode="nearest")
    settings = FireANTsSettings(iterations=(50, 30, 20))
    disp, seconds = fireants_forward_field(moving, fixed, (1.0, 1.0, 1.0), settings)

    assert disp.shape == (3, 32, 32, 32) and disp.dtype == np.float32 and seconds > 0
    moved = ndimage.map_coordinates(moving, x + disp, order=1, mode="nearest")
    before, after = ((moving - fixed) ** 2).mean(), ((moved - fixed) ** 2).mean()
    assert after < before / 50
    # channel k along array axis k, sign as above (LNCC on a smooth blob stops a bit short)
    inside = fixed > 0.3
    got = [float(disp[k][inside].mean()) for k in range(3)]
    assert 1.0 < got[0] < 2.5 and abs(got[1]) < 0.3 and -1.25 < got[2] < -0.4
    assert (root.level, list(root.handlers)) == root_before  # nothing leaked
    with pytest.raises(ValueError, match="at least 32 voxels"):
        fireants_forward_field(moving[:16], fixed[:16])
