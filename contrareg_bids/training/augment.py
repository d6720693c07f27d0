"""Spatial and intensity augmentation of single volumes, driven by an explicit generator.

Every function takes a ``numpy.random.Generator`` (never global state) so that a sample is a
pure function of ``(seed, epoch, index)``; see :func:`contrareg_bids.training.stream.
sample_rngs`. Arrays are ``(X, Y, Z)`` float32 intensities in [0, 1] (preprocessed volumes).

Autoencoder pretraining (Dey et al., MICCAI 2022, Sec. 3) uses 128^3 crops, random flips and
"brightness/contrast/saturation" augmentation; the paper gives no magnitudes, the defaults of
:class:`IntensityAugment` are ours (moderate, all configurable).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Window = tuple[slice, slice, slice]


def as_crop_size(crop: int | Sequence[int] | None) -> tuple[int, int, int] | None:
    """Normalise a crop specification: ``None`` (no crop), an int (cube) or three ints."""
    if crop is None:
        return None
    sizes = (int(crop),) * 3 if np.isscalar(crop) else tuple(int(c) for c in crop)
    if len(sizes) != 3 or any(c < 1 for c in sizes):
        raise ValueError(f"crop must be a positive int or three positive ints, got {crop!r}")
    return sizes  # type: ignore[return-value]


def random_window(
    shape: Sequence[int], crop: int | Sequence[int] | None, rng: np.random.Generator
) -> Window:
    """A uniformly placed crop window of size ``crop`` inside ``shape``.

    Along an axis shorter than (or equal to) the crop the window is the whole axis: the crop is
    never padded, so samples of one dataset only share a shape when every volume is at least
    ``crop`` along every axis (or all volumes share one grid, the preprocessed case). One
    integer is drawn per axis whatever the sizes, so the generator stream does not depend on
    the volume shape.
    """
    sizes = as_crop_size(crop)
    window = []
    for axis, n in enumerate(shape[:3]):
        draw = int(rng.integers(0, 2**31 - 1))
        if sizes is None or sizes[axis] >= n:
            window.append(slice(0, n))
        else:
            start = draw % (n - sizes[axis] + 1)
            window.append(slice(start, start + sizes[axis]))
    return tuple(window)  # type: ignore[return-value]


def random_flips(rng: np.random.Generator, p: float = 0.5) -> tuple[bool, bool, bool]:
    """Whether to flip along each of the three axes (independently, probability ``p``)."""
    draws = rng.random(3)
    return tuple(bool(d < p) for d in draws)  # type: ignore[return-value]


def apply_flips(arr: np.ndarray, flips: Sequence[bool]) -> np.ndarray:
    """Flip the last three axes of ``arr`` where ``flips`` is true (returns a view)."""
    axes = tuple(arr.ndim - 3 + k for k, f in enumerate(flips) if f)
    return np.flip(arr, axis=axes) if axes else arr


@dataclass(frozen=True)
class IntensityParams:
    """One draw of :class:`IntensityAugment`: additive shift, contrast factor, gamma."""

    brightness: float = 0.0
    contrast: float = 1.0
    gamma: float = 1.0


@dataclass(frozen=True)
class IntensityAugment:
    """Brightness / contrast / "saturation" jitter for single-channel MRI in [0, 1].

    Applied in this order, then clipped to [0, 1]:

    * **saturation -> gamma.** Colour saturation (blending with the grey image) is the
      identity on a single-channel image. Its MRI counterpart here is a random intensity
      curve ``x ** gamma`` with ``log(gamma) ~ U(-saturation, saturation)``: a monotone,
      non-linear change of the relative tissue contrast (grey/white matter, CSF) such as
      differs between scanners, sequences and neonatal ages, which the autoencoder features
      should tolerate. It keeps 0 and 1 fixed and stays in [0, 1].
    * **contrast.** ``(x - m) * c + m`` with ``c ~ U(1 - contrast, 1 + contrast)`` and ``m``
      the mean intensity (of the foreground when ``foreground_only``).
    * **brightness.** ``x + b`` with ``b ~ U(-brightness, brightness)``.

    ``foreground_only`` (default): the volumes are skull-stripped, so the background is
    exactly 0 and stays 0; only voxels with ``x > 0`` are changed (a raised background never
    occurs at registration time). ``p`` is the probability of applying each of the three
    changes (independently).
    """

    brightness: float = 0.1
    contrast: float = 0.2
    saturation: float = 0.3
    p: float = 1.0
    foreground_only: bool = True

    def __post_init__(self) -> None:
        if self.brightness < 0 or not 0 <= self.contrast < 1 or self.saturation < 0:
            raise ValueError(
                "need brightness >= 0, 0 <= contrast < 1 and saturation >= 0, got "
                f"{self.brightness}, {self.contrast}, {self.saturation}"
            )
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {self.p}")

    def sample(self, rng: np.random.Generator) -> IntensityParams:
        """Draw parameters (always six numbers, so the stream length is fixed)."""
        use = rng.random(3) < self.p
        u = rng.uniform(-1.0, 1.0, size=3)
        return IntensityParams(
            brightness=float(u[0] * self.brightness) if use[0] else 0.0,
            contrast=float(1.0 + u[1] * self.contrast) if use[1] else 1.0,
            gamma=float(np.exp(u[2] * self.saturation)) if use[2] else 1.0,
        )

    def apply(self, x: np.ndarray, params: IntensityParams) -> np.ndarray:
        """Apply ``params`` to ``x`` (any shape, values in [0, 1]); returns a new float32 array."""
        x = np.clip(np.asarray(x, dtype=np.float32), 0.0, 1.0)
        fg = x > 0 if self.foreground_only else np.ones(x.shape, dtype=bool)
        if not fg.any():
            return x.copy()
        y = x.astype(np.float32, copy=True)
        if params.gamma != 1.0:
            y = np.power(y, np.float32(params.gamma), dtype=np.float32)
        if params.contrast != 1.0:
            m = np.float32(y[fg].mean())
            y = (y - m) * np.float32(params.contrast) + m
        if params.brightness != 0.0:
            y = y + np.float32(params.brightness)
        y = np.clip(y, 0.0, 1.0).astype(np.float32, copy=False)
        if self.foreground_only:
            y[~fg] = 0.0
        return y

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.apply(x, self.sample(rng))
