"""Training losses: similarity terms (all minimised) and the velocity-field regulariser.

Every similarity is an ``nn.Module`` with ``forward(fixed, moved, mask=None)`` returning a
float32 scalar, lower = more similar; :class:`ContrastiveSimilarity` adds optional external
negatives and a sampling generator.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ._checks import set_finite_checks
from .local_mi import LocalMutualInformation
from .mi import MutualInformation
from .mind import MINDSSC, mind_ssc
from .ncc import LocalNCC
from .ngf import NormalizedGradientFields
from .patchnce import ContrastiveSimilarity, PatchNCELoss, resize_mask
from .regularizers import Diffusion, gradient_loss

__all__ = [
    "MINDSSC",
    "SIMILARITIES",
    "ContrastiveSimilarity",
    "Diffusion",
    "LocalMutualInformation",
    "LocalNCC",
    "MutualInformation",
    "NormalizedGradientFields",
    "PatchNCELoss",
    "build_similarity",
    "gradient_loss",
    "mind_ssc",
    "resize_mask",
    "set_finite_checks",
]

_SIMPLE: dict[str, type[nn.Module]] = {
    "mi": MutualInformation,
    "localmi": LocalMutualInformation,
    "mind": MINDSSC,
    "ngf": NormalizedGradientFields,
    "ncc": LocalNCC,
}
_CONTRASTIVE = {"cr": False, "mcr": True}  # name -> masked
#: every name :func:`build_similarity` accepts
SIMILARITIES: tuple[str, ...] = (*_SIMPLE, *_CONTRASTIVE)


def build_similarity(name: str, **kwargs: Any) -> nn.Module:
    """Build a similarity loss by name, passing ``kwargs`` to its constructor.

    ``mi``, ``localmi``, ``mind``, ``ngf``, ``ncc`` map to :class:`MutualInformation`,
    :class:`LocalMutualInformation`, :class:`MINDSSC`, :class:`NormalizedGradientFields` and
    :class:`LocalNCC`. ``cr`` and ``mcr`` build a :class:`ContrastiveSimilarity` and need the
    frozen autoencoders as ``ae_fixed=`` and ``ae_moved=`` (heads and PatchNCE settings are
    optional); ``cr`` ignores masks, ``mcr`` samples inside the mask given to ``forward``.
    Names are case-insensitive.
    """
    if not isinstance(name, str):
        raise ValueError(f"name must be a string, one of {SIMILARITIES}; got {name!r}")
    key = name.lower().replace("-", "").replace("_", "")
    if key in _SIMPLE:
        return _SIMPLE[key](**kwargs)
    if key in _CONTRASTIVE:
        missing = [k for k in ("ae_fixed", "ae_moved") if k not in kwargs]
        if missing:
            raise ValueError(
                f"similarity {name!r} is ContrastiveSimilarity and needs the frozen "
                f"autoencoders: pass {', '.join(f'{k}=' for k in missing)} (instances of "
                "contrareg_bids.nn.autoencoder.Autoencoder), or build "
                "contrareg_bids.losses.ContrastiveSimilarity directly"
            )
        if "masked" in kwargs:
            raise ValueError(f"masked is implied by the name {name!r} (cr: False, mcr: True)")
        return ContrastiveSimilarity(masked=_CONTRASTIVE[key], **kwargs)
    raise ValueError(f"unknown similarity {name!r}; valid names: {', '.join(SIMILARITIES)}")
