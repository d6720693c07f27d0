"""The registration objective ``alpha (1 - lambda) L_sim + lambda L_reg``, bidirectional.

``L_sim = 0.5 * (d12(I1 || I2 o phi) + d21(I2 || I1 o phi^-1))`` with ``I1`` the fixed image
and ``I2`` the moving one (Dey et al., MICCAI 2022). For CR/mCR, ``d12`` compares features of
the fixed-modality autoencoder on the fixed image with features of the moving-modality
autoencoder on the moved image, through per-modality projection heads; ``d21`` uses the same
autoencoders and heads the other way round. Choices of ours, documented here:

- ``+mi`` adds the global MI baseline to ``L_sim`` at the baselines' own scale:
  ``alpha * L_cr + L_mi`` inside the ``(1 - lambda)`` factor.
- ``+extnegs`` takes the external negatives from the previous training step's images
  (another subject with high probability: pairs are drawn at random).
- mCR's foreground is the union of the fixed mask and the moving mask warped with the
  same field (nearest); without masks in the data the image support (> 0) stands in. The
  baselines (MI, LocalMI, MIND, NGF) get the same union mask: about 80 % of a neonatal grid
  is background, and unmasked the zero bin dominates MI's joint histogram.
- ``L_reg`` is multiplied by ``reg_scale``: the paper does not say how its terms are
  normalised, and with a voxel-mean diffusion penalty the two gradients balance only at
  lambda ~ 0.999, so lambda would do nothing over most of [0, 1]. ``reg_scale`` is set at the
  start of training by :func:`~contrareg_bids.training.calibration.calibrate_reg_scale`
  (the ratio of the two terms' pulls along a reference deformation, so that they balance
  at lambda = 0.5) unless the configuration fixes it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from contrareg_bids.losses import (
    MINDSSC,
    ContrastiveSimilarity,
    LocalMutualInformation,
    MutualInformation,
    NormalizedGradientFields,
)
from contrareg_bids.losses.regularizers import Diffusion
from contrareg_bids.nn.autoencoder import Autoencoder
from contrareg_bids.nn.heads import ProjectionHeads
from contrareg_bids.nn.integrate import warp
from contrareg_bids.nn.model import RegistrationOutput

from .config import TrainConfig


def baseline_similarity(name: str, cfg: TrainConfig) -> nn.Module:
    """The hand-crafted similarities of the paper's baselines, with its hyperparameters."""
    if name == "mi":
        return MutualInformation(bins=cfg.mi_bins)
    if name == "localmi":
        return LocalMutualInformation(bins=cfg.mi_bins, patch_size=cfg.localmi_patch)
    if name == "mind":
        return MINDSSC(distance=cfg.mind_radius, patch_size=cfg.mind_patch)
    if name == "ngf":
        return NormalizedGradientFields()
    raise ValueError(f"{name!r} is not a baseline similarity")


def foreground(batch: dict, side: str) -> torch.Tensor:
    """``side``'s mask when the data has one, else the image support (``> 0``) of the
    skull-stripped image (per item: ``<side>_has_mask`` tells which items have a mask)."""
    image = batch[side]
    support = (image > 0).float()
    mask = batch.get(f"{side}_mask")
    if mask is None:
        return support
    has = batch.get(f"{side}_has_mask")
    if has is None:
        return mask.float()
    has = torch.as_tensor(has, device=image.device).reshape(-1, 1, 1, 1, 1).bool()
    return torch.where(has, mask.float(), support)


