"""ContraReg model bundles: one ``.safetensors`` file with weights, configuration and provenance.

A bundle holds

* the registration network (tensor prefix ``regnet.``),
* one autoencoder per modality (``ae.<modality>.``, e.g. ``ae.T2w.``),
* optionally one set of projection heads per modality (``heads.<modality>.``), needed only to
  resume training or fine-tune,

and, in the safetensors metadata (a ``dict[str, str]``):

=====================  =====================================================================
``format``             ``"contrareg-bids-bundle"``
``format_version``     ``"2"`` (:data:`FORMAT_VERSION`)
``contrareg_bids``     the JSON document of :class:`BundleMetadata`
``metadata_sha256``    sha256 of that JSON document (UTF-8)
``payload_sha256``     sha256 of the tensors (:func:`payload_sha256`: sorted names, dtypes,
                       shapes and bytes)
=====================  =====================================================================

Loading never unpickles anything: the file is parsed by ``safetensors`` only, and every
problem (missing, truncated, foreign, tampered, newer, inconsistent file) raises a
:class:`BundleError` whose message names the file and says what to do.

This module is the file format; what a model is (its metadata, its modules, how they are
assembled from the metadata) is :mod:`contrareg_bids.model_bundle`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open, save_file

from .. import __version__
from ..model_bundle import (
    BundleMetadata,
    GridSpec,
    ModelBundle,
    compare_shapes,
    fmt_keys,
    fresh_bundle,
    tensor_shapes,
)
from ..nn._checks import is_int

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "BundleError",
    "BundleMetadata",
    "GridSpec",
    "ModelBundle",
    "describe_bundle",
    "file_sha256",
    "load_model",
    "payload_sha256",
    "save_bundle",
    "sidecar_path",
    "write_sidecar",
]

FORMAT_NAME = "contrareg-bids-bundle"
#: Newest bundle layout this version writes and reads. Version 2: the FiLM projections of
#: the lambda hypernetwork take ``[embedding, lambda]`` (version 1 took the embedding only).
FORMAT_VERSION = 2

_KEY_FORMAT = "format"
_KEY_VERSION = "format_version"
_KEY_DOC = "contrareg_bids"
_KEY_META_SHA = "metadata_sha256"
_KEY_PAYLOAD_SHA = "payload_sha256"

_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header


class BundleError(ValueError):
    """A file is not a usable contrareg-bids model bundle (the message names the file)."""


def payload_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the tensors sorted by name: each name, dtype, shape and raw bytes."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach()
        h.update(name.encode("utf-8") + b"\0")
        h.update(f"{t.dtype}:{list(t.shape)}".encode() + b"\0")
        flat = t.to("cpu").contiguous().reshape(-1)
        if flat.numel():
            h.update(flat.view(torch.uint8).numpy())
    return h.hexdigest()


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- saving


def _prepare_tensors(bundle: ModelBundle) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors; storages shared between entries are copied."""
    out, seen = {}, set()
    for name, t in bundle.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        key = t.untyped_storage().data_ptr() if t.numel() else None
        if key is not None and key in seen:
            t = t.clone()
        elif key is not None:
            seen.add(key)
        out[name] = t
    return out


