"""A resumable, rank-aware stream of sample indices and the randomness of each sample.

Reproducibility model (what makes an interrupted-and-resumed run see the same data):

* Batch ``s`` is a pure function of ``(seed, s)`` (:class:`StepSampler`), so a run killed at
  step ``k`` and resumed draws exactly the batches it would have.
* The randomness of sample ``index`` in ``epoch`` comes only from :func:`sample_rngs`
  ``(seed, epoch, index)``, never from global or per-worker state, so it does not depend on
  the number of workers, on which worker loads the sample, or on what was loaded before.
* The trainer's sampler yields ``(epoch, index)`` items (:func:`unpack_index`), so the epoch
  travels with each index into the workers: persistent workers hold their own copy of the
  dataset, on which a ``dataset.set_epoch`` call in the main process would have no effect.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from ..runtime import available_cpus

__all__ = [
    "StepSampler",
    "default_num_workers",
    "epoch_permutation",
    "sample_rngs",
    "seed_worker",
    "seeded_generator",
    "unpack_index",
]


def _entropy(*values: int) -> list[int]:
    out = []
    for v in values:
        v = int(v)
        if v < 0:
            raise ValueError(f"seed, epoch and index must be >= 0, got {v}")
        out.append(v)
    return out


def sample_rngs(seed: int, epoch: int, index: int, n: int = 1) -> list[np.random.Generator]:
    """``n`` independent generators for sample ``index`` of ``epoch`` (``SeedSequence`` spawn).

    Independent streams per purpose (crop, flips, intensities, pairing) mean that switching
    one augmentation off does not change the draws of the others.
    """
    ss = np.random.SeedSequence(_entropy(seed, epoch, index))
    return [np.random.default_rng(child) for child in ss.spawn(n)]


def unpack_index(item: Any, default_epoch: int) -> tuple[int, int]:
    """``index`` or ``(epoch, index)`` (as the trainer's sampler yields them) -> both."""
    if isinstance(item, tuple | list):
        epoch, index = item
        return int(epoch), int(index)
    return int(default_epoch), int(item)


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed Python and NumPy global state from the worker's torch seed.

    The datasets here do not use global state; this only makes third-party code that does
    (and anything a user adds) reproducible too. The torch seed of a worker is derived by the
    DataLoader from its seeded ``generator``.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)  # noqa: NPY002 - the legacy global state is what is seeded here
    random.seed(seed)


def default_num_workers() -> int:
    """``min(2, cpus - 1)``: one core stays with the training process (which runs the model),
    so a 2-core machine gets 1 loader worker and both cores are busy without
    oversubscription; loading preprocessed, cached volumes rarely needs more than 2."""
    return max(0, min(2, available_cpus() - 1))


def epoch_permutation(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The order of the ``n`` samples in ``epoch``: a permutation seeded by (seed, epoch)."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)


class StepSampler(Sampler[int]):
    """Yields the sample indices of global steps ``start_step, start_step + 1, ...``.

    Each epoch is one permutation of the dataset, split across ``world_size`` ranks (rank r
    takes every ``world_size``-th sample), ``batch_size`` samples per rank per step; the
    tail of an epoch that does not fill a step on every rank is dropped, as
    ``DistributedSampler(drop_last=True)`` does. Also calls ``dataset.set_epoch`` lazily
    through :meth:`epoch_of`.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        start_step: int = 0,
        total_steps: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ):
        if n < batch_size * world_size:
            raise ValueError(
                f"the dataset has {n} samples; at least batch_size x world_size = "
                f"{batch_size * world_size} are needed"
            )
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start_step, self.total_steps = start_step, total_steps
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.steps_per_epoch = n // (batch_size * world_size)

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def indices_for_step(self, step: int) -> list[int]:
        epoch, pos = divmod(step, self.steps_per_epoch)
        perm = epoch_permutation(self.n, self.seed, epoch, self.shuffle)
        per_step = self.batch_size * self.world_size
        chunk = perm[pos * per_step : (pos + 1) * per_step]
        return [int(i) for i in chunk[self.rank :: self.world_size]]

    def __iter__(self):
        step = self.start_step
        while self.total_steps is None or step < self.total_steps:
            yield from self.indices_for_step(step)
            step += 1

    def __len__(self) -> int:
        if self.total_steps is None:
            raise TypeError("an unbounded StepSampler has no length")
        return max(self.total_steps - self.start_step, 0) * self.batch_size


def seeded_generator(seed: int, *salt: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded from ``seed`` and integer ``salt``."""
    g = torch.Generator(device=device)
    g.manual_seed(int(np.random.SeedSequence([seed, *salt]).generate_state(1, np.uint64)[0] >> 1))
    return g
