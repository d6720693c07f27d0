"""contrareg_bids.io.images: load, validate and standardise real NIfTI files."""

from __future__ import annotations

import gzip
import os
import stat

import nibabel as nib
import numpy as np
import pytest

from contrareg_bids.io.images import (
    ImageError,
    load_image,
    load_nifti,
    orientation_codes,
    read_labels,
    read_mask,
    read_volume,
    same_grid,
    standardize_image,
    validate_image,
    write_atomic,
)

SHAPE = (7, 9, 11)
MARK = (2, 6, 3)


def _affine(matrix: np.ndarray, translation=(10.0, -20.0, 5.0)) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = matrix
    affine[:3, 3] = translation
    return affine


def _rotation(deg: float) -> np.ndarray:
    t = np.radians(deg)
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1.0]])


ZOOMS = np.diag([0.8, 1.0, 1.3])
AFFINES = {
    "RAS": _affine(ZOOMS),
    "LAS": _affine(np.diag([-1.0, 1, 1]) @ ZOOMS),
    "LPI": _affine(np.diag([-1.0, -1, -1]) @ ZOOMS),
    # voxel axes stored as (S, L, P): a permutation with flips
    "SLP": _affine(np.array([[0, -1, 0], [0, 0, -1], [1, 0, 0.0]]) @ ZOOMS),
    # oblique (20 degrees about z) and permuted (A, R, S)
    "ARS": _affine(_rotation(20) @ np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1.0]]) @ ZOOMS),
}


def _marked(shape=SHAPE, dtype=np.float32) -> np.ndarray:
    data = np.zeros(shape, dtype=dtype)
    data[MARK] = 7
    return data


def _save(tmp_path, data, affine=None, name="in.nii.gz", **codes) -> str:
    img = nib.Nifti1Image(data, AFFINES["RAS"] if affine is None else affine)
    for key, value in codes.items():
        img.header[key] = value
    path = tmp_path / name
    nib.save(img, str(path))
    return str(path)


def _world(affine: np.ndarray, ijk) -> np.ndarray:
    return (affine @ np.array([*ijk, 1.0]))[:3]


@pytest.mark.parametrize("orientation", list(AFFINES))
def test_reoriented_to_ras_in_same_world_space(tmp_path, orientation):
    affine = AFFINES[orientation]
    in_file = _save(tmp_path, _marked(), affine)
    res = standardize_image(in_file, tmp_path / "out.nii.gz")

    out = nib.load(res.out_file)
    assert orientation_codes(out.affine) == "RAS"
    assert res.orientation == orientation
    assert res.reoriented == (orientation != "RAS")
    assert res.warnings == []
    data = np.asanyarray(out.dataobj)
    assert data.dtype == np.float32
    mark_out = np.unravel_index(np.argmax(data), data.shape)
    np.testing.assert_allclose(_world(out.affine, mark_out), _world(affine, MARK), atol=1e-4)
    # the whole grid, not only the mark: same set of voxel centres in the world
    assert sorted(np.round(res.zooms, 5)) == sorted([0.8, 1.0, 1.3])
    np.testing.assert_allclose(out.header.get_zooms(), res.zooms, atol=1e-5)
    assert out.header["sform_code"] > 0 and out.header["qform_code"] > 0
    np.testing.assert_allclose(out.header.get_qform(), out.header.get_sform(), atol=1e-4)
    assert sorted(res.shape) == sorted(SHAPE)
    assert data.sum() == pytest.approx(7.0)


def test_header_units_kept(tmp_path):
    img = nib.Nifti1Image(_marked(), AFFINES["LAS"])
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, tmp_path / "in.nii")
    res = standardize_image(tmp_path / "in.nii", tmp_path / "out.nii")
    assert nib.load(res.out_file).header.get_xyzt_units() == ("mm", "sec")


def test_missing_and_non_nifti_files(tmp_path):
    with pytest.raises(ImageError, match="file not found"):
        load_image(tmp_path / "nope.nii.gz")
    text = tmp_path / "notes.nii.gz"
    text.write_text("hello")
    with pytest.raises(ImageError, match=r"notes\.nii\.gz.*cannot be read"):
        load_image(text)
    empty = tmp_path / "empty.nii"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty file"):
        load_image(empty)
    mgh = tmp_path / "brain.mgz"
    nib.save(nib.MGHImage(_marked(), np.eye(4)), str(mgh))
    with pytest.raises(ImageError, match=r"brain\.mgz: not a NIfTI image"):
        load_image(mgh)


