"""Training data: loading and validation, cache, crops/flips/augmentation, pairs, loaders,
split and fingerprint; on tiny volumes written as real NIfTI files."""

from __future__ import annotations

import gzip
import itertools
import os
import pickle

import nibabel as nib
import numpy as np
import pytest
import torch

from contrareg_bids.training import stream
from contrareg_bids.training.augment import IntensityAugment, IntensityParams, random_window
from contrareg_bids.training.data import (
    AutoencoderDataset,
    PairDataset,
    VolumeCache,
    VolumeRecord,
    data_fingerprint,
    load_labels,
    load_mask,
    load_volume,
    split_records,
)

SHAPE = (12, 14, 10)


def _write(path, arr, dtype=np.float32):
    nib.Nifti1Image(np.asarray(arr, dtype=dtype), np.eye(4)).to_filename(str(path))
    return path


def _ramp(shape=SHAPE, offset=0.0):
    """Distinct values in (0, 1]: every voxel identifies its position."""
    n = int(np.prod(shape))
    return ((np.arange(n, dtype=np.float64) + 1 + offset) / (n + 1 + offset)).reshape(shape)


def _brain(shape=SHAPE, rng=None):
    """A blob with zero background and intensities in (0, 1]."""
    rng = rng or np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    inside = (grid**2).sum(0) < 0.8
    vol = np.where(inside, 0.2 + 0.8 * rng.random(shape), 0.0)
    return vol.astype(np.float32), inside


