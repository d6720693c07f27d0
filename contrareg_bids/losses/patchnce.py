"""Contrastive (PatchNCE) similarity of ContraReg (Dey et al., MICCAI 2022).

Multi-scale features of two frozen, modality-specific autoencoders are sampled at the same
spatial locations in the fixed image and in the moved (warped) image, projected by trainable
MLP heads onto a shared unit hypersphere, and compared with an InfoNCE cross-entropy:
the feature pair at the same location is the positive, the moved image's features at the
other sampled locations are the negatives (as in CUT's PatchNCE, Park et al., ECCV 2020).

Choices made here (the paper leaves them open):

- **Per-sample mean.** The cross-entropy is averaged over the sampled locations (and the
  batch), then summed over layers; the paper writes a sum over locations, which only
  rescales the loss by the number of samples (absorbed by ``alpha`` in the objective).
- **Mask resize (mCR).** A coarse cell is foreground when any image voxel near its centre
  is (max pooling): unlike nearest-neighbour subsampling this never drops thin structures
  (cortex, ventricles) at the coarse layers; the price is a foreground dilated by about half
  a cell. :class:`ContrastiveSimilarity` maps the mask with the autoencoder's real geometry
  (``ae.feature_geometry``: strided convolutions and upsamplings put cell centres up to 1.75
  cells away from the blocks ``[f i, f (i + 1))``; see
  :func:`~contrareg_bids.nn.autoencoder.mask_to_feature_grid`). For other autoencoders it pads
  the mask like the autoencoder pads its input and block-pools it (:func:`resize_mask`).
  :class:`PatchNCELoss` also accepts ready-made per-layer masks.
- **Empty masks.** When a layer's resized mask holds fewer than 2 foreground cells for an
  item (no negatives possible), that item samples the whole grid at that layer, i.e. falls
  back to CR. The loss stays finite.
- **Batch.** All items of a batch use the same number of samples per layer: the smallest of
  ``num_negatives + 1`` and every item's foreground count at that layer. Negatives come only
  from the same item.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from contrareg_bids.nn.autoencoder import mask_to_feature_grid
from contrareg_bids.nn.heads import ProjectionHeads

from ._checks import check_finite, check_mask, check_pair, check_volume, full_precision

__all__ = ["ContrastiveSimilarity", "PatchNCELoss", "more_draws", "resize_mask"]


def resize_mask(mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize a ``(N, 1, X, Y, Z)`` mask (foreground > 0.5) onto a ``size`` grid.

    Coarser grids use adaptive max pooling (a cell is foreground if any voxel under it is;
    an exact ``f^3`` max pool when sizes divide), finer grids nearest upsampling. Returns a
    float32 {0,1} tensor ``(N, 1, *size)``.
    """
    size = tuple(int(s) for s in size)
    m = (mask.detach().float() > 0.5).float()
    if tuple(m.shape[2:]) == size:
        return m
    if all(ms >= s for ms, s in zip(m.shape[2:], size, strict=True)):
        return F.adaptive_max_pool3d(m, size)
    return F.interpolate(m, size=size, mode="nearest")


def _sample_indices(
    valid: torch.Tensor | None,
    n: int,
    v: int,
    max_samples: int,
    generator: torch.Generator | None,
    device: torch.device,
) -> torch.Tensor:
    """Draw the same number of distinct flat indices per item, uniformly among ``valid``.

    ``valid``: ``(N, V)`` bool or None (all valid). Items with < 2 valid cells use all cells.
    Returns ``(N, P)`` int64 on ``device``.
    """
    gdev = generator.device if generator is not None else device
    scores = torch.rand((n, v), generator=generator, device=gdev).to(device)
    p = min(max_samples, v)
    if valid is not None:
        counts = valid.sum(dim=1)
        enough = counts >= 2
        valid = valid | ~enough[:, None]  # empty/degenerate mask: fall back to the whole grid
        counts = torch.where(enough, counts, torch.full_like(counts, v))
        p = min(p, int(counts.min()))
        scores = scores.masked_fill(~valid, -1.0)
    # the top-p of i.i.d. uniform scores is a uniform draw without replacement
    return scores.topk(p, dim=1, sorted=False).indices