def test_truncated_gz_is_a_clear_error(tmp_path):
    path = _save(tmp_path, np.random.default_rng(0).normal(size=(30, 30, 30)).astype(np.float32))
    blob = open(path, "rb").read()
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ImageError, match=r"truncated\.nii\.gz.*truncated or corrupt"):
        load_image(truncated)
    with pytest.raises(ImageError, match="truncated"):
        standardize_image(truncated, tmp_path / "out.nii.gz")
    assert not (tmp_path / "out.nii.gz").exists()


def test_truncated_uncompressed_nii(tmp_path):
    path = _save(tmp_path, _marked(), name="in.nii")
    blob = open(path, "rb").read()
    (tmp_path / "cut.nii").write_bytes(blob[:-200])
    with pytest.raises(ImageError, match=r"cut\.nii"):
        load_image(tmp_path / "cut.nii")


def test_corrupt_gzip_stream(tmp_path):
    noise = np.random.default_rng(0).normal(size=(20, 20, 20)).astype(np.float32)
    raw = bytearray(gzip.compress(nib.Nifti1Image(noise, np.eye(4)).to_bytes()))
    middle = len(raw) // 2
    raw[middle : middle + 64] = bytes(64)  # damage the deflate stream, keep header and size
    (tmp_path / "bad.nii.gz").write_bytes(bytes(raw))
    with pytest.raises(ImageError, match=r"bad\.nii\.gz: the compressed data is corrupt"):
        load_image(tmp_path / "bad.nii.gz")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values_refused(tmp_path, bad):
    data = _marked()
    data[0, 0, 0] = bad
    in_file = _save(tmp_path, data)
    with pytest.raises(ImageError, match=r"in\.nii\.gz: \d+ NaN and \d+ infinite"):
        standardize_image(in_file, tmp_path / "out.nii.gz")


def test_real_4d_refused_singleton_squeezed(tmp_path):
    four_d = _save(tmp_path, np.zeros((*SHAPE, 3), np.float32), name="bold.nii.gz")
    with pytest.raises(ImageError, match=r"bold\.nii\.gz: 4-D image with 3 volumes"):
        standardize_image(four_d, tmp_path / "out.nii.gz")

    single = _save(tmp_path, _marked()[..., None], AFFINES["LAS"], name="single.nii.gz")
    res = standardize_image(single, tmp_path / "out.nii.gz")
    assert res.original_shape == (*SHAPE, 1)
    assert nib.load(res.out_file).ndim == 3
    assert res.warnings == []


def test_two_d_and_vector_images_refused(tmp_path):
    flat = _save(tmp_path, np.zeros((8, 8, 1), np.float32), name="slice.nii.gz")
    with pytest.raises(ImageError, match="single slice"):
        standardize_image(flat, tmp_path / "out.nii.gz")
    with pytest.raises(ImageError, match="2-D image"):
        validate_image(nib.Nifti1Image(np.zeros((8, 8), np.float32), np.eye(4)), "x.nii")
    vec = nib.Nifti1Image(np.zeros((*SHAPE, 1, 3), np.float32), np.eye(4))
    with pytest.raises(ImageError, match="extra"):
        validate_image(vec, "warp.nii.gz")


def _disagreeing(tmp_path, shift_mm: float) -> tuple[str, np.ndarray]:
    sform = AFFINES["LAS"]
    qform = sform.copy()
    qform[0, 3] += shift_mm
    img = nib.Nifti1Image(_marked(), sform)
    img.set_sform(sform, 1)
    img.set_qform(qform, 1)
    path = tmp_path / "xform.nii.gz"
    nib.save(img, str(path))
    return str(path), sform


