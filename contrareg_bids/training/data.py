"""Training data: volume records, validated loading, an in-memory cache, the datasets.

The volumes are already preprocessed (skull-stripped, intensities in [0, 1], all on one grid);
they are NIfTI files (read with nibabel) or numpy arrays. Nothing here knows about BIDS or
Nipype. Samples are dicts of ``(C, X, Y, Z)`` tensors (``C = 1``); ``DataLoader`` batches
make them ``(N, C, X, Y, Z)``.

All randomness of a sample is a function of ``(seed, epoch, index)`` (see
:mod:`contrareg_bids.training.stream`), so a resumed run reproduces the data stream.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ..io.images import as_labels, as_volume, check_finite, read_volume
from .augment import (
    IntensityAugment,
    IntensityParams,
    Window,
    apply_flips,
    as_crop_size,
    random_flips,
    random_window,
)
from .stream import sample_rngs, unpack_index

Source = str | os.PathLike | np.ndarray

#: Default memory budget of a :class:`VolumeCache` (bytes).
DEFAULT_CACHE_BYTES = 4 * 2**30


# --------------------------------------------------------------------------------- records


@dataclass(eq=False)
class VolumeRecord:
    """One preprocessed volume of one subject (one modality), with optional mask and labels.

    ``image``, ``mask`` and ``labels`` are file paths (``.nii``/``.nii.gz``) or arrays on the
    same grid. ``subject`` identifies the subject (pairs of different subjects are decided on
    it; the train/val split groups by it); ``session`` optionally tells sessions apart when
    aligned same-subject pairs are formed.
    """

    image: Source
    subject: str
    mask: Source | None = None
    labels: Source | None = None
    session: str | None = None

    def __post_init__(self) -> None:
        self.subject = str(self.subject)
        if not self.subject:
            raise ValueError("VolumeRecord.subject must be a non-empty string")
        if self.session is not None:
            self.session = str(self.session)
        for name in ("image", "mask", "labels"):
            value = getattr(self, name)
            if isinstance(value, str | os.PathLike):
                setattr(self, name, Path(value))
            elif value is not None and not isinstance(value, np.ndarray):
                raise TypeError(
                    f"VolumeRecord.{name} must be a path or a numpy array, got {type(value)}"
                )
        if self.image is None:
            raise ValueError("VolumeRecord.image is required")

    @property
    def key(self) -> tuple[str, str]:
        """``(subject, session)``; the session is ``""`` when not given."""
        return (self.subject, self.session or "")

    def name(self, kind: str = "image") -> str:
        """The file name of ``kind`` (or a description of the array), for messages."""
        return source_name(getattr(self, kind), self.subject)


def source_name(source: Source | None, subject: str | None = None) -> str:
    if isinstance(source, np.ndarray):
        who = f" of subject {subject}" if subject else ""
        return f"<array {tuple(source.shape)} {source.dtype}{who}>"
    return str(source)


def _check_records(records: Iterable[VolumeRecord], what: str) -> list[VolumeRecord]:
    out = list(records)
    if not out:
        raise ValueError(f"{what}: no records")
    for rec in out:
        if not isinstance(rec, VolumeRecord):
            raise TypeError(f"{what}: expected VolumeRecord items, got {type(rec).__name__}")
    return out


# --------------------------------------------------------------------------------- loading


def _read(source: Source, name: str) -> np.ndarray:
    """A 3-D array of a file (stored type, NIfTI scaling applied) or of an array itself."""
    if isinstance(source, np.ndarray):
        return as_volume(source, name)
    return read_volume(source, dtype=None, finite=False)[0]


def _check_numeric(arr: np.ndarray, name: str) -> None:
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"{name}: non-numeric data of dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{name}: complex-valued data is not supported")


def load_volume(source: Source) -> np.ndarray:
    """An intensity volume as a 3-D float32 array.

    A trailing singleton 4th (and higher) dimension is squeezed. Raises ``ValueError`` naming
    the file for an unreadable or truncated file, data that is not 3-D, or NaN/inf values;
    ``FileNotFoundError`` for a missing file.
    """
    name = source_name(source)
    arr = _read(source, name)
    _check_numeric(arr, name)
    out = np.asarray(arr, dtype=np.float32)
    check_finite(out, name)
    return out


def load_mask(source: Source) -> np.ndarray:
    """A brain mask as a 3-D float32 array of 0/1 (values > 0.5 are foreground)."""
    name = source_name(source)
    arr = _read(source, name)
    _check_numeric(arr, name)
    check_finite(arr, name)
    return (np.asarray(arr) > 0.5).astype(np.float32)


def load_labels(source: Source) -> np.ndarray:
    """A label map as a 3-D int64 array; float storage must hold integers (within 1e-3)."""
    name = source_name(source)
    return as_labels(_read(source, name), name)


LOADERS: dict[str, Callable[[Source], np.ndarray]] = {
    "image": load_volume,
    "mask": load_mask,
    "labels": load_labels,
}


# --------------------------------------------------------------------------------- cache


class VolumeCache:
    """Least-recently-used in-memory cache of loaded volumes, bounded by ``max_bytes``.

    Each file (or array) is loaded and validated once per process; returned arrays are
    read-only (copy before modifying). A volume larger than the budget is returned without
    being cached. ``max_bytes=0`` disables caching.

    DataLoader workers: each worker process ends up with its own copy of the cache (forked
    or, with the spawn start method, unpickled empty), so the budget applies per worker;
    with ``w`` workers the data may be held ``w`` times. Access is thread-safe.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[tuple, tuple[np.ndarray, Any]] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _key(source: Source, kind: str) -> tuple:
        if isinstance(source, np.ndarray):
            return (kind, "array", id(source))
        return (kind, "file", os.fspath(Path(source).absolute()))

    def get(self, source: Source, kind: str = "image") -> np.ndarray:
        """The loaded ``kind`` (``"image"``, ``"mask"`` or ``"labels"``) of ``source``."""
        if kind not in LOADERS:
            raise ValueError(f"kind must be one of {sorted(LOADERS)}, got {kind!r}")
        key = self._key(source, kind)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry[0]
            self.misses += 1
        arr = LOADERS[kind](source).view()
        arr.flags.writeable = False
        if arr.nbytes <= self.max_bytes:
            with self._lock:
                if key not in self._entries:
                    # keep a reference to an array source so that its id() is not reused
                    ref = source if isinstance(source, np.ndarray) else None
                    self._entries[key] = (arr, ref)
                    self._nbytes += arr.nbytes
                    while self._nbytes > self.max_bytes:
                        _, (old, _) = self._entries.popitem(last=False)
                        self._nbytes -= old.nbytes
        return arr

    def image(self, record: VolumeRecord) -> np.ndarray:
        return self.get(record.image, "image")

    def mask(self, record: VolumeRecord) -> np.ndarray | None:
        return None if record.mask is None else self.get(record.mask, "mask")

    def labels(self, record: VolumeRecord) -> np.ndarray | None:
        return None if record.labels is None else self.get(record.labels, "labels")

    @property
    def nbytes(self) -> int:
        return self._nbytes

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._nbytes = 0

    def __getstate__(self) -> dict:
        # pickled into spawned workers: start empty, without the (unpicklable) lock
        return {"max_bytes": self.max_bytes}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["max_bytes"])