def _gather(feat: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``(N, C, x, y, z)`` features at flat indices ``(N, P)`` -> ``(N, P, C)``."""
    flat = feat.flatten(2)
    return flat.gather(2, idx[:, None, :].expand(-1, flat.shape[1], -1)).transpose(1, 2)


def _check_feature_list(
    feats: object, name: str, n_layers: int, finite: bool = True
) -> list[torch.Tensor]:
    if not isinstance(feats, (list, tuple)):
        raise ValueError(f"{name} must be a list of 5-D feature maps, got {type(feats).__name__}")
    if len(feats) != n_layers:
        raise ValueError(f"{name} must have {n_layers} layers (one per head), got {len(feats)}")
    return [check_volume(f, f"{name}[{k}]", finite=finite) for k, f in enumerate(feats)]


def _layer_masks(mask: object, name: str, feats: list[torch.Tensor]) -> list[torch.Tensor | None]:
    """Validate a mask (one tensor, or one per layer) and return one per layer on its grid,
    expanded to each layer's batch size."""
    if mask is None:
        return [None] * len(feats)
    n = feats[0].shape[0]
    if isinstance(mask, torch.Tensor):
        _check_mask_tensor(mask, name, n)
        return [resize_mask(mask, f.shape[2:]).expand(n, -1, -1, -1, -1) for f in feats]
    if not isinstance(mask, (list, tuple)) or len(mask) != len(feats):
        raise ValueError(
            f"{name} must be a 5-D tensor or a list of {len(feats)} per-layer masks, "
            f"got {type(mask).__name__}"
        )
    out: list[torch.Tensor | None] = []
    for k, (m, f) in enumerate(zip(mask, feats, strict=True)):
        _check_mask_tensor(m, f"{name}[{k}]", n)
        if m.shape[2:] != f.shape[2:]:
            raise ValueError(
                f"{name}[{k}] spatial shape {tuple(m.shape[2:])} does not match layer {k} "
                f"{tuple(f.shape[2:])}"
            )
        out.append((m.detach().float() > 0.5).float().expand(n, -1, -1, -1, -1))
    return out


def _check_mask_tensor(mask: object, name: str, n: int) -> None:
    if not isinstance(mask, torch.Tensor) or mask.dim() != 5 or mask.shape[1] != 1:
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"{name} must be a 5-D tensor (N, 1, X, Y, Z), got {shape}")
    if mask.shape[0] not in (1, n):
        raise ValueError(f"{name} batch size {mask.shape[0]} must be 1 or {n}")
    if mask.is_floating_point():
        check_finite(mask, name)


