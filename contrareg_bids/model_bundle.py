"""A trained ContraReg model: its metadata (:class:`BundleMetadata`: architecture, grid,
modalities, training provenance) and its modules (:class:`ModelBundle`: the registration
network, one autoencoder and optionally projection heads per modality), assembled from the
metadata (:func:`fresh_bundle`). :mod:`contrareg_bids.io.bundle` writes and reads it as one
``.safetensors`` file."""

from __future__ import annotations

import json
import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import torch
from torch import nn

from . import __version__
from .nn._checks import check_keys, float_field, int_field, list_field
from .nn.autoencoder import Autoencoder, AutoencoderConfig
from .nn.heads import HeadsConfig, ProjectionHeads
from .nn.model import ContraRegNet, RegNetConfig

__all__ = [
    "BundleMetadata",
    "GridSpec",
    "ModelBundle",
    "compare_shapes",
    "fmt_keys",
    "fresh_bundle",
    "tensor_shapes",
]

_MODALITY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_SHOW = 5  # offending keys named in an error message


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
        problem = compare_shapes(tensor_shapes(fresh_bundle(md)), tensor_shapes(self))
        if problem:
            raise ValueError(f"bundle modules do not match their metadata: {problem}")


def _build_modules(
    md: BundleMetadata,
) -> tuple[ContraRegNet, dict[str, Autoencoder], dict[str, ProjectionHeads] | None]:
    regnet = ContraRegNet(md.regnet)
    aes = {m: md.autoencoder.build() for m in md.modality_names}
    heads = None if md.heads is None else {m: md.heads.build() for m in md.modality_names}
    return regnet, aes, heads


def fresh_bundle(md: BundleMetadata) -> ModelBundle:
    """Freshly initialised modules (on the CPU) for the architecture ``md`` declares.

    Built on the CPU rather than the meta device: even ch=64 takes milliseconds, while the
    first meta-device initialisation imports torch's reference ops (seconds).
    """
    regnet, aes, heads = _build_modules(md)
    return ModelBundle(regnet=regnet, autoencoders=aes, heads=heads, metadata=md)


def tensor_shapes(bundle: ModelBundle) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in bundle.state_dict().items()}


def fmt_keys(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > _SHOW else "")


def compare_shapes(
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
        parts.append(f"missing tensor(s): {fmt_keys(missing)}")
    if unexpected:
        parts.append(f"unexpected tensor(s): {fmt_keys(unexpected)}")
    if wrong:
        parts.append(f"wrong shape(s): {fmt_keys(wrong)}")
    return "; ".join(parts) or None


# --------------------------------------------------------------------------- digests
