"""Age units shared by the BIDS age lookup and the template cohort ages."""

#: Weeks in one unit (a year of 52.1775 weeks).
WEEKS_PER = {"weeks": 1.0, "days": 1.0 / 7.0, "months": 52.1775 / 12.0, "years": 52.1775}

#: Spellings of the units found in sidecars and template descriptions.
UNIT_ALIASES = {
    **dict.fromkeys(("w", "wk", "wks", "week", "weeks"), "weeks"),
    **dict.fromkeys(("d", "day", "days"), "days"),
    **dict.fromkeys(("mo", "month", "months"), "months"),
    **dict.fromkeys(("y", "yr", "yrs", "year", "years"), "years"),
}

#: Post-menstrual age of a term birth: a postnatal age becomes a PMA by adding the
#: gestational age at birth, this one when the data does not give it.
TERM_WEEKS = 40.0


def normalize_unit(units: str) -> str | None:
    """``"Weeks"``, ``"wk."``, ``"mo"`` ... -> ``"weeks"``/``"days"``/``"months"``/``"years"``,
    or None for anything else."""
    return UNIT_ALIASES.get(units.strip().lower().rstrip("."))