class Loaded(NamedTuple):
    image: np.ndarray
    mask: np.ndarray | None
    labels: np.ndarray | None


def _load_record(cache: VolumeCache, rec: VolumeRecord, labels: bool = True) -> Loaded:
    image = cache.image(rec)
    mask = cache.mask(rec)
    lab = cache.labels(rec) if labels else None
    for kind, arr in (("mask", mask), ("labels", lab)):
        if arr is not None and arr.shape != image.shape:
            raise ValueError(
                f"{rec.name(kind)}: {kind} shape {arr.shape} differs from the image "
                f"{rec.name()} shape {image.shape}"
            )
    return Loaded(image, mask, lab)


def _to_tensor(arr: np.ndarray, dtype: np.dtype | type = np.float32) -> torch.Tensor:
    """``(X, Y, Z)`` -> contiguous, writable ``(1, X, Y, Z)`` tensor (always a copy)."""
    return torch.from_numpy(np.array(arr[None], dtype=dtype, copy=True, order="C"))


class _Base(Dataset):
    """Shared state: seed, epoch, cache."""

    random = True

    def __init__(self, seed: int, cache: VolumeCache | None, cache_bytes: int):
        self.seed = int(seed)
        self.epoch = 0
        self.cache = cache if cache is not None else VolumeCache(cache_bytes)

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for plain integer indices (``(epoch, index)`` items carry their own)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def _unpack(self, item: Any) -> tuple[int, int]:
        epoch, index = unpack_index(item, self.epoch)
        n = len(self)  # type: ignore[arg-type]
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for {type(self).__name__} of {n}")
        return epoch, index


