"""Training: resume after a real kill, 2-process gloo DDP, loss decrease on a real pair."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from contrareg_bids.cli.train import build_config, get_parser
from contrareg_bids.io.bundle import load_model
from contrareg_bids.nn.integrate import integrate_velocity, warp
from contrareg_bids.training.checkpoint import load_checkpoint
from contrareg_bids.training.config import TrainConfig, parse_loss, sloppy_config
from contrareg_bids.training.data import PairDataset, VolumeRecord
from contrareg_bids.training.stream import StepSampler
from contrareg_bids.training.trainer import parameters_digest, train_registration

SHAPE = (24, 24, 24)


def _blob_volume(rng, shape=SHAPE):
    """A smooth random 'brain': positive inside an ellipsoid, 0 outside (skull-stripped)."""
    x = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    inside = (x**2).sum(0) < 0.7
    img = gaussian_filter(rng.random(shape), 1.5)
    img = (img - img.min()) / (img.max() - img.min())
    return (img * inside).astype(np.float32), inside.astype(np.float32)


def _write_lists(tmp_path: Path, n_subjects: int = 4) -> tuple[Path, Path]:
    """Real NIfTI files and the two list files that ``contrareg-train`` reads."""
    rng = np.random.default_rng(1)
    lists = {"T2w": [], "T1w": []}
    for i in range(n_subjects):
        for mod in lists:
            img, mask = _blob_volume(rng)
            if mod == "T1w":
                img = np.where(mask > 0, 1.0 - img, 0).astype(np.float32)  # other contrast
            f = tmp_path / f"sub-{i:02d}_{mod}.nii.gz"
            nib.save(nib.Nifti1Image(img, np.eye(4)), f)
            fm = tmp_path / f"sub-{i:02d}_{mod}_mask.nii.gz"
            nib.save(nib.Nifti1Image(mask, np.eye(4)), fm)
            lists[mod].append(f"{f.name}\t{fm.name}")
    paths = []
    for mod, rows in lists.items():
        p = tmp_path / f"{mod}.tsv"
        p.write_text("image\tmask\n" + "\n".join(rows) + "\n")
        paths.append(p)
    return paths[0], paths[1]


def _train_cmd(moving: Path, fixed: Path, out: Path, steps: int, extra=()) -> list[str]:
    return [
        "--moving-list", str(moving), "--fixed-list", str(fixed), "--out", str(out),
        "--sloppy", "--loss", "mcr", "--steps", str(steps), "--ae-steps", "4",
        "--ae-crop", "16", "--ch", "4", "--depth", "2", "--num-negatives", "32",
        "--checkpoint-every", "3", "--val-every", "5", "--val-fraction", "0.25",
        "--lr", "1e-3", "--workers", "1", "--quiet", *extra,
    ]  # fmt: skip


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    return env


def _bundle_digest(path: Path) -> str:
    """The digest the trainer logs: network + heads keyed by role (moving/fixed)."""
    b = load_model(path)
    mods = b.metadata.modalities
    heads = torch.nn.ModuleDict({role: b.heads[mod] for role, mod in mods.items()})
    return parameters_digest(b.regnet, heads)


@pytest.mark.slow  # a subprocess killed mid-training (about 1-2 min on 2 cores)
def test_resume_after_kill_reproduces_uninterrupted_run(tmp_path):
    moving, fixed = _write_lists(tmp_path)
    steps = 40
    ref = tmp_path / "ref"
    subprocess.run(
        [sys.executable, "-m", "contrareg_bids.cli.train", *_train_cmd(moving, fixed, ref, steps)],
        check=True, env=_env(), capture_output=True, timeout=300,
    )  # fmt: skip
    run = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "contrareg_bids.cli.train",
        *_train_cmd(moving, fixed, run, steps),
    ]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = run / "checkpoints" / "last.pt"
    deadline = time.time() + 240
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed_at = int(load_checkpoint(ckpt)["step"])
    assert 0 < killed_at < steps
    assert not (run / "model.safetensors").exists()
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"resuming from {ckpt} at step" in res.stderr
    params = load_model(run / "model.safetensors").metadata.loss_params
    assert 0 < params["balance_lambda_final"] < 1 and params["reg_scale_final"] > 0
    assert _bundle_digest(run / "model.safetensors") == _bundle_digest(ref / "model.safetensors")
    log_steps = [int(r.split(",")[0]) for r in (run / "train.csv").read_text().splitlines()[1:]]
    assert log_steps == sorted(set(log_steps)) and log_steps[-1] == steps


def test_ddp_two_processes_gloo(tmp_path):
    moving, fixed = _write_lists(tmp_path)
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "contrareg_bids.cli.train",
        *_train_cmd(moving, fixed, out, 6, extra=("--device", "cpu", "--workers", "0")),
    ]  # fmt: skip
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    digests = dict(re.findall(r"rank (\d)/2 at step 6, parameters sha256 (\w+)", res.stderr))
    assert set(digests) == {"0", "1"}, res.stderr[-3000:]
    assert digests["0"] == digests["1"]  # both ranks hold the same weights
    writers = set(re.findall(r"checkpoint step \d+ written by rank (\d)", res.stderr))
    assert writers == {"0"}
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert len(state["generators"]) == 2  # gathered from both ranks
    assert _bundle_digest(out / "model.safetensors") == digests["0"]


def test_training_steps_lower_the_loss_on_a_real_pair(icbm_pair, tmp_path):
    # a 'second subject': the T2w under a smooth random diffeomorphism
    t2_def, t1 = _deformed_pair(icbm_pair)
    moving = [VolumeRecord(image=t2_def, subject="a")]
    fixed = [VolumeRecord(image=t1, subject="b")]
    cfg = sloppy_config(
        loss="mi", steps=20, lr=2e-3, log_every=1, val_every=1000, checkpoint_every=1000,
        regnet={"ch": 8, "depth": 2, "hypernet": False, "fixed_lambda": 0.05}, num_workers=0,
    )  # fmt: skip
    ds = PairDataset(moving, fixed, seed=0)
    _, _, result = train_registration(ds, cfg, tmp_path / "run", progress=False)
    rows = [r.split(",") for r in result.log.read_text().splitlines()[1:]]
    sims = [float(r[2]) for r in rows]
    print("similarity per step:", np.round(sims, 4))
    assert np.mean(sims[-5:]) < np.mean(sims[:5]) - 0.01, sims


def test_step_sampler_is_a_pure_function_of_the_step():
    full = list(StepSampler(10, 2, seed=3, total_steps=12))
    resumed = list(StepSampler(10, 2, seed=3, start_step=7, total_steps=12))
    assert full[14:] == resumed
    r0 = list(StepSampler(10, 2, seed=3, total_steps=5, rank=0, world_size=2))
    r1 = list(StepSampler(10, 2, seed=3, total_steps=5, rank=1, world_size=2))
    assert not set(r0[:4]) & set(r1[:4])  # one step's samples are disjoint across ranks


def test_config_round_trip_and_validation(tmp_path):
    cfg = sloppy_config(loss="cr+mi")
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.effective_alpha == 0.1 and TrainConfig(loss="mind").effective_alpha == 1.0
    toml = tmp_path / "c.toml"
    toml.write_text('loss = "mi"\nsteps = 7\n[regnet]\nch = 8\n[autoencoder]\ncrop = 32\n')
    cfg = TrainConfig.from_file(toml)
    assert (cfg.loss, cfg.steps, cfg.regnet.ch, cfg.autoencoder.crop) == ("mi", 7, 8, 32)
    with pytest.raises(ValueError, match="unknown training setting"):
        TrainConfig.from_dict({"stepz": 3})
    with pytest.raises(ValueError, match="only apply to cr/mcr"):
        parse_loss("mi+extnegs")
    with pytest.raises(ValueError, match="loss must start with"):
        parse_loss("ssd")
    with pytest.raises(ValueError, match="lambda_range"):
        TrainConfig(lambda_range=(0.5, 0.2))


def test_cli_overrides_and_errors(tmp_path, capsys):
    args = get_parser().parse_args(
        ["--moving-list", "m", "--fixed-list", "f", "--out", "o", "--sloppy", "--ch", "8",
         "--fixed-lambda", "0.2", "--loss", "mcr+randae", "--lambda-range", "0", "0.5"]
    )  # fmt: skip
    cfg = build_config(args)
    assert cfg.regnet.ch == 8 and not cfg.regnet.hypernet and cfg.regnet.fixed_lambda == 0.2
    assert cfg.loss == "mcr+randae" and cfg.lambda_range == (0.0, 0.5)
    from contrareg_bids.cli.train import main

    missing = tmp_path / "nope.txt"
    assert main(["--moving-list", str(missing), "--fixed-list", str(missing),
                 "--out", str(tmp_path / "o")]) == 2  # fmt: skip
    assert "cannot read the list" in capsys.readouterr().err


def test_objective_gradients_reach_network_and_heads_not_autoencoders():
    from contrareg_bids.nn.autoencoder import Autoencoder
    from contrareg_bids.nn.model import ContraRegNet
    from contrareg_bids.training.objective import RegistrationObjective

    torch.manual_seed(0)
    cfg = sloppy_config(loss="mcr", num_negatives=16, regnet={"ch": 4, "depth": 2})
    aes = {"moving": Autoencoder(), "fixed": Autoencoder()}
    objective = RegistrationObjective(cfg, aes)
    objective.train()
    net = ContraRegNet(cfg.regnet)
    rng = np.random.default_rng(0)
    img, mask = _blob_volume(rng, (16, 16, 16))
    batch = {
        "moving": torch.from_numpy(img)[None, None],
        "fixed": torch.from_numpy(1 - img)[None, None] * torch.from_numpy(mask),
        "moving_mask": torch.from_numpy(mask)[None, None],
        "fixed_mask": torch.from_numpy(mask)[None, None],
    }
    lam = torch.full((1, 1), 0.3)
    out = net(batch["moving"], batch["fixed"], lam)
    losses = objective(batch, out, lam)
    losses["loss"].backward()
    assert net.flow.weight.grad.abs().sum() > 0
    assert net.hypernet.projections[0].weight.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in objective.heads.parameters())
    assert all(p.grad is None for ae in aes.values() for p in ae.parameters())
    assert all(not ae.training for ae in aes.values())
    lam_part = (1 - 0.3) * losses["sim"] + 0.3 * losses["reg"]
    torch.testing.assert_close(losses["loss"].detach(), lam_part)


def test_compile_keeps_parameter_names():
    """A compiled U-Net must save and load under the same names as an eager one."""
    from contrareg_bids.nn.model import ContraRegNet

    net = ContraRegNet(ch=4, depth=2)
    names = set(net.state_dict())
    net.unet.compile()
    assert set(net.state_dict()) == names


def test_validation_set_reaches_val_pairs_with_one_held_out_subject():
    from contrareg_bids.training.pipeline import validation_set

    rng = np.random.default_rng(0)
    recs = [VolumeRecord(image=rng.random((4, 4, 4)).astype(np.float32), subject=f"s{i}")
            for i in range(6)]  # fmt: skip
    ds = validation_set(recs[:1], recs, None, sloppy_config(val_pairs=4))
    assert len(ds) == 4
    assert {ds[i]["fixed_id"] for i in range(4)} <= {"s1", "s2", "s3", "s4", "s5"}


def test_hypernetwork_gets_its_own_learning_rate(icbm_pair, tmp_path):
    """``hypernet_lr`` reaches the optimizer groups of the hypernetwork (and only them)."""
    from contrareg_bids.training.checkpoint import load_checkpoint

    img = icbm_pair["t1w"][16:32, 24:40, 20:36]
    recs = [VolumeRecord(img, "a"), VolumeRecord(img[::-1].copy(), "b")]
    cfg = sloppy_config(
        loss="mi", steps=1, lr=1e-3, hypernet_lr=5e-5, val_every=1000, num_workers=0,
        regnet={"ch": 4, "depth": 2},
    )  # fmt: skip
    ds = PairDataset(recs, recs, seed=0)
    _, _, result = train_registration(ds, cfg, tmp_path, progress=False)
    groups = load_checkpoint(result.checkpoint, "cpu")["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == [1e-3, 5e-5, 5e-5, 1e-3]
    assert TrainConfig(lr=2e-3).effective_hypernet_lr == 2e-3
    with pytest.raises(ValueError, match="learning rates"):
        sloppy_config(hypernet_lr=0.0)


def test_progress_is_log_lines_when_stderr_is_not_a_terminal(monkeypatch, caplog):
    """SLURM output and redirected logs get a line every ~5 % of the run, not tqdm redraws."""
    import io
    import logging

    from contrareg_bids.training import trainer

    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a file, as under sbatch
    bar = trainer._progress(100, 40, "registration mcr", enabled=True)
    assert isinstance(bar, trainer.LogProgress)
    with caplog.at_level(logging.INFO, logger="contrareg_bids.training"):
        for _ in range(60):
            bar.set_postfix(loss="0.5000", it_s="3.00")
            bar.update(1)
        bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 12  # steps 45, 50, ..., 100
    assert lines[0].startswith("registration mcr: step 45/100, loss 0.5000, ")
    assert lines[-1].startswith("registration mcr: step 100/100")
    assert sys.stderr.getvalue() == ""
    assert trainer._progress(10, 0, "x", enabled=False).disable  # off stays off


def test_suppretrain_variant_trains_end_to_end_without_autograd_warnings(tmp_path):
    """``mcr+suppretrain``: autoencoders and heads pretrained jointly on the aligned
    same-subject pairs, then registration; the bundle carries the pretrained heads. The
    pretraining log must not convert a graph-attached tensor to a float (torch warns)."""
    import warnings

    from contrareg_bids.training.pipeline import train

    rng = np.random.default_rng(3)
    moving, fixed = [], []
    for i in range(3):
        img, mask = _blob_volume(rng)
        moving.append(VolumeRecord(image=img, subject=str(i), mask=mask))
        fixed.append(VolumeRecord(image=np.where(mask > 0, 1 - img, 0), subject=str(i), mask=mask))
    cfg = sloppy_config(
        loss="mcr+suppretrain", steps=2, lr=1e-3, num_negatives=16, val_every=1000,
        checkpoint_every=1000, log_every=1, num_workers=0, device="cpu",
        regnet={"ch": 4, "depth": 2}, autoencoder={"steps": 3, "crop": 16},
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = train(moving, fixed, cfg, tmp_path / "run", progress=False)
    grad_warnings = [str(w.message) for w in caught if "requires_grad" in str(w.message)]
    assert not grad_warnings, grad_warnings
    log = (tmp_path / "run" / "autoencoders" / "suppretrain" / "loss.csv").read_text()
    assert len(log.splitlines()) == 1 + 3
    assert log.splitlines()[0] == "step,loss,nce,recon,time_s"  # timed like the AE logs
    bundle = load_model(out.bundle)
    assert bundle.metadata.loss == "mcr+suppretrain"
    assert set(bundle.heads) == {"T2w", "T1w"}


def _deformed_pair(icbm_pair):
    t1 = icbm_pair["t1w"][16:48, 24:64, 20:52]
    t2 = icbm_pair["t2w"][16:48, 24:64, 20:52]
    rng = np.random.default_rng(0)
    v = np.stack([gaussian_filter(rng.standard_normal(t2.shape), 6) for _ in range(3)])
    v = torch.from_numpy((v / np.abs(v).max() * 3.0).astype(np.float32))[None]
    t2_def = warp(torch.from_numpy(t2)[None, None], integrate_velocity(v, 7))[0, 0].numpy()
    return t2_def, t1


def test_calibration_balances_the_pull_of_both_terms(icbm_pair):
    """The calibrated scale makes the similarity and the regulariser pull equally along the
    reference deformation (so that they balance at lambda 0.5): checked with finite
    differences of the whole objective at lambda 0 (similarity alone) and 1 (regulariser
    alone), independently of the gradients the calibration used. A scale from gradient
    norms instead (10-20x larger, calibration.py) fails this."""
    from contrareg_bids.training.calibration import (
        calibrate_reg_scale,
        reference_output,
        reference_velocity,
    )
    from contrareg_bids.training.objective import RegistrationObjective

    mov, fix = _deformed_pair(icbm_pair)
    batch = {
        "moving": torch.from_numpy(mov)[None, None],
        "fixed": torch.from_numpy(fix)[None, None],
    }
    obj = RegistrationObjective(sloppy_config(loss="mi")).eval()
    obj.reg_scale = calibrate_reg_scale(obj, [batch], ts=5, seed=0)["reg_scale"]
    v = reference_velocity(fix.shape, 5, torch.Generator().manual_seed(4242))  # the one it used

    def slope(lam: float, eps: float = 0.02) -> float:
        weight = torch.full((1, 1), lam)
        at = [float(obj(batch, reference_output(batch, (1 + e) * v, 5), weight)["loss"])
              for e in (eps, -eps)]  # fmt: skip
        return (at[0] - at[1]) / (2 * eps)

    pull_sim, pull_reg = slope(0.0), slope(1.0)
    assert pull_sim > 0 and pull_reg > 0
    assert pull_sim == pytest.approx(pull_reg, rel=0.1), (pull_sim, pull_reg)


def test_final_calibration_is_stored_and_unchanged_when_nothing_it_measures_trains(
    icbm_pair, tmp_path
):
    """Training measures the balance again at the end: with MI nothing it measures trains
    (no heads), so it is the start's exactly and the terms still balance at lambda 0.5."""
    mov, fix = _deformed_pair(icbm_pair)
    ds = PairDataset(
        [VolumeRecord(image=mov, subject="a")], [VolumeRecord(image=fix, subject="b")]
    )
    cfg = sloppy_config(
        loss="mi", steps=6, val_every=1000, checkpoint_every=1000, regnet={"ch": 4, "depth": 2},
        num_workers=0,
    )  # fmt: skip
    _, objective, result = train_registration(ds, cfg, tmp_path, progress=False)
    assert result.final_reg_scale == pytest.approx(objective.reg_scale, rel=1e-6)
    assert result.balance_lambda(objective.reg_scale) == pytest.approx(0.5)