def test_qform_sform_disagreement_uses_sform_with_warning(tmp_path):
    in_file, sform = _disagreeing(tmp_path, 2.0)
    res = standardize_image(in_file, tmp_path / "out.nii.gz")
    assert len(res.warnings) == 1
    assert "qform and sform" in res.warnings[0] and "Using the sform" in res.warnings[0]
    assert "xform.nii.gz" in res.warnings[0]
    out = nib.load(res.out_file)
    data = np.asanyarray(out.dataobj)
    mark_out = np.unravel_index(np.argmax(data), data.shape)
    np.testing.assert_allclose(_world(out.affine, mark_out), _world(sform, MARK), atol=1e-4)

    with pytest.raises(ImageError, match=r"xform\.nii\.gz: the qform and sform.*fslorient"):
        standardize_image(in_file, tmp_path / "strict.nii.gz", strict_xforms=True)


def test_qform_sform_rounding_is_agreement(tmp_path):
    in_file, _ = _disagreeing(tmp_path, 1e-5)
    assert standardize_image(in_file, tmp_path / "out.nii.gz").warnings == []


def test_qform_only_and_no_orientation(tmp_path):
    img = nib.Nifti1Image(_marked(), AFFINES["LAS"])
    img.set_sform(None, 0)
    img.set_qform(AFFINES["LAS"], 1)
    nib.save(img, tmp_path / "q.nii.gz")
    res = standardize_image(tmp_path / "q.nii.gz", tmp_path / "out.nii.gz")
    assert res.warnings == [] and res.orientation == "LAS"

    img.set_qform(None, 0)
    nib.save(img, tmp_path / "none.nii.gz")
    res = standardize_image(tmp_path / "none.nii.gz", tmp_path / "out2.nii.gz")
    assert "no orientation information" in res.warnings[0]
    with pytest.raises(ImageError, match="no orientation information"):
        standardize_image(tmp_path / "none.nii.gz", tmp_path / "o.nii.gz", strict_xforms=True)


def test_insane_affines(tmp_path):
    huge = _save(tmp_path, _marked(), np.diag([12.0, 12.0, 12.0, 1.0]), name="huge.nii.gz")
    with pytest.raises(ImageError, match=r"huge\.nii\.gz: voxel sizes"):
        standardize_image(huge, tmp_path / "out.nii.gz")
    singular = nib.Nifti1Image(_marked(), np.eye(4))
    singular.header.set_qform(None, 0)
    singular.header["srow_z"] = [0.0, 0.0, 0.0, 0.0]
    with pytest.raises(ImageError, match=r"singular|no usable orientation"):
        validate_image(singular, "singular.nii.gz")


def test_mask_and_labels_dtypes(tmp_path):
    probs = np.zeros(SHAPE, np.float32)
    probs[1:4, 1:4, 1:4] = 0.7
    probs[5, 5, 5] = 0.3
    res = standardize_image(_save(tmp_path, probs), tmp_path / "mask.nii.gz", kind="mask")
    mask = nib.load(res.out_file)
    assert mask.get_data_dtype() == np.uint8
    assert int(np.asanyarray(mask.dataobj).sum()) == 27

    labels = np.zeros(SHAPE, np.float32)
    labels[MARK] = 9
    res = standardize_image(
        _save(tmp_path, labels, AFFINES["LPI"], name="dseg.nii.gz"),
        tmp_path / "dseg_out.nii.gz",
        kind="labels",
    )
    out = nib.load(res.out_file)
    assert out.get_data_dtype() == np.int16
    assert set(np.unique(np.asanyarray(out.dataobj))) == {0, 9}

    big = np.zeros(SHAPE, np.int32)
    big[MARK] = 70000
    res = standardize_image(
        _save(tmp_path, big, name="big.nii.gz"), tmp_path / "b.nii.gz", kind="labels"
    )
    assert nib.load(res.out_file).get_data_dtype() == np.int32

    labels[0, 0, 0] = 0.5
    with pytest.raises(ImageError, match=r"soft\.nii\.gz: a label map must hold integer"):
        standardize_image(
            _save(tmp_path, labels, name="soft.nii.gz"), tmp_path / "x.nii.gz", kind="labels"
        )


def test_integer_image_becomes_float32(tmp_path):
    data = (_marked() * 10).astype(np.int16)
    res = standardize_image(_save(tmp_path, data), tmp_path / "out.nii.gz")
    out = nib.load(res.out_file)
    assert out.get_data_dtype() == np.float32
    assert float(np.asanyarray(out.dataobj).max()) == 70.0