# --------------------------------------------------------------------------------- datasets


class AutoencoderDataset(_Base):
    """Random crops of one modality for autoencoder pretraining: ``{"image", "id"}``.

    * ``image``: ``(1, cx, cy, cz)`` float32 in [0, 1], a uniformly placed ``crop``-sized
      window (int or three ints). Along an axis where the volume is not longer than the crop
      the whole axis is taken (no padding; the autoencoder pads internally to multiples of
      8), so on one preprocessed grid all samples share a shape.
    * ``flips``: flip along each axis independently with probability 0.5.
    * ``augment``: ``True`` -> :class:`~contrareg_bids.training.augment.IntensityAugment`
      defaults (brightness, contrast, gamma as "saturation"; see there), or an instance,
      or ``False``; the result is clipped to [0, 1].
    * Length ``len(records) * samples_per_volume``; index ``i`` uses record
      ``i % len(records)``.
    """

    def __init__(
        self,
        records: Sequence[VolumeRecord],
        crop: int | Sequence[int] | None = 128,
        flips: bool = True,
        augment: bool | IntensityAugment = True,
        seed: int = 0,
        *,
        samples_per_volume: int = 1,
        cache: VolumeCache | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ):
        super().__init__(seed, cache, cache_bytes)
        self.records = _check_records(records, "AutoencoderDataset")
        self.crop = as_crop_size(crop)
        self.flips = bool(flips)
        if isinstance(augment, IntensityAugment):
            self.augment: IntensityAugment | None = augment
        else:
            self.augment = IntensityAugment() if augment else None
        if samples_per_volume < 1:
            raise ValueError(f"samples_per_volume must be >= 1, got {samples_per_volume}")
        self.samples_per_volume = int(samples_per_volume)

    def __len__(self) -> int:
        return len(self.records) * self.samples_per_volume

    def params(
        self, index: int, epoch: int, shape: Sequence[int]
    ) -> tuple[Window, tuple[bool, bool, bool], IntensityParams]:
        """Crop window, flips and intensity parameters of sample ``index`` in ``epoch``."""
        r_crop, r_flip, r_int = sample_rngs(self.seed, epoch, index, 3)
        window = random_window(shape, self.crop, r_crop)
        flips = random_flips(r_flip) if self.flips else (False, False, False)
        inten = self.augment.sample(r_int) if self.augment is not None else IntensityParams()
        return window, flips, inten

    def __getitem__(self, item: Any) -> dict[str, Any]:
        epoch, index = self._unpack(item)
        rec = self.records[index % len(self.records)]
        image = self.cache.image(rec)
        window, flips, inten = self.params(index, epoch, image.shape)
        out = apply_flips(image[window], flips)
        if self.augment is not None:
            out = self.augment.apply(out, inten)
        else:
            out = np.clip(out, 0.0, 1.0)
        return {"image": _to_tensor(out), "id": rec.subject}


