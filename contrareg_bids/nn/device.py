"""Which torch device: one rule for inference, training, the Nipype node and the report.

``"auto"`` means CUDA when a GPU is present, except where the caller does not want a GPU
(``prefer_gpu=False``: the participant level without ``--n-gpus``, the train level with
``--n-gpus 0``). Torch is imported only when the answer depends on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def device_name(device: str | None = "auto", prefer_gpu: bool = True) -> str:
    """The device as a name (``"cpu"``, ``"cuda"``, ``"cuda:1"``) without checking it."""
    if device is not None and device != "auto":
        return str(device)
    if not prefer_gpu:
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(
    device: str | torch.device | None = None, prefer_gpu: bool = True
) -> torch.device:
    """:func:`device_name` as a ``torch.device``; a CUDA device where CUDA is not available
    is refused with a message."""
    import torch

    dev = torch.device(device_name(None if device is None else str(device), prefer_gpu))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available")
    return dev