def _atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, then rename it into
    place, flushed to the disk (:func:`~contrareg_bids.io.atomic.atomic_output`)."""
    from .atomic import atomic_output

    with atomic_output(path, fsync=True) as tmp:
        write(tmp)


def save_bundle(path: str | os.PathLike, bundle: ModelBundle, *, sidecar: bool = False) -> str:
    """Write ``bundle`` to ``path`` atomically; return the sha256 of the written file.

    The modules are checked against the metadata first (``ValueError`` on mismatch). With
    ``sidecar=True`` a JSON sidecar ``<stem>.json`` is written next to it (:func:`write_sidecar`).
    """
    path = Path(path)
    if path.suffix == ".json":
        raise ValueError(f"{path}: a bundle must not end in .json (reserved for its sidecar)")
    bundle.validate()
    tensors = _prepare_tensors(bundle)
    doc = bundle.metadata.to_json()
    meta = {
        _KEY_FORMAT: FORMAT_NAME,
        _KEY_VERSION: str(FORMAT_VERSION),
        _KEY_DOC: doc,
        _KEY_META_SHA: _text_sha256(doc),
        _KEY_PAYLOAD_SHA: payload_sha256(tensors),
    }
    _atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    digest = file_sha256(path)
    if sidecar:
        write_sidecar(path, sha256=digest)
    return digest


def sidecar_path(path: str | os.PathLike) -> Path:
    """``<dir>/<stem>.json`` for a bundle ``<dir>/<stem>.safetensors``."""
    return Path(path).with_suffix(".json")


def write_sidecar(path: str | os.PathLike, sha256: str | None = None) -> Path:
    """Write ``<stem>.json`` next to the bundle: its metadata, digests, size and file name.

    The metadata is read from the file itself (so the sidecar always describes it);
    ``sha256`` (of the file) is computed when not given. Returns the sidecar's path.
    """
    path = Path(path)
    info = describe_bundle(path)
    doc = {
        "file": path.name,
        "sha256": sha256 or file_sha256(path),
        "size": info["file_size"],
        "format": info["format"],
        "format_version": info["format_version"],
        "payload_sha256": info["payload_sha256"],
        "n_parameters": info["n_parameters"],
        "metadata": info["metadata"],
    }
    out = sidecar_path(path)
    text = json.dumps(doc, indent=2, allow_nan=False) + "\n"
    _atomic_write(out, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return out


# --------------------------------------------------------------------------- reading


@dataclass
class _Header:
    path: Path
    size: int
    metadata: dict[str, str]
    tensors: dict[str, dict]  # name -> {"dtype", "shape", "data_offsets"}


def _read_header(path: Path) -> _Header:
    """Parse the safetensors header ourselves (never unpickling) with clear errors."""
    if not path.exists():
        raise BundleError(f"{path}: no such model bundle file")
    if not path.is_file():
        raise BundleError(f"{path}: not a regular file (expected a .safetensors model bundle)")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if head[:4] == b"PK\x03\x04" or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5):
            raise BundleError(
                f"{path}: not a safetensors file: it looks like a pickled PyTorch checkpoint "
                "(torch.save output). Model bundles are .safetensors files and pickles are "
                "never loaded; convert the weights in a trusted session with save_bundle()"
            )
        if len(head) < 8:
            raise BundleError(f"{path}: not a safetensors file (only {size} bytes)")
        n = int.from_bytes(head, "little")
        first = f.read(1)
        if n < 2 or n > _MAX_HEADER or first != b"{":
            raise BundleError(
                f"{path}: not a safetensors file (no valid header); is it a model bundle?"
            )
        if 8 + n > size:
            raise BundleError(
                f"{path}: truncated safetensors file: the header alone needs {8 + n} bytes, "
                f"the file has {size}; copy or download it again"
            )
        raw = first + f.read(n - 1)
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
        ):
            raise ValueError("__metadata__ must map strings to strings")
        end = 0
        for name, info in header.items():
            if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
                raise ValueError(f"bad entry for tensor {name!r}")
            start, stop = info["data_offsets"]
            shape = info["shape"]
            if not (is_int(start) and is_int(stop) and 0 <= start <= stop):
                raise ValueError(f"bad data offsets for tensor {name!r}")
            if not isinstance(shape, list) or not all(is_int(s) and s >= 0 for s in shape):
                raise ValueError(f"bad shape for tensor {name!r}")
            end = max(end, stop)
    except (UnicodeDecodeError, ValueError, TypeError) as exc:
        raise BundleError(f"{path}: corrupt safetensors header ({exc})") from exc
    expected = 8 + n + end
    if size < expected:
        raise BundleError(
            f"{path}: truncated safetensors file: {size} bytes, the header describes "
            f"{expected}; copy or download it again"
        )
    if size > expected:
        raise BundleError(
            f"{path}: corrupt safetensors file: {size - expected} unexpected trailing bytes"
        )
    return _Header(path, size, metadata, header)


def _read_metadata(header: _Header) -> tuple[BundleMetadata, int]:
    path, meta = header.path, header.metadata
    fmt = meta.get(_KEY_FORMAT)
    if fmt != FORMAT_NAME:
        found = "has no 'format' metadata" if fmt is None else f"has format {fmt!r}"
        raise BundleError(
            f"{path}: a safetensors file but not a contrareg-bids model bundle ({found}, "
            f"expected {FORMAT_NAME!r}); bundles are written by contrareg-bids training"
        )
    raw_version = meta.get(_KEY_VERSION)
    try:
        version = int(raw_version)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise BundleError(
            f"{path}: invalid bundle format_version {raw_version!r} (expected an integer)"
        ) from None
    if version > FORMAT_VERSION:
        raise BundleError(
            f"{path}: bundle format version {version} is newer than this contrareg-bids "
            f"{__version__} supports (<= {FORMAT_VERSION}); upgrade contrareg-bids to load it"
        )
    if version < 1:
        raise BundleError(f"{path}: invalid bundle format_version {version}")
    if version < FORMAT_VERSION:
        raise BundleError(
            f"{path}: bundle format version {version} was written by an older contrareg-bids "
            f"whose lambda hypernetwork this {__version__} no longer runs (format "
            f"{FORMAT_VERSION}); retrain the model with this version"
        )
    doc = meta.get(_KEY_DOC)
    if doc is None:
        raise BundleError(f"{path}: bundle metadata {_KEY_DOC!r} is missing")
    try:
        md = BundleMetadata.from_json(doc)
    except (ValueError, TypeError) as exc:
        raise BundleError(f"{path}: invalid bundle metadata: {exc}") from exc
    for key in (_KEY_META_SHA, _KEY_PAYLOAD_SHA):
        if not isinstance(meta.get(key), str):
            raise BundleError(f"{path}: bundle metadata {key!r} is missing")
    if _text_sha256(doc) != meta[_KEY_META_SHA]:
        raise BundleError(
            f"{path}: bundle metadata digest mismatch: the metadata was modified or corrupted "
            "after the file was written; do not use this file"
        )
    return md, version


def describe_bundle(path: str | os.PathLike) -> dict[str, Any]:
    """Metadata and a summary of a bundle, reading only its header (no weights).

    Checks that it is a contrareg-bids bundle with valid metadata; the weights themselves are
    verified only by :func:`load_model`.
    """
    header = _read_header(Path(path))
    md, version = _read_metadata(header)
    counts: dict[str, int] = {}
    for name, info in header.tensors.items():
        prefix = name.split(".")[0]
        if prefix in ("ae", "heads"):
            prefix = ".".join(name.split(".")[:2])
        counts[prefix] = counts.get(prefix, 0) + math.prod(info["shape"])
    return {
        "path": str(path),
        "file_size": header.size,
        "format": FORMAT_NAME,
        "format_version": version,
        "payload_sha256": header.metadata[_KEY_PAYLOAD_SHA],
        "metadata_sha256": header.metadata[_KEY_META_SHA],
        "n_tensors": len(header.tensors),
        "n_parameters": sum(counts.values()),
        "parameters": counts,
        "has_heads": md.heads is not None,
        "metadata": md.to_dict(),
    }


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> ModelBundle:
    """Load and verify a bundle; modules are on ``device`` and in eval mode.

    Raises :class:`BundleError` (a ``ValueError``) naming the file when it is missing, not a
    safetensors file, truncated, foreign, newer than supported, has invalid metadata, tensors
    that do not fit the declared architecture, tampered data, or non-finite weights.
    """
    path = Path(path)
    device = torch.device(device)
    header = _read_header(path)
    md, _ = _read_metadata(header)

    bad_dtype = sorted(k for k, v in header.tensors.items() if v["dtype"] not in _FLOAT_DTYPES)
    if bad_dtype:
        raise BundleError(f"{path}: tensor(s) with a non-floating dtype: {fmt_keys(bad_dtype)}")
    bundle = fresh_bundle(md)
    problem = compare_shapes(
        tensor_shapes(bundle), {k: tuple(v["shape"]) for k, v in header.tensors.items()}
    )
    if problem:
        raise BundleError(
            f"{path}: the weights do not match the architecture in its metadata: {problem}"
        )

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise BundleError(f"{path}: cannot read the safetensors data ({exc})") from exc
    if payload_sha256(tensors) != header.metadata[_KEY_PAYLOAD_SHA]:
        raise BundleError(
            f"{path}: weight digest mismatch: the tensor data was modified or corrupted after "
            "the file was written; do not use this file (copy it again or retrain)"
        )
    nonfinite = sorted(k for k, t in tensors.items() if not torch.isfinite(t).all())
    if nonfinite:
        raise BundleError(
            f"{path}: non-finite (NaN/inf) weights in tensor(s) {fmt_keys(nonfinite)}; "
            "training diverged before this bundle was written"
        )

    for prefix, mod in bundle.modules().items():
        p = prefix + "."
        mod.load_state_dict({k[len(p) :]: v for k, v in tensors.items() if k.startswith(p)})
    return bundle.to(device).eval()