@pytest.fixture
def subjects(tmp_path):
    """Four subjects, T1w and T2w each, with masks and label maps, as .nii.gz files."""
    rng = np.random.default_rng(1)
    t1, t2 = [], []
    for k in range(4):
        sub = f"sub-{k:02d}"
        vol, inside = _brain(rng=rng)
        lab = (inside * (1 + (np.arange(SHAPE[0])[:, None, None] > SHAPE[0] // 2))).astype(
            np.int16
        )
        mask = _write(tmp_path / f"{sub}_mask.nii.gz", inside, np.uint8)
        labels = _write(tmp_path / f"{sub}_dseg.nii.gz", lab, np.int16)
        img1 = _write(tmp_path / f"{sub}_T1w.nii.gz", vol)
        img2 = _write(tmp_path / f"{sub}_T2w.nii.gz", 1.0 - vol * inside)
        t1.append(VolumeRecord(img1, sub, mask=mask, labels=labels))
        t2.append(VolumeRecord(img2, sub, mask=mask, labels=labels))
    return t1, t2


# ----------------------------------------------------------------------------- loading


def test_load_volume_dtypes_and_squeeze(tmp_path):
    vol = _ramp()
    p3 = _write(tmp_path / "a.nii.gz", vol, np.int16)
    p4 = _write(tmp_path / "b.nii", vol[..., None])
    out = load_volume(p3)
    assert out.dtype == np.float32 and out.shape == SHAPE
    got = load_volume(p4)
    assert got.shape == SHAPE
    np.testing.assert_allclose(got, vol, rtol=1e-6)
    lab = load_labels(_write(tmp_path / "l.nii.gz", np.arange(np.prod(SHAPE)).reshape(SHAPE) % 5))
    assert lab.dtype == np.int64 and set(np.unique(lab)) == set(range(5))
    mask = load_mask(_write(tmp_path / "m.nii.gz", vol > 0.5, np.uint8))
    assert mask.dtype == np.float32 and set(np.unique(mask)) == {0.0, 1.0}
    assert load_volume(vol).dtype == np.float32  # arrays too


def test_load_errors_name_the_file(tmp_path):
    good = _write(tmp_path / "good.nii.gz", _ramp())
    data = good.read_bytes()
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"truncated\.nii\.gz"):
        load_volume(truncated)
    # a gzip stream that is complete but holds too few voxels
    short = tmp_path / "short.nii.gz"
    short.write_bytes(gzip.compress(gzip.decompress(data)[:400]))
    with pytest.raises(ValueError, match=r"short\.nii\.gz"):
        load_volume(short)
    four_d = _write(tmp_path / "fourd.nii.gz", np.zeros((*SHAPE, 2)))
    with pytest.raises(ValueError, match=r"fourd\.nii\.gz.*3-D"):
        load_volume(four_d)
    nan = _ramp()
    nan[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match=r"nan\.nii\.gz.*non-finite"):
        load_volume(_write(tmp_path / "nan.nii.gz", nan))
    with pytest.raises(ValueError, match="non-integer"):
        load_labels(_write(tmp_path / "frac.nii.gz", _ramp()))
    with pytest.raises(FileNotFoundError, match=r"missing\.nii\.gz"):
        load_volume(tmp_path / "missing.nii.gz")
    with pytest.raises(ValueError, match="3-D"):
        load_volume(np.zeros((4, 4)))


def test_cache_loads_once_lru_and_pickles(tmp_path):
    paths = [_write(tmp_path / f"v{k}.nii.gz", _ramp(offset=k)) for k in range(3)]
    nbytes = int(np.prod(SHAPE)) * 4
    cache = VolumeCache(max_bytes=2 * nbytes)
    a = cache.get(paths[0])
    b = cache.get(paths[0])
    assert a is b and cache.misses == 1 and cache.hits == 1
    assert not a.flags.writeable
    cache.get(paths[1])
    cache.get(paths[0])  # paths[0] most recent -> paths[1] is evicted next
    cache.get(paths[2])
    assert len(cache) == 2 and cache.nbytes == 2 * nbytes
    misses = cache.misses
    cache.get(paths[0])
    assert cache.misses == misses
    cache.get(paths[1])
    assert cache.misses == misses + 1
    clone = pickle.loads(pickle.dumps(cache))
    assert len(clone) == 0 and clone.max_bytes == cache.max_bytes
    # arrays: the caller's array stays writable
    arr = _ramp().astype(np.float32)
    assert cache.get(arr) is not arr and arr.flags.writeable


def test_record_mask_shape_mismatch(tmp_path):
    rec = VolumeRecord(_ramp(), "sub-a", mask=np.ones((3, 3, 3)))
    ds = PairDataset([rec], template=VolumeRecord(_ramp(), "tpl"))
    with pytest.raises(ValueError, match="mask shape"):
        ds[0]


# ----------------------------------------------------------------------------- autoencoder


def _find_origin(vol, crop):
    idx = np.argwhere(vol == crop.flat[0])
    assert len(idx) == 1
    return tuple(int(i) for i in idx[0])


def test_crop_is_slice_of_volume(tmp_path):
    vol = _ramp().astype(np.float32)
    rec = VolumeRecord(_write(tmp_path / "v.nii.gz", vol), "sub-a")
    ds = AutoencoderDataset([rec], crop=6, flips=False, augment=False, samples_per_volume=20)
    origins = set()
    for i in range(len(ds)):
        img = ds[i]["image"]
        assert img.shape == (1, 6, 6, 6) and img.dtype == torch.float32
        crop = img[0].numpy()
        o = _find_origin(vol, crop)
        origins.add(o)
        np.testing.assert_array_equal(crop, vol[o[0] : o[0] + 6, o[1] : o[1] + 6, o[2] : o[2] + 6])
        window, _, _ = ds.params(i, 0, vol.shape)
        assert tuple(s.start for s in window) == o
    assert len(origins) > 10  # the windows move


def test_small_volume_takes_whole_axis():
    vol = _ramp((6, 12, 10)).astype(np.float32)
    ds = AutoencoderDataset([VolumeRecord(vol, "s")], crop=8, flips=False, augment=False)
    crop = ds[0]["image"][0].numpy()
    assert crop.shape == (6, 8, 8)
    o = _find_origin(vol, crop)
    assert o[0] == 0
    np.testing.assert_array_equal(crop, vol[:, o[1] : o[1] + 8, o[2] : o[2] + 8])
    ds_all = AutoencoderDataset([VolumeRecord(vol, "s")], crop=None, flips=False, augment=False)
    np.testing.assert_array_equal(ds_all[0]["image"][0].numpy(), vol)


def test_flips_really_flip():
    vol = _ramp().astype(np.float32)
    ds = AutoencoderDataset(
        [VolumeRecord(vol, "s")], crop=64, flips=True, augment=False, samples_per_volume=24
    )
    seen = set()
    for i in range(len(ds)):
        out = ds[i]["image"][0].numpy()
        matches = [
            axes
            for r in range(4)
            for axes in itertools.combinations(range(3), r)
            if np.array_equal(out, np.flip(vol, axes) if axes else vol)
        ]
        assert len(matches) == 1
        _, flips, _ = ds.params(i, 0, vol.shape)
        assert matches[0] == tuple(k for k in range(3) if flips[k])
        seen.add(matches[0])
    assert len(seen) >= 6 and {(0,), (1,), (2,)} & seen


def test_augmentation_range_and_effect():
    vol, inside = _brain()
    rec = VolumeRecord(vol, "s")
    plain = AutoencoderDataset([rec], crop=8, augment=False, seed=3, samples_per_volume=8)
    aug = AutoencoderDataset([rec], crop=8, augment=True, seed=3, samples_per_volume=8)
    changed = 0
    for i in range(len(plain)):
        a, b = plain[i]["image"], aug[i]["image"]
        assert a.shape == b.shape
        assert float(b.min()) >= 0.0 and float(b.max()) <= 1.0
        assert bool(((a == 0) <= (b == 0)).all())  # background stays 0
        changed += int(not torch.allclose(a, b, atol=1e-3))
    assert changed == len(plain)
    # strong settings still stay in [0, 1] and background stays 0
    strong = IntensityAugment(brightness=0.5, contrast=0.9, saturation=1.0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = strong(vol, rng)
        assert y.dtype == np.float32 and y.min() >= 0 and y.max() <= 1
        assert np.all(y[~inside] == 0)
    gamma = IntensityAugment(foreground_only=False).apply(
        np.array([0.0, 0.5, 1.0]), IntensityParams(gamma=2.0)
    )
    np.testing.assert_allclose(gamma, [0.0, 0.25, 1.0])


def test_autoencoder_deterministic_by_seed_and_epoch(subjects):
    t1, _ = subjects
    kw = {"crop": 6, "samples_per_volume": 3}
    a, b = AutoencoderDataset(t1, seed=7, **kw), AutoencoderDataset(t1, seed=7, **kw)
    for i in range(len(a)):
        assert torch.equal(a[i]["image"], b[i]["image"])
    other = AutoencoderDataset(t1, seed=8, **kw)
    assert any(not torch.equal(a[i]["image"], other[i]["image"]) for i in range(len(a)))
    first = [a[i]["image"] for i in range(len(a))]
    a.set_epoch(1)
    assert any(not torch.equal(first[i], a[i]["image"]) for i in range(len(a)))
    # an (epoch, index) item carries its own epoch (what the loader's sampler yields)
    assert torch.equal(b[(1, 2)]["image"], a[2]["image"])
    assert torch.equal(b[(0, 2)]["image"], first[2])
    assert len(a) == 12 and a[5]["id"] == t1[5 % 4].subject


# ----------------------------------------------------------------------------- pairs


def test_pairs_different_subjects_by_default(subjects):
    t1, t2 = subjects
    ds = PairDataset(t2, t1, seed=0, samples_per_epoch=40)
    fixed_seen = set()
    for i in range(len(ds)):
        s = ds[i]
        assert s["moving_id"] != s["fixed_id"]
        assert s["moving_id"] == t2[i % 4].subject
        fixed_seen.add(s["fixed_id"])
        assert s["moving"].shape == (1, *SHAPE) and s["fixed"].dtype == torch.float32
    assert len(fixed_seen) == 4
    # one subject only -> refused
    with pytest.raises(ValueError, match="other than"):
        PairDataset(t2[:1], t1[:1])


def test_same_subject_and_template(subjects):
    t1, t2 = subjects
    ds = PairDataset(t2, list(reversed(t1)), same_subject=True)
    for i in range(len(ds)):
        s = ds[i]
        assert s["moving_id"] == s["fixed_id"] == t2[i].subject
        np.testing.assert_allclose(s["fixed"][0].numpy(), load_volume(t1[i].image))
    with pytest.raises(ValueError, match="no fixed record"):
        PairDataset(t2, t1[:2], same_subject=True)
    tpl_img, tpl_mask = _brain(rng=np.random.default_rng(9))
    tpl = VolumeRecord(tpl_img, "tpl-test", mask=tpl_mask.astype(np.uint8))
    ds = PairDataset(t2, None, template=tpl, samples_per_epoch=8)
    for i in range(len(ds)):
        s = ds[i]
        assert s["fixed_id"] == "tpl-test"
        np.testing.assert_array_equal(s["fixed"][0].numpy(), tpl_img)
        assert "fixed_labels" not in s and "moving_labels" in s
    with pytest.raises(ValueError):
        PairDataset(t2, t1, template=tpl)


def test_validation_pairs_deterministic(subjects):
    t1, t2 = subjects
    a = PairDataset(t2, t1, random=False, pairs_per_moving=2)
    b = PairDataset(t2, t1, random=False, pairs_per_moving=2, seed=123)
    assert len(a) == 8
    ids = [(a[i]["moving_id"], a[i]["fixed_id"]) for i in range(len(a))]
    assert ids == [(b[i]["moving_id"], b[i]["fixed_id"]) for i in range(len(b))]
    assert all(m != f for m, f in ids) and len(set(ids)) == 8
    assert ids[:2] == [("sub-00", "sub-01"), ("sub-00", "sub-02")]
    assert ids[6:] == [("sub-03", "sub-00"), ("sub-03", "sub-01")]
    a.set_epoch(5)
    assert ids == [(a[i]["moving_id"], a[i]["fixed_id"]) for i in range(len(a))]
    # random pairs change with the epoch
    r = PairDataset(t2, t1, samples_per_epoch=40)
    e0 = [r[i]["fixed_id"] for i in range(len(r))]
    r.set_epoch(1)
    assert e0 != [r[i]["fixed_id"] for i in range(len(r))]


def test_masks_labels_and_joint_crop(subjects, tmp_path):
    t1, t2 = subjects
    s = PairDataset(t2, t1)[0]
    assert s["moving_mask"].dtype == torch.float32 and s["moving_mask"].shape == (1, *SHAPE)
    assert set(torch.unique(s["fixed_mask"]).tolist()) == {0.0, 1.0}
    assert s["moving_labels"].dtype == torch.int64 and s["fixed_labels"].dtype == torch.int64
    assert set(torch.unique(s["fixed_labels"]).tolist()) == {0, 1, 2}
    assert bool(s["moving_has_mask"]) and bool(s["fixed_has_labels"])
    # records without mask/labels: ones / zeros, flagged, same keys
    bare = [VolumeRecord(r.image, r.subject) for r in t1]
    mixed = PairDataset(t2, bare)[1]
    assert torch.equal(mixed["fixed_mask"], torch.ones(1, *SHAPE))
    assert not bool(mixed["fixed_has_mask"]) and "fixed_labels" not in mixed
    half = [*bare[:2], *t1[2:]]
    ds = PairDataset(t2, half, samples_per_epoch=20)
    assert {frozenset(ds[i]) for i in range(len(ds))} == {frozenset(ds[0])}
    # joint crop: same window in both images (identical volumes -> identical crops)
    vol = _ramp().astype(np.float32)
    same = PairDataset(
        [VolumeRecord(vol, "a")], [VolumeRecord(vol.copy(), "b")], crop=5, samples_per_epoch=6
    )
    for i in range(len(same)):
        c = same[i]
        assert c["moving"].shape == (1, 5, 5, 5)
        assert torch.equal(c["moving"], c["fixed"])
    with pytest.raises(ValueError, match="share one grid"):
        PairDataset([VolumeRecord(vol, "a")], [VolumeRecord(vol[:-1], "b")])[0]


# ----------------------------------------------------------------------------- loaders


def _trainer_loader(ds, workers, seed=0, start_step=0, total_steps=6, rank=0, world_size=1):
    """The loader the trainer builds (its step sampler, seeded generator, worker seeding)."""
    from contrareg_bids.training.distributed import DistContext
    from contrareg_bids.training.trainer import _loader

    ctx = DistContext(rank, world_size, 0, torch.device("cpu"))
    return _loader(ds, 2, seed, start_step, total_steps, ctx, workers)


def _batches(loader):
    return [(batch["image"].clone(), list(batch["id"])) for batch in loader]


def _same(a, b):
    return len(a) == len(b) and all(
        torch.equal(x[0], y[0]) and x[1] == y[1] for x, y in zip(a, b, strict=True)
    )


def test_loader_reproducible_with_workers(subjects):
    t1, _ = subjects

    def loader(workers, seed=0, **kw):
        ds = AutoencoderDataset(t1, crop=6, seed=seed, samples_per_volume=3)
        return _trainer_loader(ds, workers, seed=seed, **kw)

    first = loader(2)
    assert first.num_workers == 2 and not first.pin_memory
    run1 = _batches(first)
    assert _same(run1, _batches(loader(2)))
    assert run1[0][0].shape == (2, 1, 6, 6, 6)
    assert _same(run1, _batches(loader(0)))  # independent of the worker count
    assert not _same(run1, _batches(loader(2, seed=1)))
    assert _same(run1[4:], _batches(loader(0, start_step=4)))  # resumed mid-run
    shards = [list(loader(0, rank=r, world_size=2, total_steps=3).sampler) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 6
    assert sorted(i for shard in shards for _, i in shard) == list(range(12))  # rank shards


def test_default_workers(monkeypatch):
    monkeypatch.setattr(stream, "available_cpus", lambda: 2)
    assert stream.default_num_workers() == 1
    monkeypatch.setattr(stream, "available_cpus", lambda: 1)
    assert stream.default_num_workers() == 0
    monkeypatch.setattr(stream, "available_cpus", lambda: 32)
    assert stream.default_num_workers() == 2


# ----------------------------------------------------------------------------- split, fingerprint


def test_split_deterministic_and_disjoint(subjects):
    t1, t2 = subjects
    recs = [
        VolumeRecord(_ramp(), f"sub-{k:02d}", session=str(s)) for k in range(20) for s in (1, 2)
    ]
    train, val = split_records(recs, 0.25, seed=0)
    again = split_records(list(reversed(recs)), 0.25, seed=0)
    assert {id(r) for r in train} == {id(r) for r in again[0]}
    tr_ids, va_ids = {r.subject for r in train}, {r.subject for r in val}
    assert not tr_ids & va_ids and len(va_ids) == 5 and len(tr_ids) == 15
    assert len(train) + len(val) == len(recs)
    assert {r.subject for r in split_records(recs, 0.25, seed=1)[1]} != va_ids
    # modalities of the same subjects split alike
    assert [r.subject for r in split_records(t1, 0.3)[1]] == [
        r.subject for r in split_records(t2, 0.3)[1]
    ]
    assert len(split_records(t1, 0.0)[1]) == 0 and len(split_records(t1, 0.01)[1]) == 1


def test_fingerprint_stable_and_sensitive(subjects):
    t1, _ = subjects
    fp = data_fingerprint(t1)
    assert len(fp) == 64 and fp == data_fingerprint(list(reversed(t1)))
    assert data_fingerprint(t1, content=True) == data_fingerprint(t1, content=True)
    path = t1[0].image
    content_fp = data_fingerprint(t1, content=True)
    st = path.stat()
    _write(path, _ramp())
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert data_fingerprint(t1) != fp
    assert data_fingerprint(t1, content=True) != content_fp
    arr = _ramp()
    fa = data_fingerprint([VolumeRecord(arr, "x")])
    assert fa == data_fingerprint([VolumeRecord(arr.copy(), "x")])
    arr[0, 0, 0] += 1
    assert data_fingerprint([VolumeRecord(arr, "x")]) != fa


def test_random_window_stream_independent_of_shape():
    w1 = random_window((20, 20, 20), 8, np.random.default_rng(0))
    w2 = random_window((20, 4, 20), 8, np.random.default_rng(0))
    assert w1[0] == w2[0] and w1[2] == w2[2] and w2[1] == slice(0, 4)
