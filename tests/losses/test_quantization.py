"""The hashing quantisation term: value, gradient direction, serialisation; the hash head's config rules."""

import keras
import numpy as np
import pytest

from tfsim import config
from tfsim.errors import UserInputError
from tfsim.losses import TripletSemiHardLoss
from tfsim.losses.quantization import HashingLoss


def test_value_is_the_inner_loss_at_unit_scale_plus_the_weighted_push_to_one():
    rng = np.random.default_rng(0)
    codes = np.tanh(2 * rng.normal(size=(12, 16))).astype(np.float32)
    labels = np.repeat(np.arange(4), 3)
    inner = TripletSemiHardLoss(margin=0.5)
    loss = HashingLoss(inner, 16, 0.3)
    want = float(inner(labels, codes / 4)) + 0.3 * np.mean((np.abs(codes.astype(np.float64)) - 1) ** 2)
    assert float(loss(labels, codes)) == pytest.approx(want, rel=1e-5)
    assert float(inner(labels, codes / 4)) != pytest.approx(float(inner(labels, codes)), rel=1e-2)
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(again.inner, TripletSemiHardLoss) and (again.weight, again.code_bits) == (0.3, 16)
    assert float(again(labels, codes)) == pytest.approx(want, rel=1e-5)
    assert float(HashingLoss(inner, 16)(labels, codes)) == pytest.approx(float(inner(labels, codes / 4)), rel=1e-5)
    for bad in ({"weight": -1}, {"code_bits": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            HashingLoss(inner, **{"code_bits": 16, **bad})


def test_margin_means_the_same_at_every_code_length():
    """Codes of 16 and 64 bits with the same Hamming structure (each bit repeated 4 times) give the same loss."""
    rng = np.random.default_rng(1)
    codes = np.sign(rng.normal(size=(12, 16))).astype(np.float32)
    labels = np.repeat(np.arange(4), 3)
    inner = TripletSemiHardLoss(margin=0.5)
    assert float(HashingLoss(inner, 16)(labels, codes)) == pytest.approx(
        float(HashingLoss(inner, 64)(labels, np.repeat(codes, 4, axis=1))), rel=1e-5)


def test_hash_head_config_rules():
    ok = config.load("default", ["model.head=hash", "model.code_bits=48", "whitening.enabled=false"])
    config.validate(ok)
    config.validate(config.load("default", ["model.head=hash"]))  # whitening.enabled=auto: off with codes
    for sets, key in ((["model.head=hash", "whitening.enabled=true"], "whitening.enabled"),
                      (["model.head=hash", "whitening.enabled=false", "model.code_bits=12"], "model.code_bits"),
                      (["loss.quantization_weight=0.1"], "loss.quantization_weight"),
                      (["model.head=hash", "whitening.enabled=false", "export.retrieval=exact"], "export.retrieval"),
                      (["export.retrieval=hamming"], "export.retrieval"),
                      (["model.head=hash", "whitening.enabled=false", "loss.name=normalized_softmax",
                        "loss.quantization_weight=0.1"], "loss.quantization_weight")):
        with pytest.raises(UserInputError, match=key):
            config.validate(config.load("default", sets))
    from tfsim.models import build_embedding_model
    model = build_embedding_model("small_resnet", 16, 8, width=4, blocks_per_stage=1, head="hash", code_bits=24)
    out = np.asarray(model(np.zeros((2, 16, 16, 3), np.float32)))
    assert out.shape == (2, 24) and np.abs(out).max() < 1


def test_code_bits_are_checked():
    rng = np.random.default_rng(2)
    codes = np.tanh(2 * rng.normal(size=(12, 16))).astype(np.float32)
    labels = np.repeat(np.arange(4), 3)
    inner = TripletSemiHardLoss(margin=0.5)
    assert HashingLoss(inner, np.int64(16)).code_bits == 16
    with pytest.raises(ValueError, match="code_bits"):
        HashingLoss(inner, True)
    with pytest.raises(ValueError, match="expected 32 code bits"):
        HashingLoss(inner, 32)(labels, codes)
