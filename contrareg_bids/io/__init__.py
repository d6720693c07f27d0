"""Files in and out: BIDS queries and ages (:mod:`.bids`, :mod:`.units`), the validator
(:mod:`.validation`), precomputed derivatives and label tables (:mod:`.derivatives`),
TemplateFlow references (:mod:`.templates`), NIfTI checks (:mod:`.images`), images and ITK
transforms (:mod:`.transforms`), model bundles (:mod:`.bundle`), run log folders
(:mod:`.run_logs`).

Imports stay light: the bundle API (which needs torch) is re-exported lazily, so
``from contrareg_bids.io import load_model`` works without importing torch for the other
helpers of this package.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    name: "bundle"
    for name in (
        "BundleError",
        "BundleMetadata",
        "GridSpec",
        "ModelBundle",
        "describe_bundle",
        "load_model",
        "save_bundle",
        "write_sidecar",
    )
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
