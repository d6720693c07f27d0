"""Nipype interfaces of contrareg-bids: thin shells over the plain functions of
:mod:`contrareg_bids.io` and :mod:`contrareg_bids.processing`, for use as workflow nodes.

Pipeline authors embed them in their own workflows::

    from contrareg_bids.interfaces import ContraRegister, ApplyWarp
"""

from .metrics import RegistrationMetrics
from .preproc import (
    AffineRegister,
    BrainMask,
    N4BiasCorrect,
    NormalizeIntensity,
    PrepareModelPair,
    SkullStrip,
    StandardizeImage,
)
from .registration import AntsRegister, ContraRegister, ExportTransforms, LambdaSweep
from .transforms import ApplyWarp, ExportLinearTransform

__all__ = [
    "AffineRegister",
    "AntsRegister",
    "ApplyWarp",
    "BrainMask",
    "ContraRegister",
    "ExportLinearTransform",
    "ExportTransforms",
    "LambdaSweep",
    "N4BiasCorrect",
    "NormalizeIntensity",
    "PrepareModelPair",
    "RegistrationMetrics",
    "SkullStrip",
    "StandardizeImage",
]
