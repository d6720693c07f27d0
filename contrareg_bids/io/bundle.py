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
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open, save_file
from torch import nn

from .. import __version__
from ..nn._checks import check_keys, float_field, int_field, is_int, list_field
from ..nn.autoencoder import Autoencoder, AutoencoderConfig
from ..nn.heads import HeadsConfig, ProjectionHeads
from ..nn.model import ContraRegNet, RegNetConfig

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

_MODALITY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header
_SHOW = 5  # offending keys named in an error message


class BundleError(ValueError):
    """A file is not a usable contrareg-bids model bundle (the message names the file)."""


# --------------------------------------------------------------------------- validation helpers
# (those the architecture configs share are in nn/_checks.py)


def _str(name: str, v: Any, nonempty: bool = False) -> str:
    if not isinstance(v, str) or (nonempty and not v):
        raise ValueError(f"{name} must be a {'non-empty ' if nonempty else ''}string, got {v!r}")
    return v


def _json_object(name: str, v: Any) -> dict[str, Any]:
    """A JSON-serialisable dict, normalised by a JSON round trip (tuples become lists)."""
    if not isinstance(v, Mapping):
        raise ValueError(f"{name} must be a dict (JSON object), got {type(v).__name__}")
    try:
        return json.loads(json.dumps(dict(v), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must hold JSON values only (finite numbers): {exc}") from exc


# --------------------------------------------------------------------------- typed metadata parts


@dataclass(frozen=True)
class GridSpec:
    """The model grid: shape (voxels), spacing (mm), optionally the reference affine and name."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine: tuple[tuple[float, float, float, float], ...] | None = None
    reference: str | None = None

    def __post_init__(self):
        shape = tuple(
            int_field(f"grid.shape[{i}]", s, 1)
            for i, s in enumerate(list_field("grid.shape", self.shape, 3))
        )
        spacing = tuple(
            float_field(f"grid.spacing[{i}]", s)
            for i, s in enumerate(list_field("grid.spacing", self.spacing, 3))
        )
        if any(s <= 0 for s in spacing):
            raise ValueError(f"grid.spacing must be positive (mm), got {list(spacing)}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "spacing", spacing)
        if self.affine is not None:
            aff = self.affine
            if isinstance(aff, torch.Tensor):
                aff = aff.tolist()
            elif hasattr(aff, "tolist"):  # numpy array
                aff = aff.tolist()
            rows = list_field("grid.affine", aff, 4)
            affine = tuple(
                tuple(
                    float_field(f"grid.affine[{i}][{j}]", v)
                    for j, v in enumerate(list_field(f"grid.affine[{i}]", r, 4))
                )
                for i, r in enumerate(rows)
            )
            if any(
                abs(a - b) > 1e-6 for a, b in zip(affine[3], (0.0, 0.0, 0.0, 1.0), strict=True)
            ):
                raise ValueError(
                    f"grid.affine last row must be [0, 0, 0, 1], got {list(affine[3])}"
                )
            object.__setattr__(self, "affine", affine)
        if self.reference is not None:
            _str("grid.reference", self.reference)

    def to_dict(self) -> dict:
        return {
            "shape": list(self.shape),
            "spacing": list(self.spacing),
            "affine": None if self.affine is None else [list(r) for r in self.affine],
            "reference": self.reference,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> GridSpec:
        return cls(**check_keys("grid", data, {"shape", "spacing"}, {"affine", "reference"}))


def _regnet_from_dict(data: Any) -> RegNetConfig:
    """``RegNetConfig.from_dict`` with type checks; absent fields take the current defaults."""
    if not isinstance(data, Mapping):
        raise ValueError(f"regnet must be a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(RegNetConfig)
    clean = {}
    for key, value in data.items():
        typ = hints.get(key)
        if typ is bool and not isinstance(value, bool):
            raise ValueError(f"regnet.{key} must be true or false, got {value!r}")
        if typ is int:
            value = int_field(f"regnet.{key}", value)
        elif typ is float:
            value = float_field(f"regnet.{key}", value)
        clean[key] = value
    return RegNetConfig.from_dict(clean)


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")  # noqa: UP017 (py3.10)


@dataclass
class BundleMetadata:
    """Everything about a bundle except the weights; stored as JSON in the file's metadata.

    ``modalities`` is ``{"moving": "T2w", "fixed": "T1w"}``; autoencoders (and heads) are
    stored per distinct modality. ``normalization`` describes the intensity normalisation the
    network expects, e.g. ``{"method": "percentile", "lower": 0.5, "upper": 99.5,
    "mask": True}`` (``method`` is required). ``loss``/``loss_params`` name the training
    similarity. ``lambda_range`` is the ``[lo, hi]`` range the network was trained on.
    ``created`` is a UTC ISO-8601 time. ``extra`` is free-form JSON.
    """

    regnet: RegNetConfig
    autoencoder: AutoencoderConfig
    grid: GridSpec
    modalities: dict[str, str]
    normalization: dict[str, Any]
    loss: str
    loss_params: dict[str, Any] = field(default_factory=dict)
    lambda_range: tuple[float, float] = (0.0, 1.0)
    training_steps: int = 0
    data_fingerprint: str = ""
    seed: int | None = None
    heads: HeadsConfig | None = None
    package_version: str = __version__
    created: str = field(default_factory=_utc_now)
    extra: dict[str, Any] = field(default_factory=dict)

    _REQUIRED = frozenset(
        {
            "regnet",
            "autoencoder",
            "grid",
            "modalities",
            "normalization",
            "loss",
            "lambda_range",
            "training_steps",
            "data_fingerprint",
            "package_version",
            "created",
        }
    )
    _OPTIONAL = frozenset({"loss_params", "seed", "heads", "extra"})

    def __post_init__(self):
        if isinstance(self.regnet, Mapping):
            self.regnet = _regnet_from_dict(self.regnet)
        if not isinstance(self.regnet, RegNetConfig):
            raise ValueError(f"regnet must be a RegNetConfig, got {type(self.regnet).__name__}")
        if isinstance(self.autoencoder, Mapping):
            self.autoencoder = AutoencoderConfig.from_dict(self.autoencoder)
        if not isinstance(self.autoencoder, AutoencoderConfig):
            raise ValueError("autoencoder must be an AutoencoderConfig")
        if isinstance(self.grid, Mapping):
            self.grid = GridSpec.from_dict(self.grid)
        if not isinstance(self.grid, GridSpec):
            raise ValueError("grid must be a GridSpec")
        if isinstance(self.heads, Mapping):
            self.heads = HeadsConfig.from_dict(self.heads)
        if self.heads is not None:
            if not isinstance(self.heads, HeadsConfig):
                raise ValueError("heads must be a HeadsConfig or None")
            if self.heads.channels != self.autoencoder.feature_channels:
                raise ValueError(
                    f"heads.channels {list(self.heads.channels)} must equal the autoencoder "
                    f"feature channels {list(self.autoencoder.feature_channels)}"
                )
        mods = check_keys("modalities", self.modalities, {"moving", "fixed"}, set())
        for role, mod in mods.items():
            if not isinstance(mod, str) or not _MODALITY_RE.match(mod):
                raise ValueError(
                    f"modalities.{role} must be a name of letters, digits, '_' or '-' "
                    f"(e.g. 'T1w'), got {mod!r}"
                )
        self.modalities = {"moving": mods["moving"], "fixed": mods["fixed"]}
        self.normalization = _json_object("normalization", self.normalization)
        _str("normalization.method", self.normalization.get("method"), nonempty=True)
        _str("loss", self.loss, nonempty=True)
        self.loss_params = _json_object("loss_params", self.loss_params)
        lo, hi = (
            float_field(f"lambda_range[{i}]", v)
            for i, v in enumerate(list_field("lambda_range", self.lambda_range, 2))
        )
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"lambda_range must satisfy 0 <= lo <= hi <= 1, got [{lo}, {hi}]")
        self.lambda_range = (lo, hi)
        int_field("training_steps", self.training_steps, 0)
        _str("data_fingerprint", self.data_fingerprint)
        if self.seed is not None:
            int_field("seed", self.seed)
        _str("package_version", self.package_version, nonempty=True)
        _str("created", self.created, nonempty=True)
        try:
            datetime.fromisoformat(self.created)
        except ValueError as exc:
            raise ValueError(f"created must be an ISO-8601 time, got {self.created!r}") from exc
        self.extra = _json_object("extra", self.extra)

    @property
    def modality_names(self) -> tuple[str, ...]:
        """Distinct modalities (moving first): the keys of autoencoders and heads."""
        return tuple(dict.fromkeys((self.modalities["moving"], self.modalities["fixed"])))

    def to_dict(self) -> dict[str, Any]:
        return {
            "regnet": self.regnet.to_dict(),
            "autoencoder": self.autoencoder.to_dict(),
            "heads": None if self.heads is None else self.heads.to_dict(),
            "grid": self.grid.to_dict(),
            "modalities": dict(self.modalities),
            "normalization": self.normalization,
            "loss": self.loss,
            "loss_params": self.loss_params,
            "lambda_range": list(self.lambda_range),
            "training_steps": self.training_steps,
            "data_fingerprint": self.data_fingerprint,
            "seed": self.seed,
            "package_version": self.package_version,
            "created": self.created,
            "extra": self.extra,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping) -> BundleMetadata:
        """Validate and build; ``ValueError`` names the missing/unknown/bad field."""
        d = check_keys("metadata", data, set(cls._REQUIRED), set(cls._OPTIONAL))
        for key in ("loss_params", "extra"):
            if d.get(key, {}) is None:
                d[key] = {}
        return cls(**d)

    @classmethod
    def from_json(cls, text: str | bytes) -> BundleMetadata:
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"metadata is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    @classmethod
    def for_models(
        cls,
        regnet: ContraRegNet,
        autoencoders: Mapping[str, Autoencoder],
        heads: Mapping[str, ProjectionHeads] | None = None,
        **kwargs: Any,
    ) -> BundleMetadata:
        """Metadata whose ``regnet``/``autoencoder``/``heads`` configs are read off modules.

        ``kwargs`` give the other fields (``grid``, ``modalities``, ``normalization``,
        ``loss``, ...). All autoencoders (and all heads) must share one architecture.
        """
        ae_cfgs = {AutoencoderConfig.from_module(a) for a in autoencoders.values()}
        if len(ae_cfgs) != 1:
            raise ValueError("autoencoders must be one non-empty set of identical architectures")
        head_cfg = None
        if heads:
            head_cfgs = {HeadsConfig.from_module(h) for h in heads.values()}
            if len(head_cfgs) != 1:
                raise ValueError("projection heads of all modalities must share one architecture")
            head_cfg = head_cfgs.pop()
        return cls(regnet=regnet.config, autoencoder=ae_cfgs.pop(), heads=head_cfg, **kwargs)


# --------------------------------------------------------------------------- the bundle


@dataclass(kw_only=True)
class ModelBundle:
    """A trained ContraReg model: registration net, autoencoders (+ heads) and metadata."""

    regnet: ContraRegNet
    autoencoders: dict[str, Autoencoder]
    heads: dict[str, ProjectionHeads] | None = None
    metadata: BundleMetadata

    def modules(self) -> dict[str, nn.Module]:
        """Every module by its tensor prefix (without the trailing dot)."""
        mods: dict[str, nn.Module] = {"regnet": self.regnet}
        mods.update({f"ae.{k}": v for k, v in self.autoencoders.items()})
        mods.update({f"heads.{k}": v for k, v in (self.heads or {}).items()})
        return mods

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat state dict with the bundle's prefixes (``regnet.``, ``ae.T2w.``, ...)."""
        return {
            f"{prefix}.{k}": v
            for prefix, mod in self.modules().items()
            for k, v in mod.state_dict().items()
        }

    def to(self, device: str | torch.device) -> ModelBundle:
        for mod in self.modules().values():
            mod.to(device)
        return self

    def eval(self) -> ModelBundle:
        for mod in self.modules().values():
            mod.eval()
        return self

    def validate(self) -> None:
        """Raise ``ValueError`` unless the modules match the metadata's architecture."""
        md = self.metadata
        if not isinstance(md, BundleMetadata):
            raise ValueError("bundle.metadata must be a BundleMetadata")
        if not isinstance(self.regnet, ContraRegNet):
            raise ValueError("bundle.regnet must be a ContraRegNet")
        if self.regnet.config != md.regnet:
            raise ValueError(
                f"bundle.regnet.config {self.regnet.config} differs from metadata.regnet "
                f"{md.regnet}"
            )
        want = set(md.modality_names)
        if set(self.autoencoders) != want:
            raise ValueError(
                f"bundle.autoencoders has modalities {sorted(self.autoencoders)}, "
                f"metadata.modalities needs exactly {sorted(want)}"
            )
        for mod, ae in self.autoencoders.items():
            if (
                not isinstance(ae, Autoencoder)
                or AutoencoderConfig.from_module(ae) != md.autoencoder
            ):
                raise ValueError(f"autoencoder {mod!r} does not match metadata.autoencoder")
        if (self.heads is None) != (md.heads is None):
            raise ValueError("bundle.heads and metadata.heads must both be set or both be None")
        if self.heads is not None:
            if set(self.heads) != want:
                raise ValueError(
                    f"bundle.heads has modalities {sorted(self.heads)}, expected {sorted(want)}"
                )
            for mod, h in self.heads.items():
                if not isinstance(h, ProjectionHeads) or HeadsConfig.from_module(h) != md.heads:
                    raise ValueError(f"projection heads {mod!r} do not match metadata.heads")
        problem = _compare_shapes(_shapes(_fresh_bundle(md)), _shapes(self))
        if problem:
            raise ValueError(f"bundle modules do not match their metadata: {problem}")


def _build_modules(
    md: BundleMetadata,
) -> tuple[ContraRegNet, dict[str, Autoencoder], dict[str, ProjectionHeads] | None]:
    regnet = ContraRegNet(md.regnet)
    aes = {m: md.autoencoder.build() for m in md.modality_names}
    heads = None if md.heads is None else {m: md.heads.build() for m in md.modality_names}
    return regnet, aes, heads


def _fresh_bundle(md: BundleMetadata) -> ModelBundle:
    """Freshly initialised modules (on the CPU) for the architecture ``md`` declares.

    Built on the CPU rather than the meta device: even ch=64 takes milliseconds, while the
    first meta-device initialisation imports torch's reference ops (seconds).
    """
    regnet, aes, heads = _build_modules(md)
    return ModelBundle(regnet=regnet, autoencoders=aes, heads=heads, metadata=md)


def _shapes(bundle: ModelBundle) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in bundle.state_dict().items()}


def _fmt_keys(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > _SHOW else "")


def _compare_shapes(
    expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]]
) -> str | None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [
        f"{k} {list(found[k])} (expected {list(expected[k])})"
        for k in sorted(set(expected) & set(found))
        if tuple(found[k]) != tuple(expected[k])
    ]
    parts = []
    if missing:
        parts.append(f"missing tensor(s): {_fmt_keys(missing)}")
    if unexpected:
        parts.append(f"unexpected tensor(s): {_fmt_keys(unexpected)}")
    if wrong:
        parts.append(f"wrong shape(s): {_fmt_keys(wrong)}")
    return "; ".join(parts) or None


# --------------------------------------------------------------------------- digests


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
        raise BundleError(f"{path}: tensor(s) with a non-floating dtype: {_fmt_keys(bad_dtype)}")
    bundle = _fresh_bundle(md)
    problem = _compare_shapes(
        _shapes(bundle), {k: tuple(v["shape"]) for k, v in header.tensors.items()}
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
            f"{path}: non-finite (NaN/inf) weights in tensor(s) {_fmt_keys(nonfinite)}; "
            "training diverged before this bundle was written"
        )

    for prefix, mod in bundle.modules().items():
        p = prefix + "."
        mod.load_state_dict({k[len(p) :]: v for k, v in tensors.items() if k.startswith(p)})
    return bundle.to(device).eval()