class PatchNCELoss(nn.Module):
    """Multi-layer PatchNCE loss between fixed and moved feature maps.

    Args:
        num_negatives: negatives per positive (paper ``ns = 1024``); ``num_negatives + 1``
            locations are sampled per layer and item (fewer when the grid/mask is smaller).
        tau: softmax temperature (paper 0.007); small values sharpen the positive.
        num_external: locations sampled from the external-negative features per layer
            (ExtNegs variant); defaults to ``num_negatives``.
    """

    def __init__(
        self, num_negatives: int = 1024, tau: float = 0.007, num_external: int | None = None
    ) -> None:
        super().__init__()
        if not isinstance(num_negatives, int) or num_negatives < 1:
            raise ValueError(f"num_negatives must be a positive integer, got {num_negatives!r}")
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau!r}")
        if num_external is not None and (not isinstance(num_external, int) or num_external < 1):
            raise ValueError(f"num_external must be a positive integer, got {num_external!r}")
        self.num_negatives = num_negatives
        self.tau = float(tau)
        self.num_external = num_negatives if num_external is None else num_external
        # NaN/Inf scan of the feature maps; ContrastiveSimilarity switches it off because
        # its features come from already validated images
        self.check_finite_features = True
        #: independent location samples averaged per layer (test-time refinement raises it:
        #: the same loss, a less noisy gradient; see :func:`more_draws`)
        self.draws = 1

    def extra_repr(self) -> str:
        return (
            f"num_negatives={self.num_negatives}, tau={self.tau}, num_external={self.num_external}"
        )

    def forward(
        self,
        feats_fixed: Sequence[torch.Tensor],
        feats_moved: Sequence[torch.Tensor],
        heads_fixed: ProjectionHeads,
        heads_moved: ProjectionHeads,
        mask: torch.Tensor | Sequence[torch.Tensor] | None = None,
        feats_external: Sequence[torch.Tensor] | None = None,
        mask_external: torch.Tensor | Sequence[torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sum over layers of the mean InfoNCE cross-entropy; a float32 scalar.

        Args:
            feats_fixed, feats_moved: per layer ``(N, C_k, x_k, y_k, z_k)``, same shapes.
            heads_fixed, heads_moved: projection heads of the two modalities (queries come
                from the fixed image, positives and negatives from the moved image).
            mask: optional foreground (pass the union of both images' foregrounds for mCR):
                one ``(N or 1, 1, X, Y, Z)`` tensor at any resolution, max-pooled to each
                layer's grid by :func:`resize_mask`, or a list with one ``(N or 1, 1, x_k,
                y_k, z_k)`` mask per layer. None samples the whole grid (CR).
            feats_external: optional features of another image of the moved modality, whose
                sampled locations are extra negatives for every query (ExtNegs).
            mask_external: optional foreground of the external image (same forms).
            generator: optional ``torch.Generator`` for reproducible sampling.
        """
        n_layers = len(heads_fixed)
        if len(heads_moved) != n_layers:
            raise ValueError(
                f"heads_moved must have {n_layers} heads like heads_fixed, got {len(heads_moved)}"
            )
        ff = _check_feature_list(feats_fixed, "feats_fixed", n_layers, self.check_finite_features)
        fm = _check_feature_list(feats_moved, "feats_moved", n_layers, self.check_finite_features)
        fe = None
        if feats_external is not None:
            fe = _check_feature_list(
                feats_external, "feats_external", n_layers, self.check_finite_features
            )
        for k in range(n_layers):
            if ff[k].shape != fm[k].shape:
                raise ValueError(
                    f"feats_moved[{k}] shape {tuple(fm[k].shape)} does not match "
                    f"feats_fixed[{k}] {tuple(ff[k].shape)}"
                )
            if (
                ff[k].shape[1] != heads_fixed.channels[k]
                or ff[k].shape[1] != heads_moved.channels[k]
            ):
                raise ValueError(
                    f"feats_fixed[{k}] has {ff[k].shape[1]} channels but the heads expect "
                    f"{heads_fixed.channels[k]} (fixed) and {heads_moved.channels[k]} (moved)"
                )
            if fe is not None and (
                fe[k].shape[0] not in (1, ff[k].shape[0]) or fe[k].shape[1] != ff[k].shape[1]
            ):
                raise ValueError(
                    f"feats_external[{k}] shape {tuple(fe[k].shape)} must have batch 1 or "
                    f"{ff[k].shape[0]} and {ff[k].shape[1]} channels"
                )
        n = ff[0].shape[0]
        if any(f.shape[0] != n for f in ff):
            raise ValueError("feats_fixed layers must share one batch size")
        masks = _layer_masks(mask, "mask", ff)
        masks_e: list[torch.Tensor | None] = [None] * n_layers
        if fe is not None:
            masks_e = _layer_masks(mask_external, "mask_external", fe)
        elif mask_external is not None:
            raise ValueError("mask_external given without feats_external")

        device = ff[0].device
        total = torch.zeros((), device=device, dtype=torch.float32)
        for k in range(n_layers):
            total = total + self._layer_loss(
                ff[k],
                fm[k],
                heads_fixed,
                heads_moved,
                k,
                masks[k],
                None if fe is None else fe[k],
                masks_e[k],
                generator,
            )
        return total

    def _layer_loss(
        self,
        f_fix: torch.Tensor,
        f_mov: torch.Tensor,
        heads_fixed: ProjectionHeads,
        heads_moved: ProjectionHeads,
        k: int,
        mask: torch.Tensor | None,
        f_ext: torch.Tensor | None,
        mask_ext: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        # ``draws`` independent samples per item, projected in one pass: the items of the
        # contrastive batch are (item, draw), negatives stay within their own draw
        n, d = f_fix.shape[0], self.draws
        v = f_fix[0, 0].numel()
        valid = None if mask is None else mask.flatten(1) > 0.5
        if valid is not None and d > 1:
            valid = valid.repeat_interleave(d, dim=0)
        idx = _sample_indices(valid, n * d, v, self.num_negatives + 1, generator, f_fix.device)
        p = idx.shape[1]
        idx = idx.reshape(n, d * p)
        q = heads_fixed.project(k, _gather(f_fix, idx))  # (N, D P, W) float32, unit norm
        pos_neg = heads_moved.project(k, _gather(f_mov, idx))
        q, pos_neg = q.reshape(n * d, p, -1), pos_neg.reshape(n * d, p, -1)
        keys = [pos_neg]
        if f_ext is not None:
            ne = f_ext.shape[0]
            valid_e = None if mask_ext is None else mask_ext.flatten(1) > 0.5
            idx_e = _sample_indices(
                valid_e, ne, f_ext[0, 0].numel(), self.num_external, generator, f_ext.device
            )
            ext = heads_moved.project(k, _gather(f_ext, idx_e)).expand(n, -1, -1)
            keys.append(ext.repeat_interleave(d, dim=0) if d > 1 else ext)
        n = n * d
        with full_precision(f_fix.device):
            # logits[n, i, j] = q_i . k_j / tau; the target column i is the positive, every
            # other column (the other sampled locations, then external ones) a negative
            logits = torch.cat(
                [torch.bmm(q.float(), kk.float().transpose(1, 2)) for kk in keys], 2
            )
            logits = logits / self.tau
            p = q.shape[1]
            target = torch.arange(p, device=q.device).repeat(n)
            return F.cross_entropy(logits.reshape(n * p, -1), target)


@contextlib.contextmanager
def more_draws(module: nn.Module, draws: int) -> Iterator[None]:
    """Every :class:`PatchNCELoss` inside ``module`` averages ``draws`` independent location
    samples per layer for the duration (the expected loss is unchanged, its gradient's
    sampling noise falls as 1/sqrt(draws); the autoencoder features are computed once)."""
    if not isinstance(draws, int) or draws < 1:
        raise ValueError(f"draws must be a positive integer, got {draws!r}")
    losses = [m for m in module.modules() if isinstance(m, PatchNCELoss)]
    before = [m.draws for m in losses]
    for m in losses:
        m.draws = draws
    try:
        yield
    finally:
        for m, d in zip(losses, before, strict=True):
            m.draws = d


def _pad_like_autoencoder(mask: torch.Tensor, ae: nn.Module) -> torch.Tensor:
    """Zero-pad a mask at the end of each axis to a multiple of ``ae.multiple`` (if any),
    mirroring the autoencoder's own input padding so feature cells align with voxels."""
    multiple = int(getattr(ae, "multiple", 1) or 1)
    pads = [p for s in reversed(mask.shape[2:]) for p in (0, (-s) % multiple)]
    return F.pad(mask, pads) if any(pads) else mask


def _feature_masks(
    mask: torch.Tensor, ae: nn.Module, feats: list[torch.Tensor]
) -> torch.Tensor | list[torch.Tensor]:
    """The image mask on every feature grid of ``ae``: with its real geometry when the
    autoencoder declares ``feature_geometry``, else padded for :func:`resize_mask`."""
    geometry = getattr(ae, "feature_geometry", None)
    if geometry is None or len(geometry) != len(feats):
        return _pad_like_autoencoder(mask, ae)
    return [
        mask_to_feature_grid(mask, f.shape[2:], stride, offset)
        for f, (stride, offset) in zip(feats, geometry, strict=True)
    ]


class ContrastiveSimilarity(nn.Module):
    """Image-level contrastive similarity ``d12(fixed || moved)`` of ContraReg.

    Holds two frozen autoencoders (one per modality) and two sets of trainable projection
    heads. Gradients flow through the frozen moved-modality autoencoder to ``moved`` (and
    hence to the deformation) but never into the autoencoder weights, which also stay in eval
    mode whatever ``.train()`` is called on a parent module (the freeze is re-applied at
    every forward, since a parent's ``train()``/``requires_grad_()`` do not call ours).

    An autoencoder is any module with ``forward(x) -> (reconstruction, list_of_features)``
    and a ``feature_channels`` tuple (``contrareg_bids.nn.autoencoder.Autoencoder``); a
    ``features(x)`` method is used instead of ``forward`` when present, and an integer
    ``multiple`` attribute (input padded at the end of each axis to that multiple) aligns the
    mask with the feature grids.

    Args:
        ae_fixed, ae_moved: autoencoders of the fixed and of the moved modality.
        heads_fixed, heads_moved: projection heads; built from ``feature_channels`` when None.
        num_negatives, tau, num_external: see :class:`PatchNCELoss` (paper: 1024, 0.007).
        width, depth: head MLP size when heads are built here (paper: 256, 3).
        masked: True for mCR (a ``mask`` passed to forward restricts sampling); False for CR
            (any ``mask`` argument is ignored, so a trainer may always pass one).
        freeze_autoencoders: True (default) freezes the autoencoders; False leaves them
            trainable (e.g. contrastive pretraining, the SupPretrain variant).

    The reverse direction ``d21`` with the same (modality-specific) autoencoders and heads
    is :meth:`swapped`; build a second instance for separate heads per direction.
    """

    def __init__(
        self,
        ae_fixed: nn.Module,
        ae_moved: nn.Module,
        heads_fixed: ProjectionHeads | None = None,
        heads_moved: ProjectionHeads | None = None,
        num_negatives: int = 1024,
        tau: float = 0.007,
        num_external: int | None = None,
        width: int = 256,
        depth: int = 3,
        masked: bool = True,
        freeze_autoencoders: bool = True,
    ) -> None:
        super().__init__()
        chans = []
        for name, ae in (("ae_fixed", ae_fixed), ("ae_moved", ae_moved)):
            if not isinstance(ae, nn.Module) or not hasattr(ae, "feature_channels"):
                raise ValueError(f"{name} must be an nn.Module with a feature_channels attribute")
            chans.append(tuple(int(c) for c in ae.feature_channels))
        if heads_fixed is None:
            heads_fixed = ProjectionHeads(chans[0], width=width, depth=depth)
        if heads_moved is None:
            heads_moved = ProjectionHeads(chans[1], width=width, depth=depth)
        for name, heads, ch in (
            ("heads_fixed", heads_fixed, chans[0]),
            ("heads_moved", heads_moved, chans[1]),
        ):
            if not isinstance(heads, ProjectionHeads) or heads.channels != ch:
                got = getattr(heads, "channels", type(heads).__name__)
                raise ValueError(f"{name} must be ProjectionHeads for channels {ch}, got {got}")
        if len(chans[0]) != len(chans[1]):
            raise ValueError(
                f"ae_fixed and ae_moved must have the same number of feature layers, "
                f"got {len(chans[0])} and {len(chans[1])}"
            )
        self.ae_fixed = ae_fixed
        self.ae_moved = ae_moved
        self.heads_fixed = heads_fixed
        self.heads_moved = heads_moved
        self.nce = PatchNCELoss(num_negatives=num_negatives, tau=tau, num_external=num_external)
        self.nce.check_finite_features = False
        self.masked = bool(masked)
        self.freeze_autoencoders = bool(freeze_autoencoders)
        #: features of the last constant fixed image, when caching is on (see
        #: :meth:`cache_fixed_features`): ``(key, features)``
        self._fixed_cache: tuple[tuple, list[torch.Tensor]] | None = None
        self._caching = False
        self._freeze()

    @contextlib.contextmanager
    def cache_fixed_features(self) -> Iterator[None]:
        """Reuse the fixed image's features while the same constant tensor comes back.

        At test time (instance optimisation) the fixed image never changes, yet every
        step would run it through the frozen autoencoder again: a third of the step. Inside
        this context its features are computed once. The key is the tensor's storage,
        shape and version counter, so an in-place change or a new image misses the cache;
        an image that requires grad (or unfrozen autoencoders) is never cached.
        """
        self._caching, self._fixed_cache = True, None
        try:
            yield
        finally:
            self._caching, self._fixed_cache = False, None

    def _fixed_features(self, fixed: torch.Tensor) -> list[torch.Tensor]:
        if not self._caching or fixed.requires_grad or not self.freeze_autoencoders:
            return self._features(self.ae_fixed, fixed, "fixed")
        key = (fixed.data_ptr(), tuple(fixed.shape), fixed.dtype, fixed._version)
        if self._fixed_cache is None or self._fixed_cache[0] != key:
            with torch.no_grad():
                self._fixed_cache = (key, self._features(self.ae_fixed, fixed, "fixed"))
        return self._fixed_cache[1]

    def _freeze(self) -> None:
        if self.freeze_autoencoders:
            for ae in (self.ae_fixed, self.ae_moved):
                ae.requires_grad_(False)
                ae.eval()

    def train(self, mode: bool = True) -> ContrastiveSimilarity:
        """Set heads to ``mode``; frozen autoencoders stay in eval mode."""
        super().train(mode)
        self._freeze()
        return self

    def requires_grad_(self, requires_grad: bool = True) -> ContrastiveSimilarity:
        """Like ``nn.Module.requires_grad_`` but frozen autoencoders stay frozen."""
        super().requires_grad_(requires_grad)
        self._freeze()
        return self

    def swapped(self) -> ContrastiveSimilarity:
        """The reverse direction (``d21``), sharing these autoencoders and heads."""
        return ContrastiveSimilarity(
            self.ae_moved,
            self.ae_fixed,
            self.heads_moved,
            self.heads_fixed,
            num_negatives=self.nce.num_negatives,
            tau=self.nce.tau,
            num_external=self.nce.num_external,
            masked=self.masked,
            freeze_autoencoders=self.freeze_autoencoders,
        )

    def _features(self, ae: nn.Module, x: torch.Tensor, name: str) -> list[torch.Tensor]:
        need_grad = torch.is_grad_enabled() and (x.requires_grad or not self.freeze_autoencoders)
        param = next(ae.parameters(), None)
        if param is not None and param.is_floating_point() and x.dtype != param.dtype:
            x = x.to(param.dtype)  # e.g. bf16 images into a float32 autoencoder
        with torch.set_grad_enabled(need_grad):
            if callable(getattr(ae, "features", None)):
                out = ae.features(x)  # skips the decoder tail and the reconstruction
            else:
                out = ae(x)
                if not isinstance(out, (tuple, list)) or len(out) != 2:
                    raise ValueError(
                        f"the autoencoder of {name} must return (reconstruction, features)"
                    )
                out = out[1]
        feats = list(out)
        if len(feats) != len(self.heads_fixed):
            raise ValueError(
                f"the autoencoder of {name} returned {len(feats)} feature maps, "
                f"expected {len(self.heads_fixed)}"
            )
        return feats

    def forward(
        self,
        fixed: torch.Tensor,
        moved: torch.Tensor,
        mask: torch.Tensor | None = None,
        external: torch.Tensor | None = None,
        external_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Contrastive loss (float32 scalar, lower = more similar).

        Args:
            fixed: ``(N, C, X, Y, Z)`` image of the fixed modality.
            moved: image of the other modality warped to ``fixed``, same shape.
            mask: optional foreground ``(N or 1, 1, X, Y, Z)`` on the fixed grid (the union of
                the fixed and warped foregrounds); used only when ``masked``.
            external: optional image ``(N or 1, C, X', Y', Z')`` of the moved modality from
                another subject; its features are extra negatives (ExtNegs).
            external_mask: optional foreground of ``external`` (used only when ``masked``).
            generator: optional ``torch.Generator`` for reproducible sampling.
        """
        fixed, moved = check_pair(fixed, moved)
        # re-assert the freeze: a parent's requires_grad_()/train() bypasses our overrides
        self._freeze()
        m = check_mask(mask, fixed) if self.masked else None
        feats_f = self._fixed_features(fixed)
        feats_m = self._features(self.ae_moved, moved, "moved")
        if m is not None:
            m = _feature_masks(m, self.ae_fixed, feats_f)
        feats_e = None
        m_e = None
        if external is not None:
            external = check_volume(external, "external", channels=moved.shape[1])
            if external.shape[0] not in (1, moved.shape[0]):
                raise ValueError(
                    f"external batch size {external.shape[0]} must be 1 or {moved.shape[0]}"
                )
            with torch.no_grad():
                feats_e = self._features(self.ae_moved, external.detach(), "external")
            if self.masked:
                m_e = check_mask(external_mask, external, "external_mask", "external")
                if m_e is not None:
                    m_e = _feature_masks(m_e, self.ae_moved, feats_e)
        elif external_mask is not None:
            raise ValueError("external_mask given without external")
        return self.nce(
            feats_f,
            feats_m,
            self.heads_fixed,
            self.heads_moved,
            mask=m,
            feats_external=feats_e,
            mask_external=m_e,
            generator=generator,
        )
