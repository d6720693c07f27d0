"""The simulator's deformation families (contrareg_bids.simulate)."""

from __future__ import annotations

import numpy as np
import pytest

from contrareg_bids.metrics import jacobian_determinant
from contrareg_bids.simulate import (
    BSPLINE_INJECTIVE_FRACTION,
    bspline_displacement,
    simulate_subject,
)


def test_bspline_warps_stay_within_their_amplitude_and_one_to_one_at_the_bound():
    rng = np.random.default_rng(3)
    spacing = 6.0
    amplitude = 0.98 * BSPLINE_INJECTIVE_FRACTION * spacing
    for _ in range(3):
        disp = bspline_displacement((30, 34, 28), rng, spacing, amplitude)
        assert disp.shape == (3, 30, 34, 28)
        assert np.abs(disp).max() <= amplitude + 1e-5
        # large enough to matter: the worst voxel moves more than half the amplitude
        assert np.abs(disp).max() > 0.5 * amplitude
        assert jacobian_determinant(disp).min() > 0


def test_bspline_amplitude_that_could_fold_is_refused():
    with pytest.raises(ValueError, match="can fold"):
        bspline_displacement((20, 20, 20), np.random.default_rng(0), 4.0, 2.0)


def test_a_given_displacement_replaces_the_velocity_draw():
    rng = np.random.default_rng(0)
    labels = np.zeros((16, 16, 16), np.int64)
    labels[4:12, 4:12, 4:12] = 1
    base = {
        "t1w": labels.astype(np.float32),
        "t2w": 1 - labels.astype(np.float32),
        "mask": np.ones((16, 16, 16), np.float32),
        "labels": labels,
    }
    still = simulate_subject(base, rng, displacement=np.zeros((3, 16, 16, 16), np.float32))
    np.testing.assert_array_equal(still["labels"], labels)
    shift = np.zeros((3, 16, 16, 16), np.float32)
    shift[0] = 2.0  # sample two voxels further along the first axis
    moved = simulate_subject(base, rng, displacement=shift)
    np.testing.assert_array_equal(moved["labels"][2:10], labels[4:12])


def test_add_head_wraps_the_brain_in_skull_and_scalp(icbm_small):
    from contrareg_bids.processing.masks import mask_from_skullstripped
    from contrareg_bids.simulate import add_head, simulate_subject

    rng = np.random.default_rng(3)
    subject = simulate_subject(icbm_small, rng)
    head = add_head(subject, rng, 4.0)
    brain = subject["mask"] > 0
    for key in ("t1w", "t2w"):
        np.testing.assert_array_equal(head[key][brain], subject[key][brain])
        assert (head[key][~brain] > 0).mean() > 0.9  # noise, no exact zeros outside
        assert mask_from_skullstripped(head[key]) is None  # not seen as skull-stripped
    shell = ~brain & (head["t1w"] > 0.5)  # scalp fat: bright in T1w, greyer in T2w
    assert shell.sum() > 0.2 * brain.sum()
    assert head["t2w"][shell].mean() < head["t1w"][shell].mean()
    np.testing.assert_array_equal(head["mask"], subject["mask"])