class PairDataset(_Base):
    """(moving, fixed) pairs for registration training and validation.

    Pairing:

    * default: moving from subject A, fixed from subject B with ``A != B`` (by ``subject``);
      training (``random=True``): sample ``i`` uses moving record ``i % len(moving)`` and a
      fixed record drawn uniformly among the other subjects'; validation (``random=False``):
      a fixed list, each moving record paired with the next ``pairs_per_moving`` other
      subjects in sorted subject order (cyclic), identical at every epoch.
    * ``same_subject=True``: the aligned same-subject pair (matched on ``(subject, session)``;
      for SupPretrain).
    * ``template``: that record is the fixed image of every pair (``fixed_records`` unused,
      pass ``None``).
    * ``pairs``: an explicit list of ``(moving_index, fixed_index)`` overrides all of the
      above (``fixed_index`` ignored with a template).

    Samples: ``moving``, ``fixed`` ``(1, X, Y, Z)`` float32; ``moving_mask``, ``fixed_mask``
    ``(1, X, Y, Z)`` float32 0/1, **always present**: a record without a mask gets all ones
    (so a masked loss degrades to the unmasked one) and ``{side}_has_mask`` (bool tensor)
    says which; ``moving_labels``, ``fixed_labels`` int64, present when at least one record
    of that side has labels (records without get zeros and ``{side}_has_labels`` False), so
    every sample of a dataset has the same keys and batches collate; ``moving_id``,
    ``fixed_id`` (subject ids, strings).

    ``crop``: ``None`` (default, the whole grid: registration runs on the full volume) or a
    size; the same window is cut from both images (they must share one grid), placed
    uniformly at random (in validation: from epoch 0, so again fixed).
    ``samples_per_epoch`` (training): default ``len(moving_records)``.
    """

    def __init__(
        self,
        moving_records: Sequence[VolumeRecord],
        fixed_records: Sequence[VolumeRecord] | None = None,
        same_subject: bool = False,
        template: VolumeRecord | None = None,
        crop: int | Sequence[int] | None = None,
        seed: int = 0,
        *,
        random: bool = True,
        samples_per_epoch: int | None = None,
        pairs_per_moving: int = 1,
        pairs: Sequence[tuple[int, int]] | None = None,
        cache: VolumeCache | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ):
        super().__init__(seed, cache, cache_bytes)
        self.random = bool(random)
        self.moving = _check_records(moving_records, "PairDataset moving_records")
        self.same_subject = bool(same_subject)
        self.template = template
        self.crop = as_crop_size(crop)
        if template is not None:
            if not isinstance(template, VolumeRecord):
                raise TypeError("template must be a VolumeRecord")
            if same_subject:
                raise ValueError("same_subject=True and template are mutually exclusive")
            if fixed_records is not None:
                raise ValueError("give either fixed_records or template, not both")
            self.fixed: list[VolumeRecord] = []
        else:
            if fixed_records is None:
                raise ValueError("PairDataset needs fixed_records or a template")
            self.fixed = _check_records(fixed_records, "PairDataset fixed_records")
        if pairs_per_moving < 1:
            raise ValueError(f"pairs_per_moving must be >= 1, got {pairs_per_moving}")

        self._candidates: list[list[int]] = []
        self._aligned: list[int] = []
        if pairs is not None:
            self._pairs = self._check_pairs(pairs)
        else:
            self._prepare_pairing()
            self._pairs = None if self.random else self._validation_pairs(pairs_per_moving)
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be >= 1, got {samples_per_epoch}")
        self.samples_per_epoch = samples_per_epoch or len(self.moving)
        fixed_side = [template] if template is not None else self.fixed
        self._has_labels = {
            "moving": any(r.labels is not None for r in self.moving),
            "fixed": any(r.labels is not None for r in fixed_side),
        }

    # -- pairing
    def _check_pairs(self, pairs: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        out = []
        for mi, fi in pairs:
            mi, fi = int(mi), int(fi)
            if not 0 <= mi < len(self.moving):
                raise ValueError(f"pair moving index {mi} out of range")
            if self.template is None and not 0 <= fi < len(self.fixed):
                raise ValueError(f"pair fixed index {fi} out of range")
            out.append((mi, -1 if self.template is not None else fi))
        if not out:
            raise ValueError("pairs is empty")
        return out

    def _prepare_pairing(self) -> None:
        if self.template is not None:
            return
        if self.same_subject:
            by_key: dict[tuple[str, str], int] = {}
            for j, rec in enumerate(self.fixed):
                if rec.key in by_key:
                    raise ValueError(f"fixed_records: two records for {rec.key}")
                by_key[rec.key] = j
            missing = [m.key for m in self.moving if m.key not in by_key]
            if missing:
                raise ValueError(f"same_subject: no fixed record for {missing[:5]}")
            self._aligned = [by_key[m.key] for m in self.moving]
            return
        for m in self.moving:
            cand = [j for j, f in enumerate(self.fixed) if f.subject != m.subject]
            if not cand:
                raise ValueError(
                    f"no fixed record of a subject other than {m.subject!r}; pairs of "
                    "different subjects need at least two subjects"
                )
            self._candidates.append(cand)

    def _validation_pairs(self, per_moving: int) -> list[tuple[int, int]]:
        if self.template is not None:
            return [(i, -1) for i in range(len(self.moving))]
        if self.same_subject:
            return list(enumerate(self._aligned))
        order = sorted(range(len(self.fixed)), key=lambda j: (*self.fixed[j].key, j))
        pairs = []
        for i, m in enumerate(self.moving):
            cand = [j for j in order if self.fixed[j].subject != m.subject]
            # start after the subject of the moving image in sorted order (cyclic)
            start = next((k for k, j in enumerate(cand) if self.fixed[j].subject > m.subject), 0)
            cand = cand[start:] + cand[:start]
            pairs.extend((i, cand[k % len(cand)]) for k in range(min(per_moving, len(cand))))
        return pairs

    def pair_indices(self, index: int, epoch: int | None = None) -> tuple[int, int]:
        """``(moving_index, fixed_index)`` of sample ``index`` (fixed ``-1`` = template)."""
        epoch = self.epoch if epoch is None else epoch
        if self._pairs is not None:
            return self._pairs[index]
        mi = index % len(self.moving)
        if self.template is not None:
            return mi, -1
        if self.same_subject:
            return mi, self._aligned[mi]
        (rng,) = sample_rngs(self.seed, epoch, index, 1)
        cand = self._candidates[mi]
        return mi, cand[int(rng.integers(len(cand)))]

    def __len__(self) -> int:
        return len(self._pairs) if self._pairs is not None else self.samples_per_epoch

    def __getitem__(self, item: Any) -> dict[str, Any]:
        epoch, index = self._unpack(item)
        if not self.random:
            epoch = 0
        mi, fi = self.pair_indices(index, epoch)
        mrec = self.moving[mi]
        frec = self.template if fi < 0 else self.fixed[fi]
        assert frec is not None
        mov = _load_record(self.cache, mrec, self._has_labels["moving"])
        fix = _load_record(self.cache, frec, self._has_labels["fixed"])
        if mov.image.shape != fix.image.shape:
            raise ValueError(
                f"moving {mrec.name()} has shape {mov.image.shape} but fixed {frec.name()} has "
                f"shape {fix.image.shape}: pairs must share one grid"
            )
        window: Window = tuple(slice(0, n) for n in mov.image.shape)  # type: ignore[assignment]
        if self.crop is not None:
            # stream 1 (stream 0 is used by the pairing)
            rng = sample_rngs(self.seed, epoch, index, 2)[1]
            window = random_window(mov.image.shape, self.crop, rng)
        sample: dict[str, Any] = {}
        for side, rec, vol in (("moving", mrec, mov), ("fixed", frec, fix)):
            sample[side] = _to_tensor(vol.image[window])
            mask = vol.mask[window] if vol.mask is not None else None
            sample[f"{side}_mask"] = (
                _to_tensor(mask) if mask is not None else torch.ones_like(sample[side])
            )
            sample[f"{side}_has_mask"] = torch.tensor(mask is not None)
            if self._has_labels[side]:
                lab = vol.labels[window] if vol.labels is not None else None
                sample[f"{side}_labels"] = (
                    _to_tensor(lab, np.int64)
                    if lab is not None
                    else torch.zeros(sample[side].shape, dtype=torch.int64)
                )
                sample[f"{side}_has_labels"] = torch.tensor(lab is not None)
            sample[f"{side}_id"] = rec.subject
        return sample


# --------------------------------------------------------------------------------- split


def _subject_rank(seed: int, subject: str) -> str:
    return hashlib.sha256(f"{int(seed)}\x00{subject}".encode()).hexdigest()


def split_subjects(
    subjects: Iterable[str], val_fraction: float, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Deterministic split of subject ids: ``(train_ids, val_ids)``, both sorted.

    ``round(val_fraction * n)`` subjects go to validation (at least one when
    ``val_fraction > 0`` and at least one stays for training), chosen by the order of
    ``sha256(seed, subject)``: independent of input order, platform and NumPy version.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ids = sorted({str(s) for s in subjects})
    n = len(ids)
    n_val = round(val_fraction * n)
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    elif n < 2:
        n_val = 0
    ranked = sorted(ids, key=lambda s: _subject_rank(seed, s))
    val = set(ranked[:n_val])
    return [s for s in ids if s not in val], sorted(val)


def split_records(
    records: Sequence[VolumeRecord], val_fraction: float, seed: int = 0
) -> tuple[list[VolumeRecord], list[VolumeRecord]]:
    """``(train, val)`` by subject (all records of a subject on one side; order kept).

    Lists of different modalities over the same subjects get the same split (the choice
    depends only on the subject ids and ``seed``).
    """
    records = list(records)
    _, val_ids = split_subjects((r.subject for r in records), val_fraction, seed)
    val = set(val_ids)
    return [r for r in records if r.subject not in val], [r for r in records if r.subject in val]


# --------------------------------------------------------------------------------- fingerprint


def _signature(source: Source, content: bool) -> list[str]:
    if isinstance(source, np.ndarray):
        arr = np.ascontiguousarray(source)
        digest = hashlib.sha256(arr.tobytes()).hexdigest()
        return ["<array>", str(arr.shape), str(arr.dtype), digest]
    path = Path(source)
    st = path.stat()
    if content:
        h = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return [path.name, str(st.st_size), "sha256:" + h.hexdigest()]
    return [path.name, str(st.st_size), str(st.st_mtime_ns)]


def data_fingerprint(records: Iterable[VolumeRecord], *, content: bool = False) -> str:
    """sha256 (hex) identifying a training set, for the model bundle's metadata.

    Over the sorted entries ``(subject, session, role, file name, size, mtime_ns)`` of each
    image, mask and label file (``content=True``: the file's sha256 instead of its mtime,
    stable across copies; slower), or ``(shape, dtype, sha256 of the data)`` of an array.
    Independent of record order and of the directory the files are in.
    """
    entries = []
    for rec in records:
        for role in ("image", "mask", "labels"):
            source = getattr(rec, role)
            if source is not None:
                entries.append(
                    [rec.subject, rec.session or "", role, *_signature(source, content)]
                )
    entries.sort()
    payload = json.dumps(["contrareg-data-v1", entries], separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


__all__ = [
    "DEFAULT_CACHE_BYTES",
    "AutoencoderDataset",
    "IntensityAugment",
    "PairDataset",
    "VolumeCache",
    "VolumeRecord",
    "data_fingerprint",
    "load_labels",
    "load_mask",
    "load_volume",
    "split_records",
    "split_subjects",
]
