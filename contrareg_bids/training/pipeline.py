"""End-to-end training from lists of preprocessed volumes to a model bundle (no BIDS needed).

``train()`` runs, resumably: the train/validation split by subject, autoencoder pretraining
per modality (skipped for the hand-crafted baselines; random frozen autoencoders for
``+randae``; contrastive same-subject pretraining for ``+suppretrain``), registration
training, and writes ``<out>/model.safetensors`` with its JSON sidecar.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from contrareg_bids.io.bundle import BundleMetadata, GridSpec, ModelBundle, save_bundle
from contrareg_bids.nn.autoencoder import Autoencoder, AutoencoderConfig
from contrareg_bids.nn.heads import HeadsConfig

from ..io.images import load_nifti
from . import distributed as ddp
from .config import TrainConfig
from .data import (
    AutoencoderDataset,
    PairDataset,
    VolumeRecord,
    data_fingerprint,
    split_records,
)
from .trainer import pretrain_supervised, train_autoencoder, train_registration

LOGGER = logging.getLogger("contrareg_bids.training")

#: What ``contrareg-train`` expects of its inputs; recorded in the bundle.
EXTERNAL_NORMALIZATION = {"method": "external", "range": [0.0, 1.0], "mask": True}


def read_record_list(path: str | Path) -> list[VolumeRecord]:
    """Records from a text file: one image path per line, or a TSV with a header naming
    ``image`` (required), ``mask``, ``labels``, ``subject``, ``session`` columns.

    Relative paths are relative to the list file. Without a ``subject`` column the subject
    is the ``sub-<label>`` entity of the file name, else the file name without extension.
    """
    path = Path(path)
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip() and ln[0] != "#"]
    except OSError as err:
        raise ValueError(f"cannot read the list {path}: {err}") from err
    if not lines:
        raise ValueError(f"the list {path} names no image")
    base = path.parent

    def resolve(p: str | None) -> Path | None:
        if not p:
            return None
        q = Path(p)
        return q if q.is_absolute() else base / q

    rows: list[dict[str, str]]
    if "\t" in lines[0] and "image" in lines[0].split("\t"):
        rows = list(csv.DictReader(lines, delimiter="\t"))
    else:
        rows = [{"image": ln.strip()} for ln in lines]
    records = []
    for i, row in enumerate(rows, start=1):
        image = resolve(row.get("image"))
        if image is None:
            raise ValueError(f"{path}, entry {i}: no image path")
        if not image.exists():
            raise ValueError(f"{path}, entry {i}: {image} does not exist")
        subject = row.get("subject") or subject_from_name(image.name)
        records.append(
            VolumeRecord(
                image=image,
                subject=subject,
                mask=resolve(row.get("mask")),
                labels=resolve(row.get("labels")),
                session=row.get("session") or None,
            )
        )
    return records


def subject_from_name(name: str) -> str:
    """``sub-01_ses-1_T2w.nii.gz`` -> ``01``; otherwise the name without ``.nii[.gz]``."""
    for part in name.split("_"):
        if part.startswith("sub-"):
            return part[4:].split(".")[0]
    return name.removesuffix(".gz").removesuffix(".nii")


def grid_of(record: VolumeRecord) -> GridSpec:
    """Shape, spacing and affine of a record's image (unit spacing for arrays)."""
    if isinstance(record.image, np.ndarray):
        return GridSpec(shape=tuple(record.image.shape[:3]), spacing=(1.0, 1.0, 1.0))
    img = load_nifti(record.image)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    affine = tuple(tuple(float(v) for v in row) for row in img.affine)
    return GridSpec(shape=tuple(int(s) for s in img.shape[:3]), spacing=zooms, affine=affine)


@dataclass
class TrainOutputs:
    bundle: Path
    sidecar: Path
    out_dir: Path
    last_val: dict


def _autoencoders(
    cfg: TrainConfig,
    records: dict[str, list[VolumeRecord]],
    train_pairs: tuple[list[VolumeRecord], list[VolumeRecord]],
    out_dir: Path,
    ctx: ddp.DistContext,
    progress: bool,
) -> tuple[dict[str, Autoencoder], dict | None]:
    """Autoencoders keyed by role (``moving``/``fixed``) and optional pretrained heads."""
    variants = cfg.variants
    if cfg.base_loss not in ("cr", "mcr") or "randae" in variants:
        torch.manual_seed(cfg.seed + 17)
        return {"moving": Autoencoder().eval(), "fixed": Autoencoder().eval()}, None
    if "suppretrain" in variants:
        if ctx.is_main:
            aes, heads = pretrain_supervised(
                *train_pairs, cfg, out_dir / "autoencoders" / "suppretrain", progress=progress
            )
        ddp.barrier(ctx)
        if not ctx.is_main:
            aes, heads = pretrain_supervised(
                *train_pairs, cfg, out_dir / "autoencoders" / "suppretrain", progress=False
            )
        return aes, heads
    aes = {}
    for role, recs in records.items():
        ae_dir = out_dir / "autoencoders" / role
        ds = AutoencoderDataset(
            recs,
            crop=cfg.autoencoder.crop,
            flips=cfg.autoencoder.flips,
            augment=cfg.autoencoder.augment,
            seed=cfg.seed,
        )
        if ctx.is_main:
            aes[role] = train_autoencoder(
                ds,
                cfg.autoencoder,
                ae_dir,
                seed=cfg.seed,
                device=str(ctx.device),
                progress=progress,
                num_workers=cfg.num_workers,
            )
    ddp.barrier(ctx)
    if not ctx.is_main:  # the checkpoints are complete: these calls only load them
        for role, recs in records.items():
            ds = AutoencoderDataset(recs, crop=cfg.autoencoder.crop, seed=cfg.seed)
            aes[role] = train_autoencoder(
                ds,
                cfg.autoencoder,
                out_dir / "autoencoders" / role,
                seed=cfg.seed,
                device=str(ctx.device),
                progress=False,
            )
    return aes, None


