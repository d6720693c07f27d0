"""The model bundle file format (io/bundle.py): safetensors round trip, atomic writes, and
refusal of bad files. What a model is (metadata, assembly) is tests/test_model_bundle.py."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import safe_open, save_file

from contrareg_bids.io import bundle as bundle_mod
from contrareg_bids.io.bundle import (
    FORMAT_VERSION,
    BundleError,
    BundleMetadata,
    GridSpec,
    ModelBundle,
    describe_bundle,
    file_sha256,
    load_model,
    payload_sha256,
    save_bundle,
    write_sidecar,
)
from contrareg_bids.nn.autoencoder import Autoencoder
from contrareg_bids.nn.heads import ProjectionHeads
from contrareg_bids.nn.model import ContraRegNet

BLOCKS = ((4, 0), (8, -1), (8, -1), (4, 1), (4, 1))


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Non-trivial weights everywhere (the flow and FiLM layers start at ~0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def make_bundle(heads: bool = True, ch: int = 4, **meta) -> ModelBundle:
    torch.manual_seed(0)
    regnet = ContraRegNet(ch=ch, depth=2)
    aes = {m: Autoencoder(1, BLOCKS, 3) for m in ("T2w", "T1w")}
    hds = (
        {m: ProjectionHeads(a.feature_channels, width=8, depth=2) for m, a in aes.items()}
        if heads
        else None
    )
    for i, mod in enumerate([regnet, *aes.values(), *(hds or {}).values()]):
        _randomise(mod, i)
    fields = {
        "grid": GridSpec((12, 14, 10), (1.0, 1.0, 1.2), np.diag([1.0, 1.0, 1.2, 1.0]), "tpl-X"),
        "modalities": {"moving": "T2w", "fixed": "T1w"},
        "normalization": {"method": "percentile", "lower": 0.5, "upper": 99.5, "mask": True},
        "loss": "mcr",
        "loss_params": {"tau": 0.07, "n_patches": 256, "layers": (0, 1, 2)},
        "lambda_range": (0.0, 0.6),
        "training_steps": 1234,
        "data_fingerprint": "sha256:abc",
        "seed": 42,
        "extra": {"note": "tiny"},
    }
    fields.update(meta)
    md = BundleMetadata.for_models(regnet, aes, hds, **fields)
    return ModelBundle(regnet=regnet, autoencoders=aes, heads=hds, metadata=md)


@pytest.fixture
def saved(tmp_path) -> tuple[Path, ModelBundle, str]:
    b = make_bundle()
    path = tmp_path / "model.safetensors"
    return path, b, save_bundle(path, b)


def _rewrite(src: Path, dst: Path, *, doc_fn=None, tensors_fn=None, meta_fn=None) -> Path:
    """Rewrite a bundle with edited content but consistent digests (a buggy writer)."""
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if doc_fn is not None:
        doc = json.loads(meta["contrareg_bids"])
        doc_fn(doc)
        meta["contrareg_bids"] = json.dumps(doc)
    if tensors_fn is not None:
        tensors_fn(tensors)
    meta["metadata_sha256"] = hashlib.sha256(meta["contrareg_bids"].encode()).hexdigest()
    meta["payload_sha256"] = payload_sha256(tensors)
    if meta_fn is not None:
        meta_fn(meta)
    save_file(tensors, str(dst), metadata=meta)
    return dst


def _refused(path: Path, *needles: str, device: str = "cpu") -> str:
    with pytest.raises(BundleError) as info:
        load_model(path, device=device)
    msg = str(info.value)
    assert path.name in msg, msg
    for needle in needles:
        assert needle.lower() in msg.lower(), msg
    return msg


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("with_heads", [True, False])
def test_round_trip_identical_weights_outputs_and_metadata(tmp_path, with_heads):
    b = make_bundle(heads=with_heads)
    path = tmp_path / "model.safetensors"
    digest = save_bundle(path, b)
    assert digest == file_sha256(path) and len(digest) == 64

    out = load_model(path, device="cpu")
    assert out.metadata == b.metadata
    sd_a, sd_b = b.state_dict(), out.state_dict()
    assert sd_a.keys() == sd_b.keys()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert all(p.device.type == "cpu" for p in out.regnet.parameters())
    assert not out.regnet.training and not out.autoencoders["T1w"].training
    assert (out.heads is None) == (not with_heads)

    g = torch.Generator().manual_seed(1)
    mov, fix = torch.rand(2, 1, 1, 12, 14, 10, generator=g)
    b.eval()
    with torch.no_grad():
        ra, rb = b.regnet(mov, fix, 0.3), out.regnet(mov, fix, 0.3)
        for ta, tb in zip(ra, rb, strict=True):
            assert torch.equal(ta, tb)
        assert ra.forward_disp.abs().max() > 1e-3  # a non-trivial network
        for m in ("T2w", "T1w"):
            (rec_a, feats_a), (rec_b, feats_b) = b.autoencoders[m](mov), out.autoencoders[m](mov)
            assert torch.equal(rec_a, rec_b)
            assert all(torch.equal(x, y) for x, y in zip(feats_a, feats_b, strict=True))
        if with_heads:
            x = torch.randn(1, 5, 8, generator=g)
            assert torch.equal(b.heads["T1w"].project(1, x), out.heads["T1w"].project(1, x))


def test_describe_bundle_and_sidecar(tmp_path):
    b = make_bundle()
    path = tmp_path / "model.safetensors"
    digest = save_bundle(path, b, sidecar=True)
    info = describe_bundle(path)
    assert info["format_version"] == FORMAT_VERSION and info["has_heads"]
    assert info["metadata"] == b.metadata.to_dict()
    assert info["n_parameters"] == sum(p.numel() for p in b.state_dict().values())
    assert set(info["parameters"]) == {"regnet", "ae.T2w", "ae.T1w", "heads.T2w", "heads.T1w"}
    side = json.loads((tmp_path / "model.json").read_text())
    assert side["sha256"] == digest and side["file"] == "model.safetensors"
    assert side["metadata"] == b.metadata.to_dict()
    assert write_sidecar(path) == tmp_path / "model.json"  # recomputes the same digest
    assert json.loads((tmp_path / "model.json").read_text())["sha256"] == digest


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_load_to_cuda(saved):
    path, _, _ = saved
    out = load_model(path, device="cuda")
    assert all(p.is_cuda for p in out.regnet.parameters())
    assert all(p.is_cuda for h in out.heads.values() for p in h.parameters())


# --------------------------------------------------------------------------- writing


def test_atomic_write_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "sub" / "model.safetensors"
    save_bundle(path, make_bundle(), sidecar=True)
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.json", "model.safetensors"]
    mode = path.stat().st_mode & 0o777
    assert mode == (tmp_path / "sub" / "model.json").stat().st_mode & 0o777  # not 0600


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"

    def broken(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(bundle_mod, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_bundle(path, make_bundle())
    assert list(tmp_path.iterdir()) == []

    # an existing bundle survives a failed overwrite untouched
    monkeypatch.undo()
    digest = save_bundle(path, make_bundle())
    monkeypatch.setattr(bundle_mod, "save_file", broken)
    with pytest.raises(OSError):
        save_bundle(path, make_bundle(heads=False))
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    assert file_sha256(path) == digest
    load_model(path)


def test_save_refuses_modules_that_do_not_match_metadata(tmp_path):
    b = make_bundle()
    b.autoencoders["T1w"] = Autoencoder(1, ((4, 0), (8, -1)), 2)
    with pytest.raises(ValueError, match="autoencoder 'T1w'"):
        save_bundle(tmp_path / "m.safetensors", b)
    b = make_bundle()
    b.regnet = ContraRegNet(ch=6, depth=2)
    with pytest.raises(ValueError, match=r"metadata\.regnet"):
        save_bundle(tmp_path / "m.safetensors", b)
    b = make_bundle(heads=False)
    b.autoencoders.pop("T2w")
    with pytest.raises(ValueError, match="modalities"):
        save_bundle(tmp_path / "m.safetensors", b)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- refusals


def test_missing_file(tmp_path):
    _refused(tmp_path / "nope.safetensors", "no such model bundle file")
    with pytest.raises(BundleError, match="nope"):
        describe_bundle(tmp_path / "nope.safetensors")


def test_random_bytes(tmp_path):
    path = tmp_path / "random.safetensors"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _refused(path, "not a safetensors file")
    path.write_bytes(b"abc")
    _refused(path, "not a safetensors file")


def test_truncated(saved, tmp_path):
    path, _, _ = saved
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    _refused(cut, "truncated")
    cut.write_bytes(data[:100])  # inside the header
    _refused(cut, "truncated")
    cut.write_bytes(data + b"\0")
    _refused(cut, "trailing bytes")


def test_foreign_safetensors(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    _refused(path, "not a contrareg-bids model bundle", "no 'format' metadata")
    save_file({"w": torch.zeros(2)}, str(path), metadata={"format": "pt"})
    _refused(path, "not a contrareg-bids model bundle", "'pt'")
    with pytest.raises(BundleError, match="not a contrareg-bids"):
        describe_bundle(path)


def test_flipped_payload_byte_is_detected(saved, tmp_path):
    path, _, _ = saved
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    for i, where in enumerate((start, (start + len(data)) // 2, len(data) - 1)):
        bad = bytearray(data)
        bad[where] ^= 0x01
        out = tmp_path / f"flipped{i}.safetensors"
        out.write_bytes(bytes(bad))
        _refused(out, "digest mismatch", "modified or corrupted")


def test_tampered_metadata_is_detected(saved, tmp_path):
    path, _, _ = saved
    data = path.read_bytes()
    old = b'training_steps\\": 1234'  # the JSON document is a string inside the header
    assert data.count(old) == 1
    out = tmp_path / "tampered.safetensors"
    out.write_bytes(data.replace(old, old.replace(b"1234", b"9234")))
    _refused(out, "metadata digest mismatch")


def test_missing_required_metadata_field(saved, tmp_path):
    path, _, _ = saved
    out = _rewrite(path, tmp_path / "nofield.safetensors", doc_fn=lambda d: d.pop("grid"))
    _refused(out, "invalid bundle metadata", "missing required field(s) ['grid']")
    out = _rewrite(path, tmp_path / "nodoc.safetensors", meta_fn=lambda m: m.pop("contrareg_bids"))
    _refused(out, "'contrareg_bids' is missing")
    out = _rewrite(
        path, tmp_path / "badjson.safetensors", meta_fn=lambda m: m.update(contrareg_bids="{x")
    )
    _refused(out, "not valid JSON")


def test_shapes_that_do_not_match_the_config(saved, tmp_path):
    path, _, _ = saved

    def narrower(doc):
        doc["regnet"]["ch"] = 8

    out = _rewrite(path, tmp_path / "shape.safetensors", doc_fn=narrower)
    msg = _refused(out, "do not match the architecture", "wrong shape(s)", "regnet.flow.weight")
    assert "[3, 4, 3, 3, 3] (expected [3, 8, 3, 3, 3])" in msg and "(25 in all)" in msg

    def drop_and_add(tensors):
        tensors.pop("ae.T1w.out.weight")
        tensors["ae.T1w.extra"] = torch.zeros(3)

    out = _rewrite(path, tmp_path / "keys.safetensors", tensors_fn=drop_and_add)
    _refused(out, "missing tensor(s): ae.T1w.out.weight", "unexpected tensor(s): ae.T1w.extra")


def test_non_finite_weights(saved, tmp_path):
    path, _, _ = saved

    def poison(tensors):
        tensors["regnet.flow.bias"][0] = float("nan")

    out = _rewrite(path, tmp_path / "nan.safetensors", tensors_fn=poison)
    _refused(out, "non-finite", "regnet.flow.bias")


def test_future_format_version(saved, tmp_path):
    path, _, _ = saved
    future = str(FORMAT_VERSION + 1)
    out = _rewrite(
        path, tmp_path / "future.safetensors", meta_fn=lambda m: m.update(format_version=future)
    )
    _refused(out, f"format version {future} is newer", "upgrade contrareg-bids")
    out = _rewrite(
        path, tmp_path / "junk.safetensors", meta_fn=lambda m: m.update(format_version="x")
    )
    _refused(out, "invalid bundle format_version")


def test_format_1_bundles_are_refused_with_a_retrain_message(saved, tmp_path):
    path, _, _ = saved
    out = _rewrite(
        path, tmp_path / "old.safetensors", meta_fn=lambda m: m.update(format_version="1")
    )
    _refused(out, "format version 1 was written by an older", "retrain")


class _Evil:
    """Unpickling this object would create a marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("zipfile", [True, False])
def test_torch_save_checkpoints_are_never_unpickled(tmp_path, monkeypatch, zipfile):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.safetensors"
    torch.save(
        {"state": make_bundle().regnet.state_dict(), "evil": _Evil(marker)},
        path,
        _use_new_zipfile_serialization=zipfile,
    )

    def forbidden(*args, **kwargs):
        raise AssertionError("tried to unpickle")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    _refused(path, "not a safetensors file", "pickle")
    with pytest.raises(BundleError, match="pickle"):
        describe_bundle(path)
    assert not marker.exists()
    assert not os.path.exists(tmp_path / "pwned")
