"""argparse types shared by the command lines (the BIDS-App, ``contrareg-train``): numbers
with a bound, a model file stem. Plain Python: imported before anything heavy."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable


def bounded(kind: type, minimum: float, strict: bool) -> Callable[[str], float]:
    """An argparse type: ``kind`` (int or float) at least ``minimum`` (above it if strict)."""

    def convert(value: str):
        try:
            x = kind(value)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}") from None
        if (x <= minimum) if strict else (x < minimum):
            raise argparse.ArgumentTypeError(
                f"must be {'>' if strict else '>='} {minimum}, got {x}"
            )
        return x

    return convert


non_negative_int = bounded(int, 0, strict=False)
positive_int = bounded(int, 1, strict=False)
non_negative_float = bounded(float, 0.0, strict=False)
positive_float = bounded(float, 0.0, strict=True)


def model_name(value: str) -> str:
    """A model bundle's file stem (``OUTPUT_DIR/models/<stem>.safetensors``)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value) or value.endswith(".safetensors"):
        raise argparse.ArgumentTypeError(
            f"--model-name takes a file stem (letters, digits, '_', '.', '-'), got {value!r}"
        )
    return value
