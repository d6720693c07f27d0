"""A resumable, rank-aware stream of sample indices: batch ``s`` is a pure function of
``(seed, s)``, so a run killed at step ``k`` and resumed draws exactly the batches it would have.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Sampler


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
