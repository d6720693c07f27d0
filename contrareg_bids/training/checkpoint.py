"""Training checkpoints: everything needed to continue a run exactly where it stopped.

Checkpoints are our own files, read back with ``torch.load(weights_only=True)`` (tensors and
plain containers only: no code is unpickled). Writes are atomic (temporary name, then
``os.replace``), so a kill during a save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_NAME = "last.pt"


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` whole or not at all, flushed to the disk
    (:func:`~contrareg_bids.io.atomic.atomic_output`)."""
    from ..io.atomic import atomic_output

    with atomic_output(path, fsync=True) as tmp:
        torch.save(obj, tmp)


def rng_state() -> dict[str, Any]:
    """Global RNG states (Python, NumPy legacy, torch CPU and CUDA) as safe-to-load objects."""
    py = random.getstate()
    np_state = np.random.get_state()  # noqa: NPY002 (third-party code may use it)
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_s = state["numpy"]
    legacy = (np_s[0], np_s[1].numpy().astype(np.uint32), *np_s[2:])
    np.random.set_state(legacy)  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, **parts: Any) -> None:
    """Save named parts (state dicts, step, generator states...) plus the global RNG states."""
    atomic_torch_save({**parts, "rng": rng_state()}, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (no code is unpickled)."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # corrupt, truncated, or not ours
        raise ValueError(
            f"cannot read training checkpoint {path}: {err}. Delete it to restart from scratch."
        ) from err
