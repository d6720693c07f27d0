"""Training loops: autoencoder pretraining and lambda-conditioned registration training.

Both loops are resumable: a checkpoint (weights, optimiser, generator and global RNG states,
step) is written atomically every ``checkpoint_every`` steps and at the end; calling the loop
again with the same output folder continues from it and reproduces the uninterrupted run's
weights (on CPU; CUDA kernels may be non-deterministic). Batches are a pure function of the
seed and the step (:class:`~contrareg_bids.training.stream.StepSampler`).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from contrareg_bids.losses import LocalNCC
from contrareg_bids.metrics import folding_percent, mean_dice
from contrareg_bids.nn.autoencoder import Autoencoder
from contrareg_bids.nn.heads import ProjectionHeads
from contrareg_bids.nn.integrate import integrate_velocity, warp, warp_labels
from contrareg_bids.nn.model import ContraRegNet, RegistrationOutput
from contrareg_bids.nn.synth import random_velocity

from . import distributed as ddp
from .checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint, set_rng_state
from .config import AutoencoderTrainConfig, TrainConfig
from .objective import RegistrationObjective
from .stream import StepSampler, default_num_workers, seed_worker, seeded_generator

LOGGER = logging.getLogger("contrareg_bids.training")


class _EpochStepSampler(StepSampler):
    """Yields ``(epoch, index)``: the datasets derive each sample's randomness from them."""

    def __iter__(self):
        step = self.start_step
        while self.total_steps is None or step < self.total_steps:
            epoch = self.epoch_of(step)
            for i in self.indices_for_step(step):
                yield (epoch, i)
            step += 1


def _loader(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    start_step: int,
    total_steps: int,
    ctx: ddp.DistContext,
    num_workers: int | None,
) -> DataLoader:
    sampler = _EpochStepSampler(
        len(dataset), batch_size, seed, start_step, total_steps, ctx.rank, ctx.world_size
    )
    if num_workers is None:
        num_workers = default_num_workers()
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=ctx.device.type == "cuda",
        worker_init_fn=seed_worker,
        generator=seeded_generator(seed, 7, ctx.rank),
        drop_last=False,
    )


def _to_device(batch: dict, device: torch.device) -> dict:
    return {
        k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
        for k, v in batch.items()
    }


class CsvLog:
    """Append-only CSV log that survives resumes (rows past the resume step are dropped)."""

    def __init__(self, path: Path, columns: list[str], resume_step: int = 0):
        self.path, self.columns = path, columns
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        if path.exists() and resume_step > 0:
            with path.open() as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= resume_step]
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, columns)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, **row) -> None:
        with self.path.open("a", newline="") as fh:
            csv.DictWriter(fh, self.columns).writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
            )


class LogProgress:
    """Progress for log files (SLURM output, ``> train.log``): about ``lines`` INFO lines per
    run instead of a bar whose carriage-return redraws pile up into one endless line."""

    def __init__(self, total: int, initial: int, desc: str, lines: int = 20):
        self.total, self.n, self.desc = total, initial, desc
        self.every = max(1, total // lines)
        self.postfix: dict[str, str] = {}
        self._n0, self._t0 = initial, time.perf_counter()

    def set_postfix(self, **values: str) -> None:
        self.postfix = values

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n % self.every and self.n != self.total:
            return
        rate = (self.n - self._n0) / max(time.perf_counter() - self._t0, 1e-9)
        extra = "".join(f", {k} {v}" for k, v in self.postfix.items() if k != "it_s")
        LOGGER.info("%s: step %d/%d%s, %.2f it/s", self.desc, self.n, self.total, extra, rate)

    def close(self) -> None:
        pass


def _progress(total: int, initial: int, desc: str, enabled: bool):
    """A tqdm bar on a terminal, :class:`LogProgress` lines when stderr is not one."""
    import sys

    from tqdm.auto import tqdm

    if enabled and not sys.stderr.isatty():
        return LogProgress(total, initial, desc)
    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True)


