"""The registration settings object: defaults declared once, validated when made, built
from the command line's option names, and a JSON round trip (the run's configuration, the
ContraRegister node's input)."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, replace
from pathlib import Path

import pytest

from contrareg_bids.settings import (
    DEFAULT_SETTINGS,
    OPTION_FIELDS,
    FineSettings,
    RefineSettings,
    RegistrationSettings,
)


def test_defaults_are_the_recipe_measured_on_real_scans():
    d = DEFAULT_SETTINGS
    assert (d.method, d.model, d.lam, d.max_folding, d.device) == (
        "contrareg",
        None,
        0.8,
        0.5,
        "auto",
    )
    assert (d.refine.steps, d.refine.draws, d.fine.steps) == (0, 1, 80)
    with pytest.raises(FrozenInstanceError):
        d.lam = 0.1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"method": "syn"}, "registration method"),
        ({"lam": 1.5}, r"lambda must be in \[0, 1\]"),
        ({"lam": "sometimes"}, "a number in"),
        ({"max_folding": 101.0}, "folding budget"),
        ({"refine": {"steps": -1}}, "refine steps"),
        ({"fine": {"steps": 5, "control": 0}}, "control spacing"),
    ],
)
def test_what_cannot_run_is_refused_when_made(change, message):
    with pytest.raises(ValueError, match=message):
        RegistrationSettings(**change)


def test_built_from_option_names_and_back():
    options = {"registration": "contrareg", "model": "m.safetensors", "lam": "auto",
               "max_folding": 0.3, "refine_steps": 9, "refine_draws": 4, "fine_steps": 0,
               "device": "cpu"}  # fmt: skip
    s = RegistrationSettings.from_options(options, seed=7)
    assert s.auto_lambda and s.model == Path("m.safetensors") and s.refine.seed == 7
    assert s.options() == {**options, "model": Path("m.safetensors")}
    assert set(s.options()) == set(OPTION_FIELDS)
    assert RegistrationSettings.from_dict(s.to_dict()) == s
    kept = RegistrationSettings.from_options({"lam": 0.2}, base=s)  # the rest from base
    assert (kept.lam, kept.refine, kept.fine) == (0.2, s.refine, s.fine)
    assert RegistrationSettings.from_options({}) == DEFAULT_SETTINGS


def test_parts_are_the_torch_codes_own_settings():
    """The refinement and fine-stage parts are what nn/refine takes, unchanged."""
    from contrareg_bids.nn import refine

    assert refine.RefineSettings is RefineSettings and refine.FineSettings is FineSettings
    s = replace(DEFAULT_SETTINGS, refine=RefineSettings(steps=3, draws=2))
    assert s.refine == RefineSettings(steps=3, draws=2, seed=0)
