"""Reproducible sample order and per-sample randomness; the DataLoader factory.

Reproducibility model (what makes an interrupted-and-resumed run see the same data):

* The randomness of sample ``index`` in ``epoch`` comes only from
  :func:`sample_rngs` ``(seed, epoch, index)``, never from global or per-worker state, so it
  does not depend on the number of workers, on which worker loads the sample, or on what
  was loaded before.
* The order of the samples in an epoch is a permutation drawn from ``(seed, epoch)`` alone
  (:class:`EpochSampler`; ``DistributedSampler`` does the same with its ``seed``).
* :class:`EpochSampler` yields ``(epoch, index)`` pairs, so the epoch travels with each
  index into the workers: persistent workers hold their own copy of the dataset, on which a
  ``dataset.set_epoch`` call in the main process would have no effect.

Per epoch call ``loader.sampler.set_epoch(epoch)`` (or :func:`set_loader_epoch`); to resume
in the middle of an epoch pass ``skip=`` the number of samples this rank already consumed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from contrareg_bids.processing.threads import available_cpus

_MASK63 = (1 << 63) - 1


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
    """``index`` or ``(epoch, index)`` (as yielded by :class:`EpochSampler`) -> both."""
    if isinstance(item, tuple | list):
        epoch, index = item
        return int(epoch), int(index)
    return int(default_epoch), int(item)


class EpochSampler(Sampler):
    """Yields ``(epoch, index)``; the order is a function of ``(seed, epoch)`` only.

    With ``inner`` (e.g. a ``DistributedSampler``) the indices are the inner sampler's, whose
    ``set_epoch`` is forwarded; otherwise ``range(n)``, permuted when ``shuffle``.
    ``set_epoch(epoch, skip=k)`` drops the first ``k`` indices of that epoch (resume).
    """

    def __init__(
        self,
        n: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        inner: Sampler | None = None,
    ):
        self.n = int(n)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.inner = inner
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch = int(epoch)
        self.skip = max(int(skip), 0)
        if self.inner is not None and hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(self.epoch)

    def indices(self) -> list[int]:
        """The indices of the current epoch, before ``skip``."""
        if self.inner is not None:
            return [int(i) for i in self.inner]
        if not self.shuffle:
            return list(range(self.n))
        rng = np.random.default_rng(_entropy(self.seed, self.epoch, 0x5EED))
        return [int(i) for i in rng.permutation(self.n)]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self.indices()[self.skip :]:
            yield (self.epoch, index)

    def __len__(self) -> int:
        total = len(self.inner) if self.inner is not None else self.n
        return max(total - self.skip, 0)


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


def make_loader(
    dataset: Dataset,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    num_workers: int | None = None,
    seed: int = 0,
    distributed: bool = False,
    *,
    shuffle: bool | None = None,
    drop_last: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    prefetch_factor: int | None = None,
) -> DataLoader:
    """A reproducible ``DataLoader`` over one of the datasets of this package.

    * ``shuffle`` defaults to the dataset's ``random`` attribute (training: True; validation
      pair lists: False).
    * The sampler is an :class:`EpochSampler` (``loader.sampler``); call
      ``loader.sampler.set_epoch(epoch)`` at the start of each epoch, also when
      ``distributed`` (it forwards to the ``DistributedSampler`` it wraps, which shards the
      indices over ``world_size`` ranks, taken from ``torch.distributed`` unless given).
    * ``generator`` is a ``torch.Generator`` seeded with ``seed`` and ``worker_init_fn`` is
      :func:`seed_worker`; with the per-sample generators of the datasets, the same seed
      gives identical batches for any ``num_workers``.
    * ``num_workers=None`` -> :func:`default_num_workers`; ``persistent_workers`` when > 0;
      ``pin_memory`` only when ``device`` is CUDA.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers is None:
        num_workers = default_num_workers()
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if shuffle is None:
        shuffle = bool(getattr(dataset, "random", True))
    n = len(dataset)  # type: ignore[arg-type]
    inner = None
    if distributed:
        inner = DistributedSampler(
            dataset,
            num_replicas=world_size,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
    sampler = EpochSampler(n, shuffle=shuffle, seed=seed, inner=inner)
    generator = torch.Generator()
    generator.manual_seed(int(seed) & _MASK63)
    extra: dict[str, Any] = {}
    if num_workers > 0:
        extra["persistent_workers"] = True
        if prefetch_factor is not None:
            extra["prefetch_factor"] = prefetch_factor
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=torch.device(device).type == "cuda",
        drop_last=drop_last,
        worker_init_fn=seed_worker,
        generator=generator,
        **extra,
    )


def set_loader_epoch(loader: DataLoader, epoch: int, skip: int = 0) -> None:
    """Set the epoch of the loader's sampler (and dataset, for direct indexing)."""
    sampler = loader.sampler
    if hasattr(sampler, "set_epoch"):
        if isinstance(sampler, EpochSampler):
            sampler.set_epoch(epoch, skip=skip)
        else:
            sampler.set_epoch(epoch)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)


__all__ = [
    "EpochSampler",
    "available_cpus",
    "default_num_workers",
    "make_loader",
    "sample_rngs",
    "seed_worker",
    "set_loader_epoch",
    "unpack_index",
]