def parameters_digest(*modules: nn.Module) -> str:
    """sha256 of all parameters (names and bytes): equal digests = identical weights."""
    h = hashlib.sha256()
    for m in modules:
        for name, t in sorted(m.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- autoencoders


def train_autoencoder(
    dataset: Dataset,
    cfg: AutoencoderTrainConfig,
    out_dir: str | Path,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    num_workers: int | None = None,
    stop_after: int | None = None,
) -> Autoencoder:
    """Pretrain one modality's autoencoder (L1 + local NCC) on ``dataset`` items ``{"image"}``.

    ``out_dir`` receives ``checkpoint.pt`` and ``loss.csv``; training resumes from the
    checkpoint when present. ``stop_after`` ends early after that many steps (for tests and
    time-boxed runs; the next call resumes).
    """
    out_dir = Path(out_dir)
    ctx = ddp.DistContext(0, 1, 0, ddp.resolve_device(device))
    torch.manual_seed(seed)
    model = Autoencoder().to(ctx.device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    ncc = LocalNCC(window=cfg.ncc_window)
    ckpt_path = out_dir / CHECKPOINT_NAME
    step = 0
    if ckpt_path.exists():
        state = load_checkpoint(ckpt_path)  # on the CPU: RNG states must stay there
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
        set_rng_state(state["rng"])
        LOGGER.info("autoencoder: resuming %s at step %d", out_dir, step)
    log = CsvLog(out_dir / "loss.csv", ["step", "loss", "l1", "ncc", "time_s"], step)
    end = cfg.steps if stop_after is None else min(cfg.steps, step + stop_after)
    if step >= end:
        return model.eval()
    loader = _loader(dataset, cfg.batch_size, seed, step, end, ctx, num_workers)
    bar = _progress(cfg.steps, step, f"autoencoder {out_dir.name}", progress)
    model.train()
    t0 = time.perf_counter()
    for batch in loader:
        x = batch["image"].to(ctx.device, non_blocking=True)
        recon, _ = model(x)
        l1 = (recon - x).abs().mean()
        lncc = ncc(x, recon)
        loss = l1 + cfg.ncc_weight * lncc
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.set_postfix(loss=f"{loss.item():.4f}")
        bar.update(1)
        log.write(
            step=step,
            loss=loss.item(),
            l1=l1.item(),
            ncc=lncc.item(),
            time_s=time.perf_counter() - t0,
        )
        if step % 100 == 0 or step == end:
            save_checkpoint(
                ckpt_path, model=model.state_dict(), optimizer=opt.state_dict(), step=step
            )
    bar.close()
    return model.eval()


# --------------------------------------------------------------------------- registration


@dataclass
class TrainResult:
    """What a registration run produced."""

    step: int
    checkpoint: Path
    log: Path
    val_log: Path
    digest: str
    last_val: dict = field(default_factory=dict)
    #: the calibration again on the trained model (None: not calibrated, or not finished)
    final_reg_scale: float | None = None

    def balance_lambda(self, reg_scale: float) -> float | None:
        """The lambda at which the trained similarity and the regulariser (weighted by the
        ``reg_scale`` training used) now pull equally: 0.5 when nothing drifted."""
        if self.final_reg_scale is None:
            return None
        return self.final_reg_scale / (self.final_reg_scale + reg_scale)


class _TrainModule(nn.Module):
    """Network + objective in one module so DDP synchronises the heads too."""

    def __init__(self, net: ContraRegNet, objective: RegistrationObjective):
        super().__init__()
        self.net = net
        self.objective = objective

    def forward(self, batch, lam, generator=None, heads_only: bool = False):
        if heads_only:
            return head_warmup_losses(self.objective, batch, generator), None
        out = self.net(batch["moving"], batch["fixed"], lam)
        return self.objective(batch, out, lam, generator), out


def head_warmup_losses(objective: RegistrationObjective, batch: dict, generator) -> dict:
    """The similarity of the pair as it is (zero velocity): trains only the projection
    heads, so that CR/mCR pull towards alignment before the regulariser is calibrated and
    the network starts to learn (``TrainConfig.head_warmup``)."""
    zero = torch.zeros_like(batch["moving"]).expand(-1, 3, -1, -1, -1)
    out = RegistrationOutput(batch["moving"], batch["fixed"], zero, zero, zero)
    sim = objective.similarity(batch, out, generator)
    return {"loss": sim, "sim": sim.detach(), "reg": torch.zeros(())}


def deform_batch(
    batch: dict, amplitude: float, sigma: float, ts: int, generator: torch.Generator
) -> dict:
    """Both sides of a training batch, each under its own random smooth diffeomorphism
    (images linear, masks and labels nearest): ``TrainConfig.deform_augment``."""
    out = dict(batch)
    for side in ("moving", "fixed"):
        image = batch[side]
        v = random_velocity(image.shape[2:], sigma, generator, amplitude, image.shape[0])
        disp = integrate_velocity(v.to(image.device), ts)
        out[side] = warp(image, disp)
        for key in (f"{side}_mask", f"{side}_labels"):
            if isinstance(batch.get(key), torch.Tensor):
                x = batch[key]
                out[key] = warp(x.float(), disp, mode="nearest").to(x.dtype)
    return out


def sample_lambda(cfg: TrainConfig, n: int, generator: torch.Generator) -> torch.Tensor:
    """lambda ~ U[lo, hi] per item with the hypernetwork, else the fixed lambda."""
    if not cfg.regnet.hypernet:
        return torch.full((n, 1), cfg.regnet.fixed_lambda)
    lo, hi = cfg.lambda_range
    return lo + (hi - lo) * torch.rand((n, 1), generator=generator)


@torch.no_grad()
def validate(
    net: ContraRegNet,
    objective: RegistrationObjective,
    dataset: Dataset,
    cfg: TrainConfig,
    device: torch.device,
) -> dict[str, float]:
    """Similarity always; Dice (fixed labels vs warped moving labels) and folding % when the
    pairs carry labels. Fixed lambda ``cfg.val_lambda`` and a fixed sampling seed."""
    was = net.training
    net.eval()
    saved_ext = objective._external
    gen = seeded_generator(cfg.seed, 99)
    sims, dices, folds = [], [], []
    n = min(len(dataset), cfg.val_pairs)
    for i in range(n):
        item = dataset[i]
        batch = {
            k: (v[None].to(device) if isinstance(v, torch.Tensor) else v) for k, v in item.items()
        }
        lam = torch.full((1, 1), cfg.val_lambda, device=device)
        out = net(batch["moving"], batch["fixed"], lam)
        sims.append(float(objective.similarity(batch, out, gen)))
        fwd = out.forward_disp[0].cpu().numpy()
        folds.append(folding_percent(fwd))
        if "moving_labels" in batch and "fixed_labels" in batch:
            moved_lab = warp_labels(batch["moving_labels"].long(), out.forward_disp, "nearest")
            dices.append(
                mean_dice(batch["fixed_labels"][0, 0].cpu().numpy(), moved_lab[0, 0].cpu().numpy())
            )
    objective._external = saved_ext
    net.train(was)
    res = {"val_sim": float(np.mean(sims)), "val_folding_percent": float(np.mean(folds))}
    if dices:
        res["val_dice"] = float(np.nanmean(dices))
    return res


#: training pairs the regulariser's scale is calibrated on
CALIBRATION_PAIRS = 4


def _calibrate(
    objective: RegistrationObjective,
    train_set: Dataset,
    cfg: TrainConfig,
    dev: torch.device,
    ctx: ddp.DistContext,
    final: bool = False,
) -> float | None:
    """``reg_scale`` from the first training pairs (:mod:`.calibration`); every rank computes
    the same value (same pairs, same seeds). ``final``: the same measurement on the trained
    model, reported against the scale training used (None when it cannot be measured)."""
    from torch.utils.data import default_collate

    from .calibration import calibrate_reg_scale

    batches = (
        _to_device(default_collate([train_set[(0, i)]]), dev)
        for i in range(min(CALIBRATION_PAIRS, len(train_set)))
    )
    try:
        res = calibrate_reg_scale(objective, batches, cfg.regnet.ts, cfg.seed, dev)
    except ValueError as err:
        if final:
            LOGGER.warning("final calibration: %s", err)
            return None
        LOGGER.warning("%s: training with reg_scale 1 (lambda will matter little)", err)
        return 1.0
    if final and ctx.is_main:
        LOGGER.info(
            "after training the terms balance at lambda %.3f (regulariser scale %.4g measured "
            "now, %.4g used in training)",
            res["reg_scale"] / (res["reg_scale"] + objective.reg_scale),
            res["reg_scale"],
            objective.reg_scale,
        )
    elif ctx.is_main:
        LOGGER.info(
            "regulariser scale %.4g (pull ratios %s at std log|J| %.2f): the terms balance "
            "at lambda 0.5",
            res["reg_scale"],
            ", ".join(f"{r:.3g}" for r in res["ratios"]),
            res["reference_std_log_jac"],
        )
    return res["reg_scale"]


def train_registration(
    train_set: Dataset,
    cfg: TrainConfig,
    out_dir: str | Path,
    autoencoders: dict[str, Autoencoder] | None = None,
    heads: dict[str, ProjectionHeads] | None = None,
    val_set: Dataset | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    on_checkpoint: Callable[[int], None] | None = None,
    ctx: ddp.DistContext | None = None,
) -> tuple[ContraRegNet, RegistrationObjective, TrainResult]:
    """Train the lambda-conditioned registration network on ``train_set`` pairs.

    ``train_set`` items hold ``moving``/``fixed`` ``(1, X, Y, Z)`` tensors (plus optional
    masks and labels). ``out_dir`` receives ``checkpoints/last.pt``, ``train.csv``,
    ``val.csv`` (and ``tensorboard/`` when enabled). Under ``torchrun`` the run is
    data-parallel; only rank 0 writes. Returns the (unwrapped) network, the objective (with
    its heads) and a :class:`TrainResult`.
    """
    out_dir = Path(out_dir)
    owns_group = ctx is None
    ctx = ctx or ddp.setup(cfg.device)
    dev = ctx.device
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    net = ContraRegNet(cfg.regnet).to(dev)
    if autoencoders:
        autoencoders = {k: v.to(dev) for k, v in autoencoders.items()}
    objective = RegistrationObjective(cfg, autoencoders, heads).to(dev)
    module: nn.Module = _TrainModule(net, objective)
    net_groups = net.param_groups()
    for group in net_groups[1:]:  # the hypernetwork's groups (see ContraRegNet.param_groups)
        group["lr"] = cfg.effective_hypernet_lr
    opt = torch.optim.Adam(
        [*net_groups, {"params": list(objective.heads.parameters()), "weight_decay": 0.0}],
        lr=cfg.lr,
    )
    gen = seeded_generator(cfg.seed, 1, ctx.rank)
    ckpt_path = out_dir / "checkpoints" / CHECKPOINT_NAME
    step = 0
    if ckpt_path.exists():
        state = load_checkpoint(ckpt_path)  # on the CPU: RNG states must stay there
        if state.get("config") != cfg.to_json():
            raise ValueError(
                f"{ckpt_path} was written with another training configuration; use another "
                "output folder or delete the checkpoint to restart"
            )
        net.load_state_dict(state["net"])
        objective.heads.load_state_dict(state["heads"])
        objective.reg_scale = float(state.get("reg_scale", objective.reg_scale))
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
        set_rng_state(state["rng"])
        gen.set_state(state["generators"][min(ctx.rank, len(state["generators"]) - 1)])
        if ctx.is_main:
            LOGGER.info("registration: resuming from %s at step %d", ckpt_path, step)
    warmup = cfg.effective_head_warmup if objective.contrastive else 0
    if step == 0 and warmup == 0 and cfg.reg_scale is None:
        objective.reg_scale = _calibrate(objective, train_set, cfg, dev, ctx)
    if cfg.compile:  # in place: parameter names (checkpoints, bundles) stay the same
        net.unet.compile()
    if ctx.distributed:
        module = nn.parallel.DistributedDataParallel(
            module,
            device_ids=[dev.index] if dev.type == "cuda" else None,
            find_unused_parameters=step < warmup,  # the network sits out the warm-up
        )
    columns = ["step", "loss", "sim", "reg", "lambda", "it_per_s", "time_s"]
    log = CsvLog(out_dir / "train.csv", columns, step) if ctx.is_main else None
    val_columns = ["step", "val_sim", "val_folding_percent", "val_dice"]
    val_log = CsvLog(out_dir / "val.csv", val_columns, step) if ctx.is_main else None
    writer = None
    if cfg.tensorboard and ctx.is_main:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out_dir / "tensorboard"))
        except ImportError:
            LOGGER.warning("tensorboard is not installed: logging to CSV only")

    def checkpoint() -> None:
        """Called on every rank (the generator states are gathered); rank 0 writes."""
        gens = [gen.get_state()]
        if ctx.distributed:
            gathered = [None] * ctx.world_size
            torch.distributed.all_gather_object(gathered, gen.get_state())
            gens = gathered
        if not ctx.is_main:
            return
        save_checkpoint(
            ckpt_path,
            net=net.state_dict(),
            heads=objective.heads.state_dict(),
            optimizer=opt.state_dict(),
            step=step,
            generators=gens,
            config=cfg.to_json(),
            reg_scale=objective.reg_scale,
        )
        LOGGER.info("checkpoint step %d written by rank %d: %s", step, ctx.rank, ckpt_path)
        if on_checkpoint is not None:
            on_checkpoint(step)

    end = cfg.steps if stop_after is None else min(cfg.steps, step + stop_after)
    last_val: dict = {}
    if step < end:
        loader = _loader(train_set, cfg.batch_size, cfg.seed, step, end, ctx, cfg.num_workers)
        amp = cfg.amp and dev.type == "cuda"
        bar = _progress(cfg.steps, step, f"registration {cfg.loss}", progress and ctx.is_main)
        module.train()
        t0 = time.perf_counter()
        t_last, s_last = t0, step
        for batch in loader:
            batch = _to_device(batch, dev)
            if cfg.deform_augment > 0:
                batch = deform_batch(
                    batch, cfg.deform_augment, cfg.deform_sigma, cfg.regnet.ts, gen
                )
            lam = sample_lambda(cfg, batch["moving"].shape[0], gen).to(dev)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                # during the head warm-up only the heads learn, on the pair as it is
                losses, _ = module(batch, lam, gen, heads_only=step < warmup)
            loss = losses["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at step {step + 1}: {losses}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step == warmup and cfg.reg_scale is None:  # calibrate with warmed-up heads
                objective.reg_scale = _calibrate(objective, train_set, cfg, dev, ctx)
            if step % cfg.log_every == 0 or step == end:
                now = time.perf_counter()
                rate = (step - s_last) / max(now - t_last, 1e-9)
                t_last, s_last = now, step
                row = {
                    "step": step,
                    "loss": loss.item(),
                    "sim": losses["sim"].item(),
                    "reg": losses["reg"].item(),
                    "lambda": lam.mean().item(),
                    "it_per_s": rate,
                    "time_s": now - t0,
                }
                if log is not None:
                    log.write(**row)
                if writer is not None:
                    for k in ("loss", "sim", "reg", "lambda", "it_per_s"):
                        writer.add_scalar(f"train/{k}", row[k], step)
                bar.set_postfix(loss=f"{row['loss']:.4f}", it_s=f"{rate:.2f}")
            bar.update(1)
            # and at the last step, so that every finished model has validation figures
            validate_now = step % cfg.val_every == 0 or step == cfg.steps
            if val_set is not None and len(val_set) and validate_now and ctx.is_main:
                last_val = validate(net, objective, val_set, cfg, dev)
                val_log.write(step=step, **last_val)
                if writer is not None:
                    for k, v in last_val.items():
                        writer.add_scalar(f"val/{k}", v, step)
            if step % cfg.checkpoint_every == 0 and step != end:
                checkpoint()
        bar.close()
        checkpoint()
    if writer is not None:
        writer.close()
    final_reg_scale = None
    if cfg.reg_scale is None and step >= cfg.steps:
        # lambda was defined by the balance at the start; CR/mCR's projection heads have
        # trained since, so their similarity pulls differently now: measure it again
        final_reg_scale = _calibrate(objective, train_set, cfg, dev, ctx, final=True)
    digest = parameters_digest(net, objective.heads)
    LOGGER.info(
        "rank %d/%d at step %d, parameters sha256 %s", ctx.rank, ctx.world_size, step, digest
    )
    if owns_group:
        ddp.teardown(ctx)
    result = TrainResult(
        step, ckpt_path, out_dir / "train.csv", out_dir / "val.csv", digest, last_val,
        final_reg_scale,
    )  # fmt: skip
    return net, objective, result


# --------------------------------------------------------------------------- SupPretrain


def pretrain_supervised(
    moving: list,
    fixed: list,
    cfg: TrainConfig,
    out_dir: str | Path,
    progress: bool = True,
) -> tuple[dict[str, Autoencoder], dict[str, ProjectionHeads]]:
    """SupPretrain variant: both autoencoders and the heads, jointly, on aligned
    same-subject pairs: ``lambda_sp * d12(I1, I2) + sum_i (L1 + NCC)(I_i, recon_i)``.

    ``moving``/``fixed`` are record lists matched on (subject, session). Resumable.
    """
    from contrareg_bids.losses import ContrastiveSimilarity

    from .data import PairDataset

    out_dir = Path(out_dir)
    acfg = cfg.autoencoder
    dev = ddp.resolve_device(cfg.device)
    ctx = ddp.DistContext(0, 1, 0, dev)
    torch.manual_seed(cfg.seed)
    aes = {"moving": Autoencoder().to(dev), "fixed": Autoencoder().to(dev)}
    heads = {
        role: ProjectionHeads(ae.feature_channels, cfg.head_width, cfg.head_depth).to(dev)
        for role, ae in aes.items()
    }
    sim = ContrastiveSimilarity(
        aes["fixed"],
        aes["moving"],
        heads["fixed"],
        heads["moving"],
        num_negatives=cfg.num_negatives,
        tau=cfg.tau,
        masked=True,
        freeze_autoencoders=False,
    )
    params = [p for m in (*aes.values(), *heads.values()) for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=acfg.lr)
    ncc = LocalNCC(window=acfg.ncc_window)
    gen = seeded_generator(cfg.seed, 3)
    ckpt_path = out_dir / CHECKPOINT_NAME
    step = 0
    if ckpt_path.exists():
        state = load_checkpoint(ckpt_path)  # on the CPU: RNG states must stay there
        for role in aes:
            aes[role].load_state_dict(state[f"ae_{role}"])
            heads[role].load_state_dict(state[f"heads_{role}"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        step = int(state["step"])
        set_rng_state(state["rng"])
    if step < acfg.steps:
        ds = PairDataset(moving, fixed, same_subject=True, crop=acfg.crop, seed=cfg.seed)
        loader = _loader(ds, acfg.batch_size, cfg.seed, step, acfg.steps, ctx, cfg.num_workers)
        log = CsvLog(out_dir / "loss.csv", ["step", "loss", "nce", "recon", "time_s"], step)
        bar = _progress(acfg.steps, step, "suppretrain", progress)
        for m in (*aes.values(), *heads.values()):
            m.train()
        t0 = time.perf_counter()
        for batch in loader:
            batch = _to_device(batch, dev)
            i1, i2 = batch["fixed"], batch["moving"]
            r1, _ = aes["fixed"](i1)
            r2, _ = aes["moving"](i2)
            recon = sum((r - x).abs().mean() + ncc(x, r) for r, x in ((r1, i1), (r2, i2)))
            mask = torch.maximum(batch["fixed_mask"], batch["moving_mask"])
            nce = sim(i1, i2, mask=mask, generator=gen)
            loss = cfg.suppretrain_weight * nce + recon
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            bar.update(1)
            log.write(
                step=step,
                loss=loss.item(),
                nce=nce.item(),
                recon=float(recon.detach()),
                time_s=time.perf_counter() - t0,
            )
            if step % 100 == 0 or step == acfg.steps:
                save_checkpoint(
                    ckpt_path,
                    optimizer=opt.state_dict(),
                    generator=gen.get_state(),
                    step=step,
                    **{f"ae_{r}": aes[r].state_dict() for r in aes},
                    **{f"heads_{r}": heads[r].state_dict() for r in heads},
                )
        bar.close()
    for m in aes.values():
        m.eval()
    return aes, heads