class RegistrationObjective(nn.Module):
    """Similarity (by name) + diffusion regulariser; holds the trainable projection heads.

    ``autoencoders`` maps ``"moving"``/``"fixed"`` to the modality autoencoders (needed for
    CR/mCR only). ``heads`` (same keys) may be given to start from pretrained heads.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        autoencoders: dict[str, Autoencoder] | None = None,
        heads: dict[str, ProjectionHeads] | None = None,
    ):
        super().__init__()
        self.cfg = cfg
        self.base = cfg.base_loss
        self.variants = cfg.variants
        self.alpha = cfg.effective_alpha
        self.regularizer = Diffusion()
        #: weight of ``L_reg`` relative to ``alpha * L_sim`` (see the module docstring)
        self.reg_scale = 1.0 if cfg.reg_scale is None else float(cfg.reg_scale)
        self.contrastive = self.base in ("cr", "mcr")
        if self.contrastive:
            if not autoencoders or set(autoencoders) != {"moving", "fixed"}:
                raise ValueError("CR/mCR need autoencoders for 'moving' and 'fixed'")
            heads = heads or {
                key: ProjectionHeads(ae.feature_channels, cfg.head_width, cfg.head_depth)
                for key, ae in autoencoders.items()
            }
            self.heads = nn.ModuleDict(heads)
            self.sim12 = ContrastiveSimilarity(
                autoencoders["fixed"],
                autoencoders["moving"],
                self.heads["fixed"],
                self.heads["moving"],
                num_negatives=cfg.num_negatives,
                tau=cfg.tau,
                masked=self.base == "mcr",
            )
            self.sim21 = self.sim12.swapped()
            self.mi = MutualInformation(bins=cfg.mi_bins) if "mi" in self.variants else None
        else:
            self.heads = nn.ModuleDict()
            self.sim = baseline_similarity(self.base, cfg)
        self._external: tuple[torch.Tensor, torch.Tensor] | None = None

    @contextlib.contextmanager
    def constant_images(self) -> Iterator[None]:
        """Within this context the pair's images are constant (instance optimisation):
        CR/mCR compute the features of each unwarped image once instead of every step."""
        if not self.contrastive:
            yield
            return
        with self.sim12.cache_fixed_features(), self.sim21.cache_fixed_features():
            yield

    def similarity(
        self,
        batch: dict[str, torch.Tensor],
        out: RegistrationOutput,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``0.5 * (d12 + d21)`` already scaled by alpha (and with ``+mi`` added)."""
        fixed, moving = batch["fixed"], batch["moving"]
        fixed_fg = foreground(batch, "fixed")
        moving_fg = foreground(batch, "moving")
        with torch.no_grad():
            mask12 = torch.maximum(fixed_fg, warp(moving_fg, out.forward_disp, mode="nearest"))
            mask21 = torch.maximum(moving_fg, warp(fixed_fg, out.inverse_disp, mode="nearest"))
        if not self.contrastive:
            d12 = self.sim(fixed, out.moved, mask=mask12)
            d21 = self.sim(moving, out.fixed_moved, mask=mask21)
            return 0.5 * (d12 + d21) * self.alpha
        ext12 = ext21 = None
        if "extnegs" in self.variants:
            if self._external is not None:
                ext12, ext21 = self._external
            self._external = (moving.detach(), fixed.detach())
        d12 = self.sim12(fixed, out.moved, mask=mask12, external=ext12, generator=generator)
        d21 = self.sim21(moving, out.fixed_moved, mask=mask21, external=ext21, generator=generator)
        sim = 0.5 * (d12 + d21) * self.alpha
        if self.mi is not None:
            sim = sim + 0.5 * (
                self.mi(fixed, out.moved, mask=mask12)
                + self.mi(moving, out.fixed_moved, mask=mask21)
            )
        return sim

    def forward(
        self,
        batch: dict[str, torch.Tensor],
        out: RegistrationOutput,
        lam: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-item ``(1 - lambda) * sim + lambda * reg_scale * reg`` averaged over the batch.

        Similarities are batch means, so with a batch of several lambdas the weights use
        the batch-mean lambda for the similarity; the regulariser is weighted per item.
        """
        sim = self.similarity(batch, out, generator)
        reg_items = torch.stack([self.regularizer(v[None]) for v in out.velocity])
        lam = lam.reshape(-1).float()
        total = (1.0 - lam).mean() * sim + self.reg_scale * (lam * reg_items).mean()
        return {"loss": total, "sim": sim.detach(), "reg": reg_items.mean().detach()}


def objective_from_bundle(bundle) -> RegistrationObjective:
    """The training objective of a model bundle (its similarity with the bundle's frozen
    autoencoders and trained heads, and its calibrated regulariser scale), for instance
    optimisation at test time."""
    md = bundle.metadata
    train_cfg = dict((md.extra or {}).get("train_config") or {})
    cfg = TrainConfig.from_dict(train_cfg) if train_cfg else TrainConfig(loss=md.loss)
    reg_scale = (md.loss_params or {}).get("reg_scale", cfg.reg_scale)
    cfg = cfg.updated(reg_scale=None if reg_scale is None else float(reg_scale))
    roles = md.modalities
    aes = heads = None
    if cfg.base_loss in ("cr", "mcr"):
        aes = {role: bundle.autoencoders[mod] for role, mod in roles.items()}
        if bundle.heads:
            heads = {role: bundle.heads[mod] for role, mod in roles.items()}
    objective = RegistrationObjective(cfg, aes, heads)
    return objective.to(next(bundle.regnet.parameters()).device)