def test_a_constant_factor_on_the_similarity_is_absorbed_by_the_calibration(icbm_pair):
    """Summing PatchNCE over its layers or averaging them (CUT) differs by a constant factor
    on the similarity, as does ``alpha``: the calibration scales the regulariser by the same
    factor and Adam ignores a factor on the whole loss, so the optimisation is the same
    (here 5 Adam steps on a velocity, MI similarity; the factor is 1/6, six layers). Without
    the recalibration the same factor changes the steps. Adam's eps is 1e-12 here: at the
    default 1e-8 the two differ by ~4 % (voxels whose gradient is below ~1e-7)."""
    from contrareg_bids.training.calibration import calibrate_reg_scale, reference_output
    from contrareg_bids.training.objective import RegistrationObjective

    mov, fix = _deformed_pair(icbm_pair)
    batch = {
        "moving": torch.from_numpy(mov)[None, None],
        "fixed": torch.from_numpy(fix)[None, None],
    }
    lam = torch.full((1, 1), 0.3)

    def adam_steps(factor: float, reg_scale: float | None = None):
        obj = RegistrationObjective(sloppy_config(loss="mi"))
        obj.alpha = obj.alpha * factor
        obj.reg_scale = reg_scale or calibrate_reg_scale(obj, [batch], ts=5)["reg_scale"]
        v0 = 0.3 * torch.randn((1, 3, *fix.shape), generator=torch.Generator().manual_seed(0))
        v = v0.clone().requires_grad_(True)
        opt = torch.optim.Adam([v], lr=0.05, eps=1e-12)
        for _ in range(5):
            opt.zero_grad()
            obj(batch, reference_output(batch, v, 5), lam)["loss"].backward()
            opt.step()
        return obj.reg_scale, v.detach() - v0

    scale_sum, step_sum = adam_steps(1.0)
    scale_mean, step_mean = adam_steps(1.0 / 6.0)
    _, step_uncalibrated = adam_steps(1.0 / 6.0, reg_scale=scale_sum)
    assert scale_mean == pytest.approx(scale_sum / 6.0, rel=1e-4)
    size = step_sum.norm()
    print("relative differences:", float((step_mean - step_sum).norm() / size),
          float((step_uncalibrated - step_sum).norm() / size))  # fmt: skip
    assert (step_mean - step_sum).norm() < 0.01 * size
    assert (step_uncalibrated - step_sum).norm() > 0.1 * size


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_training_resumes_on_cuda(tmp_path):
    """Checkpoints written on a GPU resume there (RNG states are loaded on the CPU)."""
    from contrareg_bids.training.pipeline import read_record_list, train

    moving, fixed = _write_lists(tmp_path)
    args = _train_cmd(moving, fixed, tmp_path / "unused", 6, extra=("--device", "cuda"))
    cfg = build_config(get_parser().parse_args(args))
    mov, fix = read_record_list(moving), read_record_list(fixed)
    out = tmp_path / "cuda"
    assert train(mov, fix, cfg, out, progress=False, stop_after=2) is None
    done = train(mov, fix, cfg, out, progress=False)  # resumes autoencoders and network
    assert done is not None and load_model(done.bundle).metadata.training_steps == 6