def test_atomic_write_leaves_no_temporaries(tmp_path):
    out = tmp_path / "sub" / "out.nii.gz"
    out.parent.mkdir()
    out.write_text("old content")
    write_atomic(nib.Nifti1Image(_marked(), np.eye(4)), out)
    assert nib.load(out).shape == SHAPE
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.nii.gz"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
    with pytest.raises(ImageError, match="must end in"):
        write_atomic(nib.Nifti1Image(_marked(), np.eye(4)), tmp_path / "out.img")


def test_same_grid():
    a = nib.Nifti1Image(_marked(), AFFINES["RAS"])
    assert same_grid(a, nib.Nifti1Image(_marked(), AFFINES["RAS"] + 1e-6))
    assert not same_grid(a, nib.Nifti1Image(_marked(), AFFINES["LAS"]))
    assert not same_grid(a, nib.Nifti1Image(np.zeros((7, 9, 12)), AFFINES["RAS"]))
    assert same_grid(a, nib.Nifti1Image(np.zeros((*SHAPE, 1)), AFFINES["RAS"]))


def test_readers_share_one_contract(tmp_path):
    """read_volume / read_labels / read_mask / load_nifti: the one reader every module calls;
    a missing file is both an ImageError and a FileNotFoundError, naming the file."""
    for reader in (load_nifti, read_volume, read_labels, read_mask, load_image):
        with pytest.raises(FileNotFoundError, match=r"gone\.nii\.gz: file not found"):
            reader(tmp_path / "gone.nii.gz")
        with pytest.raises(ImageError):
            reader(tmp_path / "gone.nii.gz")
    data = _marked().astype(np.int16)
    img = nib.Nifti1Image(data[..., None], AFFINES["LAS"])  # a trailing singleton 4th axis
    img.header.set_slope_inter(2.0, 0.0)
    nib.save(img, tmp_path / "scaled.nii")
    arr, got = read_volume(tmp_path / "scaled.nii")
    assert arr.dtype == np.float32 and arr.shape == SHAPE and not isinstance(arr, np.memmap)
    np.testing.assert_array_equal(arr, 2.0 * data)  # scaling applied, voxel order kept
    np.testing.assert_allclose(got.affine, AFFINES["LAS"], atol=1e-5)
    raw, _ = read_volume(tmp_path / "scaled.nii", dtype=None)
    np.testing.assert_array_equal(raw, 2.0 * data)
    labels, _ = read_labels(tmp_path / "scaled.nii")
    assert labels.dtype == np.int64 and labels.max() == 2 * data.max()
    nib.save(nib.Nifti1Image(data.astype(np.float32) + 0.4, np.eye(4)), tmp_path / "soft.nii")
    with pytest.raises(ImageError, match=r"soft\.nii: non-integer values"):
        read_labels(tmp_path / "soft.nii")
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "int.nii")
    assert read_labels(tmp_path / "int.nii", dtype=None)[0].dtype == np.int16  # kept
    mask = read_mask(tmp_path / "int.nii")
    assert mask.dtype == bool and mask.sum() == 1
    with pytest.raises(ImageError, match="does not match the image grid"):
        read_mask(tmp_path / "int.nii", like=got)
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.uint8), np.eye(4)), tmp_path / "zero.nii")
    with pytest.raises(ImageError, match=r"zero\.nii: the mask is empty"):
        read_mask(tmp_path / "zero.nii")
    assert not read_mask(tmp_path / "zero.nii", allow_empty=True).any()
    nib.save(nib.Nifti1Image(np.zeros((*SHAPE, 2), np.float32), np.eye(4)), tmp_path / "4d.nii")
    with pytest.raises(ImageError, match=r"4d\.nii: expected a 3-D volume.*2 volumes"):
        read_volume(tmp_path / "4d.nii")
    nan = np.zeros(SHAPE, np.float32)
    nan[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), tmp_path / "nan.nii")
    with pytest.raises(ImageError, match=r"nan\.nii: 1 NaN and 0 infinite"):
        read_volume(tmp_path / "nan.nii")
    assert np.isnan(read_volume(tmp_path / "nan.nii", finite=False)[0]).sum() == 1
