"""Bridges between NIfTI arrays (read by :mod:`contrareg_bids.io.images`) and antspyx images.

ANTs images are converted from the nibabel array and affine (:func:`ants_image`), never read
with ``ants.image_read``, so that every module of the package agrees on the voxel-to-world
mapping (ITK and nibabel can read the same odd header differently). ``ANTsImage.numpy()``
returns the array in the file's voxel order, the same order nibabel uses.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np

from ..io.transforms import sitk_geometry

PathLike = str | os.PathLike
_T = TypeVar("_T")


def ants_image(array: np.ndarray, affine: np.ndarray):
    """antspyx image of an ``(X, Y, Z)`` array on the grid of the NIfTI ``affine``."""
    import ants

    origin, spacing, direction = sitk_geometry(affine)
    return ants.from_numpy(
        np.ascontiguousarray(array, dtype=np.float32),
        origin=list(origin),
        spacing=list(spacing),
        direction=np.asarray(direction).reshape(3, 3),
    )


def ants_random_seed(seed: int) -> int:
    """ANTs' ``--random-seed`` for our ``seed``: ANTs takes 0 as "no seed" (the sampler is
    seeded from the clock, so ``--random-seed 0``, our default, gave a different affine on
    every run), hence ``seed + 1``, one to one for seeds >= 0."""
    if seed < 0:
        raise ValueError(f"random seed {seed} must be >= 0")
    return int(seed) + 1


@contextlib.contextmanager
def ants_seed(seed: int | None) -> Iterator[None]:
    """Seed antsRegistration's random sampling for the duration of the block.

    antspyx 0.6 ignores a ``random_seed=`` argument; it passes ``--random-seed`` only from
    the module-level ``ants.config._random_seed``, which is set here (to
    :func:`ants_random_seed`) and restored after.
    """
    import ants.config as cfg

    old = cfg._random_seed
    cfg._random_seed = None if seed is None else ants_random_seed(seed)
    try:
        yield
    finally:
        cfg._random_seed = old


#: Set in the worker's environment: a call made inside it (brain extraction's affines) runs
#: there directly instead of starting another worker.
_IN_WORKER = "CONTRAREG_ONE_ITK_THREAD_WORKER"

#: The worker: reads a pickled ``(function, args, kwargs)`` from stdin, writes the pickled
#: ``(ok, result or exception)`` to stdout. Nothing of the caller's ``__main__`` is re-run.
_WORKER = """
import os, pickle, sys
result_fd = os.dup(1)
os.dup2(2, 1)  # what the libraries print goes to stderr, not into the result
function, args, kwargs = pickle.load(sys.stdin.buffer)
try:
    out = (True, function(*args, **kwargs))
except BaseException as exc:
    out = (False, exc)
with os.fdopen(result_fd, "wb") as result:
    result.write(pickle.dumps(out))
"""


def run_reproducibly(function: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """``function(*args, **kwargs)`` in a fresh Python process where ITK runs on one thread.

    A seeded antsRegistration is not reproducible on several ITK threads: the Mattes metric
    sums the work units' partial histograms in the order they finish (the same pair, seed
    and machine gave a different affine on each call), and ITK's thread count cannot be
    lowered in a process once ITK has started there. On one thread the transforms are
    bitwise identical run to run; the cost measured on a 0.86 mm neonatal pair was about
    2 s of a 13 s affine (2 cores), plus the worker's start. ``function`` must be importable
    (module level), its arguments and result picklable; its exception is raised here.
    """
    if os.environ.get(_IN_WORKER) == "1":  # already one ITK thread: no second worker
        return function(*args, **kwargs)
    import pickle
    import subprocess

    env = dict(os.environ, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS="1", **{_IN_WORKER: "1"})
    done = subprocess.run(
        [sys.executable, "-c", _WORKER],
        input=pickle.dumps((function, args, kwargs)),
        capture_output=True,
        env=env,
        check=False,
    )
    if done.returncode != 0 or not done.stdout:
        raise RuntimeError(
            f"the worker running {function.__qualname__} stopped (exit {done.returncode}): "
            + done.stderr.decode(errors="replace")[-2000:]
        )
    ok, result = pickle.loads(done.stdout)
    if not ok:
        raise result
    return result