def validation_set(
    moving_val: list[VolumeRecord],
    fixed_pool: list[VolumeRecord],
    template: VolumeRecord | None,
    cfg: TrainConfig,
) -> PairDataset | None:
    """Held-out moving subjects, each paired with other subjects' fixed images (from either
    side of the split: the pair and its moving image were never seen in training), enough
    pairs per moving subject to reach ``cfg.val_pairs``."""
    if not moving_val or (template is None and not fixed_pool):
        return None
    per_moving = 1 if template is not None else max(1, -(-cfg.val_pairs // len(moving_val)))
    n_other = len({r.subject for r in fixed_pool})
    return PairDataset(
        moving_val,
        None if template is not None else fixed_pool,
        template=template,
        seed=cfg.seed,
        random=False,
        pairs_per_moving=min(per_moving, max(n_other - 1, 1)),
    )


def train(
    moving: list[VolumeRecord],
    fixed: list[VolumeRecord] | None,
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    template: VolumeRecord | None = None,
    modalities: tuple[str, str] = ("T2w", "T1w"),
    progress: bool = True,
    stop_after: int | None = None,
    bundle_path: str | Path | None = None,
    normalization: dict | None = None,
) -> TrainOutputs | None:
    """Train ContraReg on ``moving`` -> ``fixed`` (or -> ``template``) and write a bundle.

    Returns None on ranks other than 0 and when ``stop_after`` ended the run early (call
    again to resume). ``modalities`` names (moving, fixed) for the bundle. The bundle goes to
    ``bundle_path`` (default ``<out_dir>/model.safetensors``); ``normalization`` describes how
    the inputs were normalised (default: "external", whatever made them [0, 1]).
    """
    out_dir = Path(out_dir)
    ctx = ddp.setup(cfg.device)
    try:
        if ctx.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "config.json").write_text(cfg.to_json())
        mov_train, mov_val = split_records(moving, cfg.val_fraction, cfg.seed)
        if template is None:
            if fixed is None:
                raise ValueError("give fixed records or a template")
            fix_train, fix_val = split_records(fixed, cfg.val_fraction, cfg.seed)
        else:
            fix_train = fix_val = []
        train_set = PairDataset(
            mov_train,
            None if template is not None else fix_train,
            template=template,
            seed=cfg.seed,
            same_subject=False,
        )
        val_set = validation_set(mov_val, [*fix_val, *fix_train], template, cfg)
        ae_records = {"moving": mov_train, "fixed": fix_train or [template]}
        aes, heads = _autoencoders(cfg, ae_records, (mov_train, fix_train), out_dir, ctx, progress)
        net, objective, result = train_registration(
            train_set,
            cfg,
            out_dir,
            autoencoders=aes,
            heads=heads,
            val_set=val_set,
            progress=progress,
            stop_after=stop_after,
            ctx=ctx,
        )
        if not ctx.is_main or result.step < cfg.steps:
            return None
        mov_mod, fix_mod = modalities
        ae_by_mod = {mov_mod: aes["moving"].cpu(), fix_mod: aes["fixed"].cpu()}
        heads_by_mod = None
        if len(objective.heads):
            heads_by_mod = {mov_mod: objective.heads["moving"], fix_mod: objective.heads["fixed"]}
        grid = grid_of(template if template is not None else fix_train[0])
        all_records = [*moving, *(fixed or []), *([template] if template is not None else [])]
        metadata = BundleMetadata(
            regnet=cfg.regnet,
            autoencoder=AutoencoderConfig.from_module(ae_by_mod[mov_mod]),
            heads=HeadsConfig.from_module(heads_by_mod[mov_mod]) if heads_by_mod else None,
            grid=grid,
            modalities={"moving": mov_mod, "fixed": fix_mod},
            normalization=dict(normalization or EXTERNAL_NORMALIZATION),
            loss=cfg.loss,
            loss_params={
                "alpha": cfg.effective_alpha,
                "num_negatives": cfg.num_negatives,
                "tau": cfg.tau,
                "mi_bins": cfg.mi_bins,
                "reg_scale": objective.reg_scale,
                # the same calibration on the trained model, and the lambda at which the
                # terms now balance (0.5 at the start of training by construction)
                "reg_scale_final": result.final_reg_scale,
                "balance_lambda_final": result.balance_lambda(objective.reg_scale),
            },
            lambda_range=tuple(cfg.lambda_range),
            training_steps=result.step,
            data_fingerprint=data_fingerprint(all_records),
            seed=cfg.seed,
            extra={
                "train_config": cfg.to_dict(),
                "validation": result.last_val,
                "autoencoders_trained": cfg.base_loss in ("cr", "mcr")
                and "randae" not in cfg.variants,
            },
        )
        bundle = ModelBundle(
            regnet=net.cpu(), autoencoders=ae_by_mod, heads=heads_by_mod, metadata=metadata
        )
        path = Path(bundle_path) if bundle_path is not None else out_dir / "model.safetensors"
        save_bundle(path, bundle, sidecar=True)
        LOGGER.info("model bundle written to %s", path)
        return TrainOutputs(path, path.with_suffix(".json"), out_dir, result.last_val)
    finally:
        ddp.teardown(ctx)
