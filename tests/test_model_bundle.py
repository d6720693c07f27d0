"""What a trained model is (contrareg_bids/model_bundle.py): its metadata document, validated
and normalised, and the modules assembled from it."""

from __future__ import annotations

import json

import pytest

from contrareg_bids import __version__
from contrareg_bids.model_bundle import BundleMetadata, compare_shapes, fresh_bundle, tensor_shapes
from contrareg_bids.nn.autoencoder import AutoencoderConfig
from contrareg_bids.nn.heads import HeadsConfig
from tests.io.test_bundle import BLOCKS, make_bundle


def test_metadata_json_round_trip_and_normalisation():
    md = make_bundle().metadata
    again = BundleMetadata.from_json(md.to_json())
    assert again == md
    assert again.grid.affine[2][2] == 1.2 and again.grid.reference == "tpl-X"
    assert again.loss_params["layers"] == [0, 1, 2]  # tuples normalised to JSON lists
    assert again.package_version == __version__ and again.seed == 42
    assert again.heads == HeadsConfig((4, 8, 8), 8, 2)
    assert again.autoencoder == AutoencoderConfig(1, BLOCKS, 3)
    assert again.modality_names == ("T2w", "T1w")


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda d: d.pop("loss"), "missing required field(s) ['loss']"),
        (lambda d: d["grid"].update(shape=[12, 14.0, 10]), "grid.shape[1]"),
        (lambda d: d.update(lambda_range=[0.5, 0.1]), "lambda_range"),
        (lambda d: d["regnet"].update(ch="4"), "regnet.ch"),
        (lambda d: d["modalities"].update(moving="T2w.x"), "modalities.moving"),
        (lambda d: d.update(bogus=1), "unknown field(s) ['bogus']"),
        (lambda d: d["normalization"].pop("method"), "normalization.method"),
        (lambda d: d["heads"].update(channels=[4, 8]), "heads.channels"),
    ],
)
def test_metadata_validation_errors(edit, needle):
    doc = make_bundle().metadata.to_dict()
    edit(doc)
    with pytest.raises(ValueError, match=None) as info:
        BundleMetadata.from_json(json.dumps(doc))
    assert needle in str(info.value)


def test_modules_are_assembled_from_the_metadata():
    """``fresh_bundle`` builds exactly the modules the metadata declares; a bundle whose
    modules differ is named by the tensors that differ."""
    bundle = make_bundle()
    fresh = fresh_bundle(bundle.metadata)
    assert tensor_shapes(fresh) == tensor_shapes(bundle)
    fresh.validate()
    other = make_bundle(ch=8)
    problem = compare_shapes(tensor_shapes(fresh), tensor_shapes(other))
    assert problem and "regnet." in problem
